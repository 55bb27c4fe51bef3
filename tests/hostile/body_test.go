package hostile

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// signHeaders is a POST /sign request head declaring length body bytes.
func signHeaders(auth string, length int, extra string) string {
	var sb strings.Builder
	sb.WriteString("POST /sign HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n")
	if auth != "" {
		sb.WriteString("Authorization: " + auth + "\r\n")
	}
	sb.WriteString(extra)
	fmt.Fprintf(&sb, "Content-Length: %d\r\n\r\n", length)
	return sb.String()
}

// TestUnauthenticatedBodyNotRead proves finding 3 (pre-auth body): the API
// key is checked on the headers alone. A POST /sign that declares a 1 MiB
// body and carries no (or a wrong) key gets 401 unauthorized at once, with
// Connection: close, while the body is still unsent; a right key with a
// Content-Length over the body limit gets 413 message_too_large at once. And
// many such unauthenticated uploads at the same time cost the relay little
// memory. Before the fix the relay read (and buffered) up to 1 MiB from
// anyone before looking at the Authorization header.
func TestUnauthenticatedBodyNotRead(t *testing.T) {
	r := startRelay(t, opts{Config: map[string]any{"log_level": "warn"}})

	refusedAtOnce := func(t *testing.T, head string, status int, code string) {
		t.Helper()
		c := r.mustDial(t)
		start := time.Now()
		res, err := c.do(head, 2*time.Second)
		if err != nil {
			t.Fatalf("no response within 2s with the body unsent (%v): the relay waits for the body", err)
		}
		took := time.Since(start)
		if res.status != status || res.code() != code {
			t.Fatalf("got %v, want %d %s", res, status, code)
		}
		if took > time.Second {
			t.Errorf("answered after %v, want at once", took)
		}
		if !res.close {
			t.Errorf("%d without Connection: close: the unread body would be taken for the next request", status)
		}
		if _, closed, _ := c.awaitEOF(2 * time.Second); !closed {
			t.Errorf("connection still open 2s after a Connection: close response")
		}
	}
	t.Run("no key", func(t *testing.T) {
		refusedAtOnce(t, signHeaders("", 1048576, ""), http.StatusUnauthorized, "unauthorized")
	})
	t.Run("wrong key", func(t *testing.T) {
		refusedAtOnce(t, signHeaders("Bearer not-the-key-0123456789abcdef", 1048576, ""), http.StatusUnauthorized, "unauthorized")
	})
	t.Run("right key over the body limit", func(t *testing.T) {
		refusedAtOnce(t, signHeaders("Bearer "+apiKey, 10_000_000, ""), http.StatusRequestEntityTooLarge, "message_too_large")
	})

	// Memory: N unauthenticated uploads at once, each sending its headers
	// and part of the declared body, then holding the socket. Before the
	// fix each held a buffer of up to 1 MiB at the relay.
	t.Run("memory", func(t *testing.T) {
		n := pick(500, 5000)
		chunk := pick(384<<10, 64<<10) // body bytes each sends: 187 MiB / 312 MiB in all
		body := bytes.Repeat([]byte("x"), chunk)
		base, err := r.rss()
		if err != nil {
			t.Fatal(err)
		}
		sampler := r.sampleRSS()
		var conns connSet
		defer conns.closeAll()
		deadline := time.Now().Add(40 * time.Second)
		var dialFailed atomic.Int64
		answered := 0
		started := parallel(n, 16, deadline, func(i int) {
			c, err := r.dial(2 * time.Second)
			if err != nil {
				dialFailed.Add(1)
				return
			}
			conns.add(c)
			_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			if _, err := io.WriteString(c, signHeaders("", 1048576, "")); err != nil {
				return
			}
			_, _ = c.Write(body) // fails early once the relay has answered and closed
		})
		// Hold everything for a moment longer while the sampler watches.
		window := time.Now().Add(500 * time.Millisecond)
		conns.mu.Lock()
		for _, c := range conns.conns {
			_ = c.SetReadDeadline(atLeast(window, 2*time.Millisecond))
			if res, err := readResponse(bufio.NewReader(c)); err == nil && res.status == http.StatusUnauthorized {
				answered++
			}
		}
		conns.mu.Unlock()
		peak := sampler.Stop()
		r.requireAlive(t, "during the upload attack")
		t.Logf("%d of %d uploads started (%d dials failed), %d saw their 401 in time; RSS %s at start, peak %s (+%s)",
			started, n, dialFailed.Load(), answered, mb(base), mb(peak), mb(peak-base))
		if started < n {
			t.Errorf("only %d of %d uploads started within the deadline", started, n)
		}
		if peak-base >= 100*MiB {
			t.Errorf("relay RSS grew by %s while %d unauthenticated uploads were open, want under 100 MiB", mb(peak-base), n)
		}
	})
}

// TestExpectContinueNeedsAuth proves finding 3 (pre-auth body) for
// Expect: 100-continue: without an API key the relay never invites the
// body with "100 Continue", it answers 401 unauthorized directly. Before
// the fix fasthttp sent 100 Continue to anyone and then read the body. A
// client with the right key still gets its request through.
func TestExpectContinueNeedsAuth(t *testing.T) {
	r := startRelay(t, opts{Config: map[string]any{"log_level": "warn"}})
	t.Run("no key", func(t *testing.T) {
		c := r.mustDial(t)
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(c, signHeaders("", 1024, "Expect: 100-continue\r\n")); err != nil {
			t.Fatal(err)
		}
		line, err := c.br.ReadString('\n')
		if err != nil {
			t.Fatalf("no status line within 2s: %v", err)
		}
		if strings.HasPrefix(line, "HTTP/1.1 100") {
			t.Fatalf("relay sent %q to a request without an API key", strings.TrimSpace(line))
		}
		res, err := readResponse(prepend(line, c.br))
		if err != nil {
			t.Fatalf("reading the answer: %v (status line %q)", err, line)
		}
		if res.status != http.StatusUnauthorized || res.code() != "unauthorized" {
			t.Fatalf("got %v, want 401 unauthorized", res)
		}
	})
	t.Run("right key still works", func(t *testing.T) {
		pub, _ := newKey(t)
		body := signBody(pub, []byte("hello"), 1000)
		c := r.mustDial(t)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, signHeaders("Bearer "+apiKey, len(body), "Expect: 100-continue\r\n")); err != nil {
			t.Fatal(err)
		}
		// Like curl: wait up to a second for 100 Continue, then send anyway.
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		line, err := c.br.ReadString('\n')
		switch {
		case err == nil && strings.HasPrefix(line, "HTTP/1.1 100"):
			if _, err := c.br.ReadString('\n'); err != nil { // the blank line
				t.Fatal(err)
			}
			line = ""
		case err == nil:
			t.Fatalf("relay answered %q before the body of an authenticated request", strings.TrimSpace(line))
		case !isTimeout(err):
			t.Fatal(err)
		}
		if _, err := c.Write(body); err != nil {
			t.Fatal(err)
		}
		res, err := c.read(5 * time.Second)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		if res.status != http.StatusNotFound || res.code() != "not_connected" {
			t.Fatalf("got %v, want 404 not_connected", res)
		}
	})
}

// prepend gives back a reader that yields line, then the rest of br.
func prepend(line string, br *bufio.Reader) *bufio.Reader {
	return bufio.NewReader(io.MultiReader(strings.NewReader(line), br))
}
