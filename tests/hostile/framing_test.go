package hostile

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestRequestSmuggling proves finding 9 (HTTP framing): a request with both
// Content-Length and Transfer-Encoding: chunked, in either header order,
// whose body hides a second request, gets exactly one response, 400
// invalid_request with Connection: close, and then the connection closes; no
// second response is ever read. Before the fix the relay took the chunked
// framing, answered the POST and then the hidden GET on the same
// connection: behind a proxy that frames by Content-Length that is request
// smuggling.
func TestRequestSmuggling(t *testing.T) {
	r := startRelay(t, opts{})
	hidden := "0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
	cases := []struct {
		name    string
		headers func(cl int) string
		cl      int
		method  string // request line; POST /sign when empty
	}{
		// Content-Length covering everything: a CL-framing proxy sees one request.
		{"CL then TE", func(cl int) string {
			return fmt.Sprintf("Content-Length: %d\r\nTransfer-Encoding: chunked\r\n", cl)
		}, len(hidden), ""},
		{"TE then CL", func(cl int) string {
			return fmt.Sprintf("Transfer-Encoding: chunked\r\nContent-Length: %d\r\n", cl)
		}, len(hidden), ""},
		// Content-Length ending at the chunked terminator.
		{"CL then TE, short CL", func(cl int) string {
			return fmt.Sprintf("Content-Length: %d\r\nTransfer-Encoding: chunked\r\n", cl)
		}, 5, ""},
		{"TE then CL, short CL", func(cl int) string {
			return fmt.Sprintf("Transfer-Encoding: chunked\r\nContent-Length: %d\r\n", cl)
		}, 5, ""},
		// Fiber answers a method it does not know before any middleware
		// runs: the connection must close all the same (review finding).
		{"unknown method", func(cl int) string {
			return fmt.Sprintf("Content-Length: %d\r\nTransfer-Encoding: chunked\r\n", cl)
		}, len(hidden), "FOO /sign"},
		{"other endpoint", func(cl int) string {
			return fmt.Sprintf("Transfer-Encoding: chunked\r\nContent-Length: %d\r\n", cl)
		}, len(hidden), "GET /healthz"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := r.mustDial(t)
			line := tc.method
			if line == "" {
				line = "POST /sign"
			}
			req := line + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + apiKey +
				"\r\nContent-Type: application/json\r\n" + tc.headers(tc.cl) + "\r\n" + hidden
			res, err := c.do(req, 3*time.Second)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			if res.status != http.StatusBadRequest || res.code() != "invalid_request" {
				t.Errorf("got %v, want 400 invalid_request", res)
			}
			if !res.close {
				t.Errorf("%d without Connection: close", res.status)
			}
			extra, closed, _ := c.awaitEOF(3 * time.Second)
			if len(extra) > 0 {
				t.Errorf("a second response came on the same connection: %q", firstLine(extra))
			}
			if !closed {
				t.Errorf("connection still open 3s after the 400")
			}
		})
	}
}

// TestHalfCloseNoPrivateStatus proves finding 9 (HTTP framing, status
// codes): a backend that sends a valid POST /sign for a connected key and
// then half-closes its write side ends the request: the key holder gets
// sign_cancel requester_gone, and the backend's socket never receives a
// status the contract does not name (in particular not nginx's private
// 499). Before the fix the relay wrote "HTTP/1.1 499" back to the backend,
// which can still read after its half-close.
func TestHalfCloseNoPrivateStatus(t *testing.T) {
	r := startRelay(t, opts{})
	h := r.mustHolder(t, false)
	c := r.mustDial(t)
	msg := []byte("half-closed invoice")
	_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, signRequest("Bearer "+apiKey, signBody(h.pub, msg, 10000))); err != nil {
		t.Fatal(err)
	}
	req := h.expect(t, "sign_request", 5*time.Second)
	if err := c.Conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	cancel := h.expect(t, "sign_cancel", 5*time.Second)
	if cancel.str("request_id") != req.str("request_id") || cancel.str("reason") != "requester_gone" {
		t.Errorf("got %v, want sign_cancel requester_gone for %s", cancel, req.str("request_id"))
	}
	extra, _, err := c.awaitEOF(3 * time.Second)
	if len(extra) == 0 {
		t.Logf("backend socket received nothing (%v)", err)
		return
	}
	var code int
	if _, err := fmt.Sscanf(string(extra), "HTTP/1.1 %d", &code); err != nil {
		t.Fatalf("backend socket received %q, not a status line", firstLine(extra))
	}
	switch code {
	case 200, 400, 401, 403, 404, 413, 429, 502, 503, 504:
		t.Logf("backend socket received %q", firstLine(extra))
	default:
		t.Errorf("backend socket received %q: a status the contract does not name for POST /sign", firstLine(extra))
	}
}
