package tests

import (
	"crypto/rand"
	"net/http"
	"testing"
	"time"
)

// TestSlowHolderIsClosedAndRequestsSurvive: a key holder that stops reading
// stalls the relay's writes to it; after websocket.write_timeout the relay
// disconnects it rather than block or drop requests, and the key's next
// connection gets every request that is still pending. The write timeout
// also applies to that next connection, so it is long enough for this test's
// reader to take a 1.4 MB frame on a loaded machine.
func TestSlowHolderIsClosedAndRequestsSurvive(t *testing.T) {
	const n = 24
	r := startRelay(t, func(c *configT) {
		c.WebSocket.WriteTimeout = configDuration(2 * time.Second)
		c.Sign.MaxMessageBytes = 1 << 20
	})
	slow := r.connect(t, nil) // and never reads again
	// 24 frames of 1.4 MB (32 MB) outgrow the loopback socket buffers.
	msg := make([]byte, 1<<20)
	if _, err := rand.Read(msg); err != nil {
		t.Fatal(err)
	}
	results := make(chan signResp, n)
	for i := 0; i < n; i++ {
		go func() { results <- r.post(signBody(slow.pub, msg, map[string]any{"timeout_ms": 60000})) }()
	}
	// Once the relay has given up on the connection the key has no live
	// holder: a short request gets 404 instead of 504.
	deadline := time.Now().Add(wait)
	for {
		got := r.post(signBody(slow.pub, []byte("probe"), map[string]any{"timeout_ms": 50}))
		if got.Status == http.StatusNotFound {
			break
		}
		if got.Status != http.StatusGatewayTimeout || time.Now().After(deadline) {
			t.Fatalf("slow holder still routable: %d %s", got.Status, got.RawBody)
		}
	}
	// The key's next connection is handed what is pending and rejects it.
	// A POST still uploading when the slow holder was dropped found no
	// holder (404) and was never pending; every other one must come here.
	fresh := r.connect(t, slow.priv)
	seen := make(chan string, n)
	go func() {
		for {
			f, err := fresh.read()
			if err != nil {
				close(seen)
				return
			}
			if f.str("type") == "sign_request" {
				seen <- f.str("request_id")
				fresh.reject(f, "test")
			}
		}
	}()
	rejected, notConnected := map[string]bool{}, 0
	for i := 0; i < n; i++ {
		got := <-results
		switch {
		case got.TransportE != nil:
			t.Fatal(got.TransportE)
		case got.Status == http.StatusForbidden:
			rejected[got.RequestID] = true
		case got.Status == http.StatusNotFound:
			notConnected++
		default:
			t.Fatalf("request ended %d %s", got.Status, got.RawBody)
		}
	}
	if len(rejected) == 0 {
		t.Fatalf("no request survived the slow holder (%d found no holder)", notConnected)
	}
	for range rejected {
		id := <-seen
		if !rejected[id] {
			t.Fatalf("%s was delivered but its POST did not end rejected", id)
		}
	}
	fresh.conn.Close()
}

// TestReconnectWithManyPendingFitsTheQueue: redelivering every pending
// request of a key to a new connection never overflows its send queue, even
// when send_queue is set lower than max_pending_per_key.
func TestReconnectWithManyPendingFitsTheQueue(t *testing.T) {
	const n = 64
	r := startRelay(t, func(c *configT) { c.WebSocket.SendQueue = 8 })
	first := r.connect(t, nil)
	results := make(chan signResp, n)
	for i := 0; i < n; i++ {
		go func() { results <- r.post(signBody(first.pub, []byte("queued"), nil)) }()
	}
	for i := 0; i < n; i++ {
		first.expect("sign_request")
	}
	first.conn.Close()
	second := r.connect(t, first.priv)
	for i := 0; i < n; i++ {
		second.reject(second.expect("sign_request"), "")
	}
	for i := 0; i < n; i++ {
		expectError(t, <-results, http.StatusForbidden, "rejected")
	}
}
