package httpapi

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// refusedHeader carries onHeaders' verdict to the handlers. It is removed
// from every request before anything else looks at it, and its value starts
// with a token made at start (verdictToken), so that a client cannot send
// one, not even as a chunked trailer, which fasthttp adds to the headers
// after onHeaders has run.
const refusedHeader = "X-Signrelay-Refused"

var verdictToken = func() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic("httpapi: no randomness: " + err.Error())
	}
	return hex.EncodeToString(b) + ":"
}()

// Verdicts of onHeaders; a refused request's body is never read.
const (
	refuseFraming      = "framing"      // Content-Length and Transfer-Encoding together
	refuseUnauthorized = "unauthorized" // POST /sign without a right API key
	refuseTooLarge     = "too_large:"   // followed by the declared length
)

// otherBodyLimit bounds the body of any request but POST /sign: none of the
// other endpoints reads one.
const otherBodyLimit = 4 << 10

// onHeaders runs when a request's headers are in and before fasthttp reads
// its body. It decides from the headers alone what the body may cost:
//
//   - A request with both Content-Length and Transfer-Encoding is refused
//     (request smuggling behind a proxy that trusts the other header).
//   - A POST /sign without a right API key, or declaring a body over the
//     limit, is answered without its body being read and without a
//     "100 Continue": its declared length is set to zero (the handler
//     answers 401 or 413 from the headers) and the connection closes
//     after the answer, so the unread bytes are never taken for a request.
//   - Any other body is bounded small and gets no "100 Continue"; POST
//     /sign's by the message limit, with http.read_timeout to arrive.
//
// A refused request's connection is marked to close here, not in a
// handler: Fiber answers some requests (an unknown method) before any
// middleware runs, and those must not keep the connection either.
func (s *Server) onHeaders(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	h.Del(refusedHeader)
	cl := h.ContentLength() // -1 chunked, -2 neither header
	refuse := ""
	switch {
	case hasBothLengths(h.RawHeaders()):
		refuse = refuseFraming
	case cl == 0 || cl == -2:
		return fasthttp.RequestConfig{}
	case !isSignPost(h):
		h.Del(fiber.HeaderExpect)
		return fasthttp.RequestConfig{MaxRequestBodySize: otherBodyLimit}
	case !s.authenticated(h.Peek(fiber.HeaderAuthorization)):
		refuse = refuseUnauthorized
	case cl > s.bodyLimit:
		refuse = refuseTooLarge + strconv.Itoa(cl)
	default:
		return fasthttp.RequestConfig{MaxRequestBodySize: s.bodyLimit, ReadTimeout: s.cfg.HTTP.ReadTimeout.D()}
	}
	h.Del(fiber.HeaderExpect)
	h.SetContentLength(0)
	h.SetConnectionClose()
	h.Set(refusedHeader, verdictToken+refuse)
	return fasthttp.RequestConfig{MaxRequestBodySize: 1}
}

// isSignPost matches the requests Fiber routes to handleSign: its routing
// ignores case and trailing slashes, and takes the path of an
// absolute-form target (POST http://host/sign).
func isSignPost(h *fasthttp.RequestHeader) bool {
	if !h.IsPost() {
		return false
	}
	target, _, _ := bytes.Cut(h.RequestURI(), []byte("?"))
	target, _, _ = bytes.Cut(target, []byte("#"))
	if _, rest, ok := bytes.Cut(target, []byte("://")); ok {
		i := bytes.IndexByte(rest, '/')
		if i < 0 {
			return false
		}
		target = rest[i:]
	}
	return strings.EqualFold(strings.TrimRight(string(target), "/"), "/sign")
}

// hasBothLengths reports whether raw request headers carry both
// Content-Length and Transfer-Encoding (fasthttp keeps only one of them).
func hasBothLengths(raw []byte) bool {
	var cl, te bool
	for len(raw) > 0 {
		var line []byte
		line, raw, _ = bytes.Cut(raw, []byte("\n"))
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		name = bytes.TrimSpace(name)
		cl = cl || bytes.EqualFold(name, []byte(fasthttp.HeaderContentLength))
		te = te || bytes.EqualFold(name, []byte(fasthttp.HeaderTransferEncoding))
	}
	return cl && te
}

// guard runs first on every request: it answers what onHeaders refused,
// and while the relay drains it closes every connection after its answer,
// so that no client sends another request on a connection about to close.
func (s *Server) guard(c *fiber.Ctx) error {
	if v := string(c.Request().Header.Peek(refusedHeader)); strings.HasPrefix(v, verdictToken) {
		why := strings.TrimPrefix(v, verdictToken)
		c.Context().SetConnectionClose()
		markLinger(c.Context().Conn())
		switch {
		case why == refuseFraming:
			return s.refuseEarly(c, fiber.StatusBadRequest, codeInvalidRequest, "a request may not carry both Content-Length and Transfer-Encoding")
		case strings.HasPrefix(why, refuseTooLarge):
			return s.refuseEarly(c, fiber.StatusRequestEntityTooLarge, codeMessageTooLarge,
				fmt.Sprintf("request body is %s bytes; the limit for a %d-byte message is %d", strings.TrimPrefix(why, refuseTooLarge), s.cfg.Sign.MaxMessageBytes, s.bodyLimit))
		}
		// refuseUnauthorized: handleSign answers 401 (or 429) itself.
	}
	err := c.Next()
	if s.draining.Load() {
		c.Context().SetConnectionClose()
	}
	return err
}

// knownMethodsOnly answers a request whose method Fiber does not route in
// the contract's shape; Fiber itself would answer it in plain text, before
// any middleware runs.
func (s *Server) knownMethodsOnly(next fasthttp.RequestHandler) fasthttp.RequestHandler {
	body := []byte(`{"error":{"code":"invalid_request","message":"unknown HTTP method"}}`)
	return func(ctx *fasthttp.RequestCtx) {
		for _, m := range fiber.DefaultMethods {
			if string(ctx.Method()) == m {
				next(ctx)
				return
			}
		}
		ctx.SetStatusCode(fiber.StatusBadRequest)
		ctx.SetContentType(fiber.MIMEApplicationJSON)
		ctx.SetBody(body)
		if s.draining.Load() {
			ctx.SetConnectionClose()
		}
	}
}
