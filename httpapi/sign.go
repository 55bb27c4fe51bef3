package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/signing"
)

// authenticate returns the index of the configured API key presented as a
// bearer token.
func (s *Server) authenticate(c *fiber.Ctx) (int, bool) {
	return s.apiKeyIndex(c.Request().Header.Peek(fiber.HeaderAuthorization))
}

// authenticated reports whether an Authorization header holds a right key.
func (s *Server) authenticated(h []byte) bool {
	_, ok := s.apiKeyIndex(h)
	return ok
}

// apiKeyIndex finds the API key in an Authorization header. Every key is
// compared, in constant time, so timing tells nothing about which key or
// how much of it matched.
func (s *Server) apiKeyIndex(h []byte) (int, bool) {
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
		// Guessing keys costs a token per try from the client's IP; a
		// right key is never refused for it.
		if ok, retry := s.authFailures.allow(rateKey(s.clientIP(c))); !ok {
			return rateLimited(c, retry, "client IP (failed authentication)", "")
		}
		c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="signrelay"`)
		return writeError(c, fiber.StatusUnauthorized, codeUnauthorized, "missing or unknown API key", "")
	}
	owner := strconv.Itoa(keyIndex)
	if ok, retry := s.perAPIKey.allow(owner); !ok {
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
	key, _ := protocol.PublicKeyFromBytes(body.PublicKey)
	// A connected key passed the same check at its introduction; the check
	// costs about one signature verification, so only others pay it.
	connected := s.reg.Count(key) > 0
	if !connected && !s.checkedKeys.has(key) {
		if err := key.Check(); err != nil {
			return writeError(c, fiber.StatusBadRequest, codeInvalidRequest, `"public_key": `+err.Error(), "")
		}
		s.checkedKeys.add(key)
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
	requestID := uuid.NewString()
	c.Set("X-Request-Id", requestID)
	// The bucket is one API key's for one public key, and only a request
	// that reaches a holder takes from it: a 404 costs nothing, and one
	// backend cannot use up another's bucket for a shared key. On a
	// cluster a key held on another node counts too (a 404 then costs a
	// token: whether any node holds the key is known only later).
	if s.perPublicKey != nil && (connected || s.clustered) {
		if ok, retry := s.perPublicKey.allow(owner + "/" + string(body.PublicKey)); !ok {
			s.log.Info("sign rate limited", "request_id", requestID, "key", key.ShortString())
			return rateLimited(c, retry, "public key", requestID)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopWatch := watchDisconnectAfter(watchDelay, c.Context().Conn(), cancel)
	start := time.Now()
	res, err := s.svc.Sign(ctx, signing.Request{
		ID: requestID, Owner: owner, Key: key, Message: body.Message,
		Description: body.Description, Timeout: timeout,
	})
	stopWatch()
	if err != nil {
		status, code := mapSignError(err)
		if status == statusNoResponse {
			// Nobody is there to read an answer: close the connection
			// without one, rather than invent a status.
			s.log.Info("sign ended", "request_id", requestID, "key", key.ShortString(), "code", code, "ms", time.Since(start).Milliseconds())
			c.Context().HijackSetNoResponse(true)
			c.Context().Hijack(func(net.Conn) {})
			return nil
		}
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
