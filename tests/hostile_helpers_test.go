package tests

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// Helpers for the tests of contract §G (hostile_limits_test.go,
// weakkeys_test.go). Nothing here may call t.Fatal off the test goroutine,
// so the helpers used from goroutines return errors instead.

// secondAPIKey is the other API key of the relays that need two.
const secondAPIKey = "second-api-key-for-hostile-tests-0123"

// hostile sets what every test of this group shares: a short shutdown grace,
// so that a test that fails with requests still pending ends quickly.
func hostile(c *config.Config) {
	c.ShutdownGrace = config.Duration(100 * time.Millisecond)
}

func twoAPIKeys(c *config.Config) { c.APIKeys = config.BareKeys(testAPIKey, secondAPIKey) }

// postKey sends POST /sign with apiKey as the bearer token.
func (r *relay) postKey(apiKey string, body []byte) signResp {
	return r.postAuth("Bearer "+apiKey, body)
}

// signAsyncKey is signAsync with apiKey as the bearer token.
func (r *relay) signAsyncKey(apiKey string, body []byte) <-chan signResp {
	ch := make(chan signResp, 1)
	go func() { ch <- r.postKey(apiKey, body) }()
	return ch
}

// awaitWithin waits at most d for a POST /sign started with signAsync.
func awaitWithin(t *testing.T, ch <-chan signResp, d time.Duration) signResp {
	t.Helper()
	select {
	case got := <-ch:
		if got.TransportE != nil {
			t.Fatalf("POST /sign: %v", got.TransportE)
		}
		return got
	case <-time.After(d):
		t.Fatalf("POST /sign did not return within %s", d)
	}
	return signResp{}
}

// --- raw WebSocket access usable from any goroutine ----------------------

// dialRaw opens a WebSocket without a testing.T; the caller closes it.
// With stuck, the client socket is made to stall the relay's writes after a
// few frames once the client stops reading (see stuckSocket).
func (r *relay) dialRaw(header http.Header, stuck bool) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: wait, TLSClientConfig: r.tlsClientConfig()}
	if stuck {
		nd := net.Dialer{Timeout: wait, Control: stuckSocket}
		d.NetDial = nd.Dial
	}
	return d.Dial(r.ws, header)
}

// readFrameRaw reads one JSON text frame within d.
func readFrameRaw(conn *websocket.Conn, d time.Duration) (frame, error) {
	_ = conn.SetReadDeadline(time.Now().Add(d))
	mt, data, err := conn.ReadMessage()
	if err != nil {
		return nil, err
	}
	if mt != websocket.TextMessage {
		return nil, fmt.Errorf("relay sent a non-text frame (%d)", mt)
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("relay sent bad JSON %q", data)
	}
	return f, nil
}

func writeFrameRaw(conn *websocket.Conn, f any) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	_ = conn.SetWriteDeadline(time.Now().Add(wait))
	return conn.WriteMessage(websocket.TextMessage, b)
}

// introduceRaw answers the challenge on conn with priv and waits for
// "introduced".
func introduceRaw(conn *websocket.Conn, priv ed25519.PrivateKey) error {
	ch, err := readFrameRaw(conn, wait)
	if err != nil {
		return fmt.Errorf("challenge: %w", err)
	}
	nonce, err := protocol.DecodeBase64(ch.str("nonce"))
	if ch.str("type") != protocol.TypeChallenge || err != nil || len(nonce) != 32 {
		return fmt.Errorf("got %v, want a challenge", ch)
	}
	pub := priv.Public().(ed25519.PublicKey)
	if err := writeFrameRaw(conn, frame{"type": "introduction", "public_key": b64(pub),
		"signature": b64(ed25519.Sign(priv, protocol.IntroductionMessage(nonce)))}); err != nil {
		return err
	}
	f, err := readFrameRaw(conn, wait)
	if err != nil {
		return fmt.Errorf("introduced: %w", err)
	}
	if f.str("type") != protocol.TypeIntroduced {
		return fmt.Errorf("got %v, want introduced", f)
	}
	return nil
}

// connectMany introduces n connections of priv's key, a few at a time, and
// closes them when the test ends.
func (r *relay) connectMany(t *testing.T, priv ed25519.PrivateKey, n int) []*websocket.Conn {
	t.Helper()
	conns := make([]*websocket.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				conn, _, err := r.dialRaw(nil, false)
				if err == nil {
					conns[i] = conn
					err = introduceRaw(conn, priv)
				}
				errs[i] = err
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("connection %d of %d: %v", i+1, n, err)
		}
	}
	return conns
}

// serveApprove answers every sign_request on conn with a valid signature
// by priv until the connection ends; the returned function closes conn and
// waits for that.
func serveApprove(conn *websocket.Conn, priv ed25519.PrivateKey) (stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_ = conn.SetReadDeadline(time.Time{})
			f, err := readFrameRaw(conn, time.Hour)
			if err != nil {
				return
			}
			if f.str("type") != protocol.TypeSignRequest {
				continue
			}
			msg, err := protocol.DecodeBase64(f.str("message"))
			if err != nil {
				return
			}
			if writeFrameRaw(conn, frame{"type": "sign_response", "request_id": f.str("request_id"),
				"message": f.str("message"), "signature": b64(ed25519.Sign(priv, msg))}) != nil {
				return
			}
		}
	}()
	return func() {
		conn.Close()
		<-done
	}
}

