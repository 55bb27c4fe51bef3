package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/signing"
)

// authenticate returns the index of the configured API key presented as a
// bearer token. Every key is compared, in constant time, so timing tells
// nothing about which key or how much of it matched.
func (s *Server) authenticate(c *fiber.Ctx) (int, bool) {
	h := c.Request().Header.Peek(fiber.HeaderAuthorization)
	const scheme = "bearer "
	if len(h) <= len(scheme) || !bytes.EqualFold(h[:len(scheme)], []byte(scheme)) {
		return -1, false
	}
	sum := sha256.Sum256(bytes.TrimSpace(h[len(scheme):]))
	found := -1
	for i := range s.apiKeys {
		if subtle.ConstantTimeCompare(sum[:], s.apiKeys[i][:]) == 1 {
			found = i
		}
	}
	return found, found >= 0
}

func rateLimited(c *fiber.Ctx, retryAfter int, what, requestID string) error {
	c.Set(fiber.HeaderRetryAfter, strconv.Itoa(retryAfter))
	return writeError(c, fiber.StatusTooManyRequests, codeRateLimited, "rate limit exceeded for this "+what, requestID)
}

func (s *Server) handleSign(c *fiber.Ctx) error {
	if s.draining.Load() {
		return writeError(c, fiber.StatusServiceUnavailable, codeUnavailable, "the relay is shutting down", "")
	}
	keyIndex, ok := s.authenticate(c)
	if !ok {
		c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="signrelay"`)
		return writeError(c, fiber.StatusUnauthorized, codeUnauthorized, "missing or unknown API key", "")
	}
	if ok, retry := s.perAPIKey.allow(strconv.Itoa(keyIndex)); !ok {
		return rateLimited(c, retry, "API key", "")
	}
	if n := len(c.Body()); n > s.bodyLimit {
		return writeError(c, fiber.StatusRequestEntityTooLarge, codeMessageTooLarge,
			fmt.Sprintf("request body is %d bytes; the limit for a %d-byte message is %d", n, s.cfg.Sign.MaxMessageBytes, s.bodyLimit), "")
	}
	body, err := protocol.DecodeSignBody(c.Body())
	if err != nil {
		return writeError(c, fiber.StatusBadRequest, codeInvalidRequest, err.Error(), "")
	}
	if len(body.Message) > s.cfg.Sign.MaxMessageBytes {
		return writeError(c, fiber.StatusRequestEntityTooLarge, codeMessageTooLarge,
			fmt.Sprintf("message is %d bytes; the limit is %d", len(body.Message), s.cfg.Sign.MaxMessageBytes), "")
	}
	timeout := body.Timeout(s.cfg.Sign.DefaultTimeout.D())
	if max := s.cfg.Sign.MaxTimeout.D(); timeout > max {
		return writeError(c, fiber.StatusBadRequest, codeInvalidRequest,
			fmt.Sprintf(`"timeout_ms" must be at most %d on this relay`, max.Milliseconds()), "")
	}
	key, _ := protocol.PublicKeyFromBytes(body.PublicKey)
	requestID := uuid.NewString()
	c.Set("X-Request-Id", requestID)
	if ok, retry := s.perPublicKey.allow(string(body.PublicKey)); !ok {
		s.log.Info("sign rate limited", "request_id", requestID, "key", key.ShortString())
		return rateLimited(c, retry, "public key", requestID)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopWatch := watchDisconnectAfter(watchDelay, c.Context().Conn(), cancel)
	start := time.Now()
	res, err := s.svc.Sign(ctx, signing.Request{
		ID: requestID, Key: key, Message: body.Message,
		Description: body.Description, Timeout: timeout,
	})
	stopWatch()
	if err != nil {
		status, code := mapSignError(err)
		s.log.Info("sign ended", "request_id", requestID, "key", key.ShortString(), "status", status, "code", code, "ms", time.Since(start).Milliseconds())
		b := errorBody{Error: errorDetail{Code: code, Message: err.Error()}, RequestID: requestID}
		if re, ok := err.(*signing.RejectedError); ok {
			b.Error.Reason = &re.Reason
		}
		return c.Status(status).JSON(b)
	}
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("sign ended", "request_id", requestID, "key", key.ShortString(), "status", fiber.StatusOK, "ms", time.Since(start).Milliseconds())
	}
	out := protocol.EncodeSignResult(res.RequestID, key, body.Message, res.Signature)
	c.Response().SetBodyRaw(out)
	c.Response().Header.SetContentType(fiber.MIMEApplicationJSON)
	return nil
}
