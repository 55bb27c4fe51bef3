package hostile

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestFDExhaustion proves finding 1 (file descriptors): a relay started
// under an open-file limit of 1024 must survive 5,000 connection attempts.
// It stays alive, keeps its own descriptors below the limit, closes the
// connections over its cap right after accepting them (a read on such a
// socket ends with EOF or a reset within about a second, it does not hang
// in the backlog), and within 5 s of the attack's connections closing it
// serves a whole sign round trip to a key holder connected after the
// attack. Before the fix the accept loop failed with "accept4: too many
// open files" and the process exited.
func TestFDExhaustion(t *testing.T) {
	const limit = 1024
	const attempts = 5000
	r := startRelay(t, opts{NoFile: limit, Config: map[string]any{
		"log_level": "warn",
		// Held connections stay held for the whole attack, so that the cap
		// is reached and stays reached.
		"http": map[string]any{"header_timeout": "30s", "idle_timeout": "60s"},
	}})
	if n, err := r.fds(); err != nil || n >= limit {
		t.Fatalf("relay has %d descriptors open at start (%v)", n, err)
	}

	var conns connSet
	defer conns.closeAll()
	maxFDs := 0
	sampleFDs := func() {
		if n, err := r.fds(); err == nil && n > maxFDs {
			maxFDs = n
		}
	}
	// Dial as fast as one goroutine can. A refused connection may already
	// be reset by the time connect returns (ECONNRESET from the dial): that
	// is a refusal too. Any other dial error (refused: no listener; timed
	// out: nobody accepts) is not.
	deadline := time.Now().Add(30 * time.Second)
	tried, resetAtDial, dialErrs, consecutive := 0, 0, 0, 0
	var lastErr error
	for ; tried < attempts && time.Now().Before(deadline); tried++ {
		c, err := net.DialTimeout("tcp", r.addr, 2*time.Second)
		switch {
		case err == nil:
			consecutive = 0
			conns.add(c)
		case errors.Is(err, syscall.ECONNRESET):
			resetAtDial++
		default:
			dialErrs++
			consecutive++
			lastErr = err
		}
		if consecutive >= 50 || !r.alive() {
			break
		}
		if tried%100 == 0 {
			sampleFDs()
		}
	}
	sampleFDs()
	if consecutive > 0 {
		r.awaitExit(2 * time.Second) // refused dials: is it still there?
	}
	t.Logf("%d attempts: %d connections open, %d reset during connect, %d dials failed (last: %v); relay peaked at %d descriptors",
		tried, conns.len(), resetAtDial, dialErrs, lastErr, maxFDs)
	r.requireAlive(t, "during the connection attack")
	if tried < attempts || dialErrs > 0 {
		t.Errorf("%d of %d attempts made, %d dials failed (last error %v): a relay at its cap accepts and closes, it does not stop accepting", tried, attempts, dialErrs, lastErr)
	}
	if maxFDs >= limit {
		t.Errorf("relay reached %d open descriptors, want below its limit of %d", maxFDs, limit)
	}

	// The relay can hold at most its cap; every other attack socket must
	// be closed by it, not left waiting in the accept backlog.
	readBy := time.Now().Add(1500 * time.Millisecond)
	held, refused, other := 0, 0, 0
	buf := make([]byte, 1)
	conns.mu.Lock()
	for _, c := range conns.conns {
		_ = c.SetReadDeadline(atLeast(readBy, 2*time.Millisecond))
		_, err := c.Read(buf)
		switch {
		case isTimeout(err):
			held++
		case closedByPeer(err):
			refused++
		default:
			other++
		}
	}
	conns.mu.Unlock()
	t.Logf("of the attack's sockets: %d held open by the relay, %d closed by it, %d other", held, refused, other)
	if held >= limit {
		t.Errorf("%d attack sockets are open at the relay, more than its descriptor limit allows: the excess waits in the backlog instead of being refused", held)
	}

	// A connection over the cap is closed at once.
	for i := 0; i < 3; i++ {
		c, err := r.dial(2 * time.Second)
		if errors.Is(err, syscall.ECONNRESET) {
			t.Logf("probe %d over the cap reset during connect", i)
			continue
		}
		if err != nil {
			r.requireAlive(t, "after the attack")
			t.Errorf("probe %d: dial: %v (a refused connection is accepted, then closed)", i, err)
			continue
		}
		start := time.Now()
		_ = c.SetReadDeadline(start.Add(1500 * time.Millisecond))
		_, err = c.Read(buf)
		c.Close()
		switch {
		case closedByPeer(err):
			t.Logf("probe %d over the cap closed by the relay after %v", i, time.Since(start).Round(time.Millisecond))
		case isTimeout(err):
			t.Errorf("probe %d over the cap still open after 1.5s; want it closed right after accept", i)
		default:
			t.Errorf("probe %d over the cap: read %v, want EOF or reset", i, err)
		}
	}
	r.requireAlive(t, "after the probes")

	// Recovery: the attack goes away; a key holder connected afterwards
	// gets a signature through within 5 s.
	conns.closeAll()
	closed := time.Now()
	recoverBy := closed.Add(5 * time.Second)
	var h *holder
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for h == nil {
		left := time.Until(recoverBy)
		if left <= 0 {
			t.Fatalf("no key holder could connect within 5s of the attack ending (last: %v)", lastErr)
		}
		var err error
		if h, err = r.connectHolder(t, true, left); err != nil {
			lastErr = err
			r.requireAlive(t, "while recovering")
			<-tick.C
		}
	}
	msg := []byte("invoice after the flood")
	left := time.Until(recoverBy)
	if left < 100*time.Millisecond {
		t.Fatalf("key holder connected only %v after the attack ended", time.Since(closed))
	}
	c, err := r.dial(left)
	if err != nil {
		t.Fatalf("dial for POST /sign: %v", err)
	}
	defer c.Close()
	res, err := c.do(signRequest("Bearer "+apiKey, signBody(h.pub, msg, int(left.Milliseconds()))), left)
	if err != nil {
		t.Fatalf("POST /sign after the attack: %v (%v after it ended)", err, time.Since(closed))
	}
	checkSignature(t, res, h.pub, msg)
	if took := time.Since(closed); took > 5*time.Second {
		t.Errorf("sign round trip finished %v after the attack ended, want within 5s", took)
	}
	if n, err := r.fds(); err == nil && n >= limit {
		t.Errorf("relay has %d descriptors open after the attack", n)
	}
	t.Logf("signed %v after the attack ended", time.Since(closed).Round(time.Millisecond))
}

