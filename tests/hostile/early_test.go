package hostile

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"
)

// A client that sends WebSocket frames before it has read the relay's 101
// (RFC 6455 forbids it) puts them in the HTTP server's read buffer, which
// the server recycles for other connections. The relay keeps such a
// connection on its handler (httpapi/hijack.go) instead of moving it to a
// goroutine of its own: its early bytes are read, in order, and nothing it
// sends or receives mixes with another connection's. Run beside ordinary
// holders, every one of them signs its own message with its own key.
func TestBytesBeforeTheUpgradeCompletes(t *testing.T) {
	r := startRelay(t, opts{Config: map[string]any{"log_level": "warn"}})
	const early, plain = 12, 12
	var wg sync.WaitGroup
	errs := make(chan error, early+plain)
	for i := 0; i < early+plain; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := earlyHolderSigns(t, r, i < early, i); err != nil {
				errs <- fmt.Errorf("holder %d (early bytes: %v): %w", i, i < early, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	r.requireAlive(t, "after early bytes")
}

// earlyHolderSigns upgrades (with a ping sent early when early is set),
// introduces a fresh key, and answers one POST /sign for it.
func earlyHolderSigns(t *testing.T, r *relay, early bool, i int) error {
	ping := []byte(fmt.Sprintf("early-%d", i))
	var pre []byte
	if early {
		pre = clientFrame(true, opPing, ping)
	}
	w, res, err := r.upgradeEarly(nil, 5*time.Second, pre)
	if err != nil {
		return err
	}
	if w == nil {
		return fmt.Errorf("upgrade refused: %v", res)
	}
	defer w.Close()
	if err := w.readChallenge(5 * time.Second); err != nil {
		return err
	}
	if early {
		_ = w.SetReadDeadline(time.Now().Add(5 * time.Second))
		f, err := w.readFrame()
		if err != nil {
			return fmt.Errorf("reading the pong: %w", err)
		}
		if f.op != opPong || !bytes.Equal(f.payload, ping) {
			return fmt.Errorf("got op %#x %q, want the pong %q", f.op, f.payload, ping)
		}
	}
	pub, priv := newKey(t)
	intro, _ := json.Marshal(frame{"type": "introduction", "public_key": b64(pub),
		"signature": b64(ed25519.Sign(priv, append([]byte(introPrefix), w.nonce...)))})
	if err := w.write(clientFrame(true, opText, intro), 5*time.Second); err != nil {
		return err
	}
	if f, err := w.readJSON(5 * time.Second); err != nil || f.str("type") != "introduced" {
		return fmt.Errorf("introduction: %v %v", f, err)
	}
	msg := []byte(fmt.Sprintf("message %d", i))
	type result struct {
		res *response
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := r.roundTrip(signRequest("Bearer "+apiKey, signBody(pub, msg, 10000)), 15*time.Second)
		done <- result{res, err}
	}()
	req, err := w.readJSON(10 * time.Second)
	if err != nil {
		return fmt.Errorf("waiting for sign_request: %w", err)
	}
	got, _ := req["message"].(string)
	if req.str("type") != "sign_request" || got != b64(msg) {
		return fmt.Errorf("got %v, want the sign_request for %q", req, msg)
	}
	answer, _ := json.Marshal(frame{"type": "sign_response", "request_id": req.str("request_id"),
		"message": got, "signature": b64(ed25519.Sign(priv, msg))})
	if err := w.write(clientFrame(true, opText, answer), 5*time.Second); err != nil {
		return err
	}
	out := <-done
	if out.err != nil {
		return out.err
	}
	var body struct{ Signature string }
	if out.res.status != 200 || json.Unmarshal(out.res.body, &body) != nil || body.Signature != b64(ed25519.Sign(priv, msg)) {
		return fmt.Errorf("POST /sign: %v", out.res)
	}
	return nil
}
