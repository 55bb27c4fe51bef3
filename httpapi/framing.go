package httpapi

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// refusedHeader carries onHeaders' verdict to the handlers. It is removed
// from every request before anything else looks at it, so a client cannot
// send it.
const refusedHeader = "X-Signrelay-Refused"

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
//   - Any other body is bounded small; POST /sign's by the message limit,
//     with http.read_timeout to arrive.
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
	h.Set(refusedHeader, refuse)
	return fasthttp.RequestConfig{MaxRequestBodySize: 1}
}

// isSignPost matches the requests Fiber routes to handleSign (its routing
// ignores case and a trailing slash).
func isSignPost(h *fasthttp.RequestHeader) bool {
	if !h.IsPost() {
		return false
	}
	path, _, _ := bytes.Cut(h.RequestURI(), []byte("?"))
	return strings.EqualFold(strings.TrimSuffix(string(path), "/"), "/sign")
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
	if why := string(c.Request().Header.Peek(refusedHeader)); why != "" {
		c.Context().SetConnectionClose()
		markLinger(c.Context().Conn())
		switch {
		case why == refuseFraming:
			return writeError(c, fiber.StatusBadRequest, codeInvalidRequest, "a request may not carry both Content-Length and Transfer-Encoding", "")
		case strings.HasPrefix(why, refuseTooLarge):
			return writeError(c, fiber.StatusRequestEntityTooLarge, codeMessageTooLarge,
				fmt.Sprintf("request body is %s bytes; the limit for a %d-byte message is %d", strings.TrimPrefix(why, refuseTooLarge), s.cfg.Sign.MaxMessageBytes, s.bodyLimit), "")
		}
		// refuseUnauthorized: handleSign answers 401 (or 429) itself.
	}
	err := c.Next()
	if s.draining.Load() {
		c.Context().SetConnectionClose()
	}
	return err
}