// expectRequest reads the next frame, which must be the sign_request for msg.
func (h *holder) expectRequest(msg []byte) frame {
	h.t.Helper()
	f := h.expect(protocol.TypeSignRequest)
	if f.str("message") != b64(msg) {
		got, _ := protocol.DecodeBase64(f.str("message"))
		h.t.Fatalf("next sign_request is for a %d-byte message %.40q, want the %d-byte %.40q", len(got), got, len(msg), msg)
	}
	return f
}

// expectNoFrame proves that nothing is queued for h: an unknown frame type
// is answered with an error, which would come after anything queued before.
func (h *holder) expectNoFrame() {
	h.t.Helper()
	h.sendRaw(websocket.TextMessage, []byte(`{"type":"no_such_type"}`))
	f, err := h.read()
	if err != nil {
		h.t.Fatalf("waiting for the unknown_type answer: %v", err)
	}
	if f.str("type") != protocol.TypeError || f.str("code") != protocol.CodeUnknownType {
		h.t.Fatalf("got %v before the answer to a probe frame; want nothing queued", f)
	}
}

// pendingReq is a request delivered to a holder and not yet answered.
type pendingReq struct {
	msg []byte
	req frame
	res <-chan signResp
}

// startPending makes a POST /sign for h's key with apiKey and waits until h
// has received it: from then on it is pending on the relay.
func (r *relay) startPending(t *testing.T, h *holder, apiKey string, msg []byte) pendingReq {
	t.Helper()
	res := r.signAsyncKey(apiKey, signBody(h.pub, msg, nil))
	select {
	case got := <-res:
		t.Fatalf("POST /sign for a %d-byte message ended before it reached the holder: %d %s", len(msg), got.Status, got.RawBody)
	default:
	}
	return pendingReq{msg: msg, req: h.expectRequest(msg), res: res}
}

// endReject rejects p on h and checks the 403 that ends it.
func (p pendingReq) endReject(t *testing.T, h *holder) {
	t.Helper()
	h.reject(p.req, "")
	expectError(t, awaitResp(t, p.res), http.StatusForbidden, "rejected")
}

// expectRefused sends a POST /sign that must be refused without
// reaching a holder. It carries a short timeout_ms so that a relay which
// wrongly accepts it fails the test with 504 instead of hanging.
func (r *relay) expectRefused(t *testing.T, apiKey string, pub ed25519.PublicKey, msg []byte, status int, code string) signResp {
	t.Helper()
	got := r.postKey(apiKey, signBody(pub, msg, map[string]any{"timeout_ms": 300}))
	if got.TransportE != nil {
		t.Fatalf("POST /sign: %v", got.TransportE)
	}
	expectError(t, got, status, code)
	return got
}

// roundTrip is one timed POST /sign.
type roundTrip struct {
	msg []byte
	res signResp
	d   time.Duration
}

// roundTripLoop makes POST /sign for pub (whose holder answers, see
// serveApprove) one after another until the returned stop is called, which
// returns every round trip made. It stops by itself at the first failure,
// and when the test ends.
func (r *relay) roundTripLoop(t *testing.T, pub ed25519.PublicKey) (stop func() []roundTrip) {
	var (
		mu   sync.Mutex
		done []roundTrip
	)
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-quit:
				return
			default:
			}
			msg := []byte(fmt.Sprintf("round trip %d", i))
			start := time.Now()
			got := r.post(signBody(pub, msg, map[string]any{"timeout_ms": 10000}))
			mu.Lock()
			done = append(done, roundTrip{msg, got, time.Since(start)})
			mu.Unlock()
			if got.TransportE != nil || got.Status != http.StatusOK {
				return
			}
		}
	}()
	var once sync.Once
	stop = func() []roundTrip {
		once.Do(func() { close(quit) })
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return done
	}
	t.Cleanup(func() { stop() })
	return stop
}

// checkRoundTrips fails unless every round trip signed and took at most bound.
func checkRoundTrips(t *testing.T, rts []roundTrip, pub ed25519.PublicKey, bound time.Duration, during string) {
	t.Helper()
	var slowest time.Duration
	for i, x := range rts {
		if x.res.TransportE != nil {
			t.Fatalf("round trip %d %s: %v", i, during, x.res.TransportE)
		}
		verifyResult(t, x.res, pub, x.msg)
		slowest = max(slowest, x.d)
		if x.d > bound {
			t.Errorf("round trip %d for another key took %s %s (bound %s)", i, x.d, during, bound)
		}
	}
	t.Logf("%d round trips for another key %s, slowest %s", len(rts), during, slowest)
}