// TestIdleConnectionDeadline proves finding 2 (idle connections): with
// http.header_timeout 1s a TCP connection that sends nothing, or stops in
// the middle of its request headers, is closed by the relay within about
// 3 s. Before the fix such a socket was held for the 30 s read timeout (and
// a keep-alive one for the 2 min idle timeout), so a few thousand silent
// sockets exhausted the relay.
func TestIdleConnectionDeadline(t *testing.T) {
	r := startRelay(t, opts{Config: map[string]any{
		"http": map[string]any{"header_timeout": "1s"},
	}})
	cases := []struct {
		name string
		send string
	}{
		{"silent", ""},
		{"partial headers", "POST /sign HTTP/1.1\r\nHost: x\r\n"},
		{"partial request line", "POST /si"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := r.mustDial(t)
			start := time.Now()
			if tc.send != "" {
				if _, err := io.WriteString(c, tc.send); err != nil {
					t.Fatal(err)
				}
			}
			extra, closed, err := c.awaitEOF(3 * time.Second)
			if !closed {
				t.Fatalf("connection still open %v after it went quiet (header_timeout 1s); read %q", time.Since(start).Round(time.Millisecond), extra)
			}
			if err != nil && !closedByPeer(err) {
				t.Fatalf("read: %v", err)
			}
			checkStatusLine(t, extra)
			t.Logf("closed after %v (sent back %q)", time.Since(start).Round(time.Millisecond), firstLine(extra))
		})
	}
	// Stricter than the review's wording: header_timeout bounds all of the
	// headers, so a client that drips one byte every 300 ms is cut off too.
	t.Run("drip", func(t *testing.T) {
		if !full() {
			t.Skip("stricter variant; runs with SIGNRELAY_HOSTILE_FULL=1")
		}
		c := r.mustDial(t)
		start := time.Now()
		req := "POST /sign HTTP/1.1\r\nHost: x\r\nX-Slow: " + string(make([]byte, 0)) + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < len(req); i++ {
			if _, err := c.Write([]byte{req[i]}); err != nil {
				t.Logf("closed by the relay after %v, %d bytes into the drip (%v)", time.Since(start).Round(time.Millisecond), i, err)
				return
			}
			if time.Since(start) > 3*time.Second {
				break
			}
			<-tick.C
		}
		extra, closed, _ := c.awaitEOF(500 * time.Millisecond)
		if !closed {
			t.Fatalf("a request whose headers drip in for %v is still open (header_timeout 1s)", time.Since(start).Round(time.Millisecond))
		}
		checkStatusLine(t, extra)
	})
}

// checkStatusLine fails if b holds a response whose status is not one the
// contract uses for a connection it gives up on.
func checkStatusLine(t *testing.T, b []byte) {
	t.Helper()
	if len(b) == 0 {
		return
	}
	var code int
	if _, err := fmt.Sscanf(string(b), "HTTP/1.1 %d", &code); err != nil {
		t.Errorf("relay sent %q before closing, not an HTTP response", firstLine(b))
		return
	}
	if code < 400 || code > 599 || code == 499 {
		t.Errorf("relay sent status %d before closing an idle connection", code)
	}
}

func firstLine(b []byte) string {
	s := string(b)
	for i := 0; i < len(s); i++ {
		if s[i] == '\r' || s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}
