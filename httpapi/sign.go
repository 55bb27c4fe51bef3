package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/valyala/fasthttp"

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

// rateLimited answers 429; scope is the metric's (api_key, public_key,
// client_ip).
func (s *Server) rateLimited(c *fiber.Ctx, scope string, retryAfter int, what, requestID string) error {
	s.metrics.RateLimited(scope)
	c.Set(fiber.HeaderRetryAfter, strconv.Itoa(retryAfter))
	return writeError(c, fiber.StatusTooManyRequests, codeRateLimited, "rate limit exceeded for this "+what, requestID)
}

// rejectAuth answers a request without a right API key: 401, or 429 once
// the client IP has guessed too often (a right key is never refused).
func (s *Server) rejectAuth(c *fiber.Ctx) error {
	if ok, retry := s.authFailures.allow(rateKey(s.clientIP(c))); !ok {
		return s.rateLimited(c, "client_ip", retry, "client IP (failed authentication)", "")
	}
	c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="signrelay"`)
	return writeError(c, fiber.StatusUnauthorized, codeUnauthorized, "missing or unknown API key", "")
}

// handleSign answers POST /sign, counts the answer by its code, and logs
// at info a call that no request came of (refused before one was made, or
// a key no node holds): a request that was made gets its line from the
// Journal when it ends, once, however many calls wait for it.
func (s *Server) handleSign(c *fiber.Ctx) error {
	start := time.Now()
	var call signCall
	err := s.sign(c, &call)
	// Every answer but 200 and 202 leaves its code, and so does the
	// requester_gone that gets no answer at all (its status reads 200).
	code, _ := c.Locals(localCode).(string)
	if code == "" {
		code = "ok"
	}
	s.metrics.Answered(code)
	if code != "ok" && (!call.made || code == codeNotConnected) {
		s.logRefused(c, &call, code, start)
	}
	return err
}

// logRefused writes the info line of a POST /sign that no request came of.
// The 429 of a client IP that keeps guessing API keys is logged at debug:
// those calls come as fast as a stranger sends them, and each 401 before
// them (at most rate_limits.auth_failures_per_ip) has its info line.
func (s *Server) logRefused(c *fiber.Ctx, call *signCall, code string, start time.Time) {
	level := slog.LevelInfo
	if code == codeRateLimited && !call.authed {
		level = slog.LevelDebug
	}
	key := ""
	if call.hasKey {
		key = call.key.ShortString()
	}
	s.log.Log(context.Background(), level, "sign refused", "request_id", call.requestID, "requester", call.requester, "key", key,
		"status", c.Response().StatusCode(), "code", code, "ms", time.Since(start).Milliseconds())
}

// isSignCall reports whether c is a call Fiber routes to handleSign, for
// the answers given before it runs.
func isSignCall(c *fiber.Ctx) bool { return isSignPost(&c.Request().Header) }

// signCall is what sign learns of a call, for handleSign's log line.
type signCall struct {
	requestID string
	requester string
	authed    bool // a right API key was presented
	key       protocol.PublicKey
	hasKey    bool // the body was read
	made      bool // a request was made or joined
}

// localCode is where an error answer leaves its error.code for the count.
const localCode = "signrelay.code"

func (s *Server) sign(c *fiber.Ctx, call *signCall) error {
	if s.draining.Load() {
		return writeError(c, fiber.StatusServiceUnavailable, codeUnavailable, "the relay is shutting down", "")
	}
	keyIndex, ok := s.authenticate(c)
	if !ok {
		return s.rejectAuth(c)
	}
	owner := s.apiOwners[keyIndex]
	call.requester, call.authed = s.apiNames[keyIndex], true
	if ok, retry := s.perAPIKey.allow(owner); !ok {
		return s.rateLimited(c, "api_key", retry, "API key", "")
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
	call.key, call.hasKey = key, true
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
	async := body.Async()
	timeout := body.Timeout(s.cfg.Sign.DefaultTimeout.D())
	limit, field := s.cfg.Sign.MaxTimeout.D(), `"timeout_ms"`
	if async {
		limit, field = s.cfg.Sign.MaxAsyncTimeout.D(), `"timeout_ms" with "wait": false`
	}
	if timeout > limit {
		return writeError(c, fiber.StatusBadRequest, codeInvalidRequest,
			fmt.Sprintf(`%s must be at most %d on this relay`, field, limit.Milliseconds()), "")
	}
	idemKey, err := idempotencyKey(&c.Request().Header)
	if err != nil {
		return writeError(c, fiber.StatusBadRequest, codeInvalidRequest, err.Error(), "")
	}
	requestID := uuid.NewString()
	call.requestID = requestID
	// The bucket is one API key's for one public key, and only a request
	// that reaches a holder takes from it: a 404 costs nothing, and one
	// backend cannot use up another's bucket for a shared key. On a
	// cluster a key held on another node counts too (a 404 then costs a
	// token: whether any node holds the key is known only later), and so
	// does a request that waits for a holder.
	if s.perPublicKey != nil && (connected || s.clustered || body.WaitForHolder) {
		if ok, retry := s.perPublicKey.allow(owner + "/" + string(body.PublicKey)); !ok {
			return s.rateLimited(c, "public_key", retry, "public key", requestID)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopWatch := watchDisconnectAfter(watchDelay, c.Context().Conn(), cancel)
	defer stopWatch()
	start := time.Now()
	req := signing.Request{
		ID: requestID, Owner: owner, Key: key, Message: body.Message,
		Description: body.Description, Timeout: timeout, Requester: s.apiNames[keyIndex],
		Async: async, IdempotencyKey: idemKey, WaitForHolder: body.WaitForHolder,
	}
	if idemKey != "" {
		req.Fingerprint = fingerprint(body, timeout)
	}
	h, err := s.svc.Start(ctx, req)
	if err != nil {
		status, code := mapSignError(err)
		b := errorBody{Error: errorDetail{Code: code, Message: err.Error()}, RequestID: requestID}
		var ie *signing.IdempotencyError
		if errors.As(err, &ie) {
			b.RequestID = ie.RequestID
		}
		c.Locals(localCode, code)
		return c.Status(status).JSON(b)
	}
	requestID = h.ID()
	call.requestID, call.made = requestID, true
	c.Set("X-Request-Id", requestID)
	if h.Replayed {
		c.Set("Idempotent-Replayed", "true")
		s.metrics.Replayed()
	}
	if async {
		c.Set(fiber.HeaderLocation, "/sign/"+requestID)
		return writeResource(c, fiber.StatusAccepted, h.Made())
	}
	rec, err := h.Await(ctx)
	status, code := fiber.StatusOK, ""
	if err != nil {
		status, code = mapSignError(err)
	}
	s.log.LogAttrs(context.Background(), slog.LevelDebug, "sign answered", slog.String("request_id", requestID), slog.Int("status", status),
		slog.String("code", code), slog.Bool("replayed", h.Replayed), slog.Int64("ms", time.Since(start).Milliseconds()))
	if status == statusNoResponse {
		c.Locals(localCode, code)
		// Nobody is there to read an answer: close the connection
		// without one, rather than invent a status.
		c.Context().HijackSetNoResponse(true)
		c.Context().Hijack(func(nc net.Conn) { _ = nc.Close() }) // KeepHijackedConns: ours to close
		return nil
	}
	if err != nil {
		b := errorBody{Error: errorDetail{Code: code, Message: err.Error()}, RequestID: requestID}
		if re, ok := err.(*signing.RejectedError); ok {
			b.Error.Reason = &re.Reason
		}
		c.Locals(localCode, code)
		return c.Status(status).JSON(b)
	}
	out := protocol.EncodeSignResult(requestID, key, rec.Message, rec.Signature)
	c.Response().SetBodyRaw(out)
	c.Response().Header.SetContentType(fiber.MIMEApplicationJSON)
	return nil
}

// idempotencyKey returns the Idempotency-Key header ("" when absent), or
// why it is not 1–255 visible ASCII characters.
func idempotencyKey(h *fasthttp.RequestHeader) (string, error) {
	v := h.Peek(headerIdempotencyKey)
	if len(v) == 0 {
		present := false
		h.VisitAll(func(k, _ []byte) { present = present || bytes.EqualFold(k, []byte(headerIdempotencyKey)) })
		if !present {
			return "", nil
		}
	}
	if len(v) == 0 || len(v) > 255 {
		return "", errors.New("Idempotency-Key must be 1 to 255 characters")
	}
	for _, b := range v {
		if b < 0x21 || b > 0x7e {
			return "", errors.New("Idempotency-Key must be visible ASCII characters (0x21-0x7E)")
		}
	}
	return string(v), nil
}

const headerIdempotencyKey = "Idempotency-Key"

// fingerprint identifies what a request asks, so that a retry under one
// idempotency key can be told from a different request: its public key,
// message, description, effective timeout and wait_for_holder (not wait).
func fingerprint(b *protocol.SignBody, timeout time.Duration) [32]byte {
	h := sha256.New()
	var n [8]byte
	field := func(p []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	field(b.PublicKey)
	field(b.Message)
	field([]byte(b.Description))
	binary.BigEndian.PutUint64(n[:], uint64(timeout.Milliseconds()))
	h.Write(n[:])
	if b.WaitForHolder {
		h.Write([]byte{1})
	} else {
		h.Write([]byte{0})
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// resourceAuth authenticates GET and DELETE /sign/{id} and checks the id;
// it returns the owner, or "" after answering.
func (s *Server) resourceAuth(c *fiber.Ctx) (string, string, error) {
	keyIndex, ok := s.authenticate(c)
	if !ok {
		return "", "", s.rejectAuth(c)
	}
	id := c.Params("id")
	u, err := uuid.Parse(id)
	if err != nil || len(id) != 36 {
		return "", "", writeError(c, fiber.StatusBadRequest, codeInvalidRequest, "request_id must be a UUID", "")
	}
	// One spelling on every node (the cluster's store keys are exact).
	return s.apiOwners[keyIndex], u.String(), nil
}

func (s *Server) handleGetRequest(c *fiber.Ctx) error {
	owner, id, err := s.resourceAuth(c)
	if owner == "" {
		return err
	}
	wait := time.Duration(0)
	if v := c.Query("wait_ms"); v != "" || c.Context().QueryArgs().Has("wait_ms") {
		ms, err := strconv.Atoi(v)
		if err != nil || ms < 0 || ms > 60000 || strconv.Itoa(ms) != v {
			return writeError(c, fiber.StatusBadRequest, codeInvalidRequest, "wait_ms must be a whole number from 0 to 60000", "")
		}
		wait = time.Duration(ms) * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if wait > 0 {
		defer watchDisconnectAfter(watchDelay, c.Context().Conn(), cancel)()
	}
	rec, err := s.svc.Get(ctx, owner, id, wait)
	if err != nil {
		status, code := mapSignError(err)
		return writeError(c, status, code, err.Error(), "")
	}
	return writeResource(c, fiber.StatusOK, rec)
}

func (s *Server) handleCancelRequest(c *fiber.Ctx) error {
	owner, id, err := s.resourceAuth(c)
	if owner == "" {
		return err
	}
	rec, err := s.svc.Cancel(owner, id)
	if err != nil {
		status, code := mapSignError(err)
		rid := ""
		if rec != nil {
			rid = rec.ID
		}
		return writeError(c, status, code, err.Error(), rid)
	}
	s.log.Info("sign cancelled", "request_id", id, "requester", rec.Requester)
	return writeResource(c, fiber.StatusOK, rec)
}
