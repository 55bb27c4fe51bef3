package hostile

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// TestShutdownConnectionClose proves finding 10 (shutdown): with
// shutdown_grace 3s and a request pending (its key holder never answers),
// SIGTERM starts the grace. During it, requests on keep-alive connections
// opened before the signal (GET /healthz, POST /sign) are answered 503 and
// every response carries Connection: close; a request on a fresh
// connection is answered, never met with EOF. The pending request ends with
// 503 unavailable, and its key holder gets sign_cancel "shutdown" and then
// close 1001. Before the fix the 503s kept their connections alive, so a
// backend's pooled connection broke mid-request when the relay stopped.
func TestShutdownConnectionClose(t *testing.T) {
	const grace = 3 * time.Second
	r := startRelay(t, opts{Config: map[string]any{"shutdown_grace": "3s"}})
	h := r.mustHolder(t, false)

	// Two keep-alive connections, each used once before the signal.
	keep := make([]*conn, 2)
	for i := range keep {
		keep[i] = r.mustDial(t)
		res, err := keep[i].do(healthz, 2*time.Second)
		if err != nil || res.status != http.StatusOK || res.close {
			t.Fatalf("keep-alive connection %d: GET /healthz %v %v, want 200 kept alive", i, res, err)
		}
	}
	// The pending request.
	pending := r.mustDial(t)
	msg := []byte("pending at shutdown")
	_ = pending.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(pending, signRequest("Bearer "+apiKey, signBody(h.pub, msg, 60000))); err != nil {
		t.Fatal(err)
	}
	req := h.expect(t, "sign_request", 5*time.Second)

	r.sigterm()
	term := time.Now()

	// probe sends GET /healthz on a fresh connection; an accepted
	// connection must get an answer.
	probe := func(when string) *response {
		t.Helper()
		c, err := r.dial(time.Second)
		if err != nil {
			t.Logf("probe %s (+%v): dial: %v (listener closed)", when, time.Since(term).Round(time.Millisecond), err)
			return nil
		}
		defer c.Close()
		res, err := c.do(healthz, 2*time.Second)
		if err != nil {
			t.Errorf("probe %s (+%v): a fresh connection during the grace got %v without a response", when, time.Since(term).Round(time.Millisecond), err)
			return nil
		}
		return res
	}

	// Wait for the relay to notice the signal: /healthz turns 503.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		res := probe("until draining")
		if res != nil && res.status == http.StatusServiceUnavailable {
			if !res.close {
				t.Errorf("GET /healthz while shutting down: 503 without Connection: close")
			}
			break
		}
		if res != nil && res.status != http.StatusOK {
			t.Fatalf("GET /healthz after SIGTERM: %v, want 200 then 503", res)
		}
		if time.Since(term) > 2*time.Second {
			t.Fatalf("/healthz did not turn 503 within 2s of SIGTERM")
		}
		<-tick.C
	}

	// The keep-alive connections: answered 503, told to close, closed.
	kaRequests := []struct {
		name string
		raw  string
		code string
	}{
		{"GET /healthz", healthz, ""},
		{"POST /sign", signRequest("Bearer "+apiKey, signBody(h.pub, []byte("during the grace"), 1000)), "unavailable"},
	}
	for i, k := range kaRequests {
		res, err := keep[i].do(k.raw, 2*time.Second)
		if err != nil {
			t.Errorf("%s on a keep-alive connection during the grace: %v, want 503", k.name, err)
			continue
		}
		if res.status != http.StatusServiceUnavailable || (k.code != "" && res.code() != k.code) {
			t.Errorf("%s on a keep-alive connection during the grace: %v, want 503 %s", k.name, res, k.code)
		}
		if !res.close {
			t.Errorf("%s on a keep-alive connection during the grace: %d without Connection: close", k.name, res.status)
		}
		if _, closed, _ := keep[i].awaitEOF(2 * time.Second); !closed {
			t.Errorf("%s: keep-alive connection still open 2s after its Connection: close answer", k.name)
		}
	}

	// Fresh connections until shortly before the grace ends.
	for n := 0; n < 100 && time.Since(term) < grace-time.Second; n++ {
		if res := probe("during the grace"); res != nil {
			if res.status != http.StatusServiceUnavailable || !res.close {
				t.Errorf("fresh GET /healthz during the grace (+%v): %v, want 503 with Connection: close", time.Since(term).Round(time.Millisecond), res)
			}
		}
		<-tick.C
	}

	// The pending request ends with the grace.
	res, err := pending.read(grace + 5*time.Second - time.Since(term))
	if err != nil {
		t.Errorf("pending POST /sign: %v, want 503 unavailable", err)
	} else {
		if res.status != http.StatusServiceUnavailable || res.code() != "unavailable" {
			t.Errorf("pending POST /sign: %v, want 503 unavailable", res)
		}
		if !res.close {
			t.Errorf("pending POST /sign answered during shutdown without Connection: close")
		}
	}
	cancel := h.expect(t, "sign_cancel", 5*time.Second)
	if cancel.str("request_id") != req.str("request_id") || cancel.str("reason") != "shutdown" {
		t.Errorf("key holder got %v, want sign_cancel shutdown for %s", cancel, req.str("request_id"))
	}
	if code, err := h.awaitClose(5 * time.Second); code != 1001 {
		t.Errorf("key holder socket ended with close %d (%v), want 1001", code, err)
	}
	if !r.awaitExit(15 * time.Second) {
		t.Errorf("relay still running 15s after SIGTERM")
	} else {
		t.Logf("relay exited %v after SIGTERM: %v", time.Since(term).Round(time.Millisecond), r.state)
	}
}
