package tests

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rawExchange writes req on a fresh connection and reads one response, or
// returns what the connection gave instead.
func (r *relay) rawExchange(t *testing.T, req string) (*http.Response, string, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(r.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	line, err := br.Peek(12)
	if err != nil {
		t.Fatalf("no response: %v", err)
	}
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("bad response %q: %v", line, err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res, string(body), c
}

// Fiber routes POST http://host/sign and /sign// to POST /sign, so the
// rule that an unauthenticated body is never read (and gets no 100
// Continue) holds for them too (review finding on the hardening).
func TestUnauthenticatedBodyRuleCoversEveryRoute(t *testing.T) {
	r := startRelay(t, nil)
	host := strings.TrimPrefix(r.base, "http://")
	for _, target := range []string{"http://" + host + "/sign", "/sign//", "/SIGN/"} {
		t.Run(target, func(t *testing.T) {
			res, body, _ := r.rawExchange(t, "POST "+target+" HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 500000\r\n\r\n")
			if res.StatusCode == http.StatusContinue {
				t.Fatal("100 Continue sent to a request without an API key")
			}
			if res.StatusCode != http.StatusUnauthorized || !res.Close {
				t.Fatalf("got %d (close %v) %s, want 401 with Connection: close", res.StatusCode, res.Close, body)
			}
		})
	}
}

// The verdict that onHeaders hands to the handlers cannot be forged by a
// client, not even in a chunked trailer, which fasthttp adds to the headers
// after onHeaders ran.
func TestRefusalMarkerCannotBeForged(t *testing.T) {
	r := startRelay(t, nil)
	pub, _ := newKey(t)
	body := string(signBody(pub, []byte("m"), nil))
	chunk := strconv.FormatInt(int64(len(body)), 16)
	req := "POST /sign HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testAPIKey +
		"\r\nX-Signrelay-Refused: framing\r\nTransfer-Encoding: chunked\r\nTrailer: X-Signrelay-Refused\r\n\r\n" +
		chunk + "\r\n" + body + "\r\n0\r\nX-Signrelay-Refused: framing\r\n\r\n"
	res, got, _ := r.rawExchange(t, req)
	if res.StatusCode != http.StatusNotFound || !strings.Contains(got, "not_connected") {
		t.Fatalf("got %d %s, want 404 not_connected (the forged verdict ignored)", res.StatusCode, got)
	}
}

// A method Fiber does not route gets the contract's error shape.
func TestUnknownMethodIsJSON(t *testing.T) {
	r := startRelay(t, nil)
	res, body, _ := r.rawExchange(t, "FOO / HTTP/1.1\r\nHost: x\r\n\r\n")
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"code":"invalid_request"`) {
		t.Fatalf("got %d %s", res.StatusCode, body)
	}
}
