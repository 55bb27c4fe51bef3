package signer

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/signrelay/signrelay/protocol"
)

// waitLimit bounds every wait in these tests; reaching it is a failure.
const waitLimit = 10 * time.Second

// relayConfig picks the fake relay's behaviour. It is fixed before the
// server starts, so that handlers read it without a data race.
type relayConfig struct {
	refuseIntro bool   // answer every introduction with error + 4401
	badNonce    bool   // send a 16-byte nonce
	silent      bool   // upgrade, then send nothing and wait
	status      int    // refuse the upgrade with this HTTP status
	retryAfter  string // Retry-After of that refusal
	noRead      bool   // after the introduction, stop reading (no pongs)
}

// fakeRelay is a small relay speaking the key-holder half of the contract:
// challenge, verified introduction, introduced; then the test drives each
// introduced connection through a relayConn.
type fakeRelay struct {
	t       *testing.T
	cfg     relayConfig
	srv     *httptest.Server
	dials   atomic.Int32
	conns   chan *relayConn   // introduced connections, in order
	origins chan string       // Origin header of each upgrade
	intros  chan introOutcome // result of each introduction check
	upgrade chan struct{}     // one per upgraded connection
	stop    chan struct{}     // closed at cleanup
	wg      sync.WaitGroup    // handler goroutines
	mu      sync.Mutex        // guards live
	live    []*websocket.Conn // every upgraded connection
}

type introOutcome struct {
	ok  bool
	err string
}

// relayConn is one introduced connection, seen from the relay.
type relayConn struct {
	t         *testing.T
	ws        *websocket.Conn
	key       ed25519.PublicKey
	sessionID string
	frames    chan []byte   // text frames from the holder
	closed    chan struct{} // the relay's read loop ended
	closeErr  error         // why; set before closed is closed
	pings     chan string   // pings the relay received from the holder
	pongs     chan string   // pongs the relay received from the holder
	wmu       sync.Mutex
}

func newRelay(t *testing.T, cfg relayConfig) *fakeRelay {
	t.Helper()
	f := &fakeRelay{
		t:       t,
		cfg:     cfg,
		conns:   make(chan *relayConn, 16),
		origins: make(chan string, 16),
		intros:  make(chan introOutcome, 16),
		upgrade: make(chan struct{}, 16),
		stop:    make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", f.serveWS)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.close)
	return f
}

func (f *fakeRelay) url() string { return "ws" + strings.TrimPrefix(f.srv.URL, "http") + "/ws" }

func (f *fakeRelay) close() {
	close(f.stop)
	f.srv.Close()
	f.mu.Lock()
	for _, ws := range f.live {
		_ = ws.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// next returns the next introduced connection.
func (f *fakeRelay) next() *relayConn {
	f.t.Helper()
	select {
	case rc := <-f.conns:
		return rc
	case <-time.After(waitLimit):
		f.t.Fatal("no key holder connection reached the relay")
		return nil
	}
}

var upgrader = websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}

func (f *fakeRelay) serveWS(w http.ResponseWriter, r *http.Request) {
	f.wg.Add(1)
	defer f.wg.Done()
	f.dials.Add(1)
	if f.cfg.status != 0 {
		if f.cfg.retryAfter != "" {
			w.Header().Set("Retry-After", f.cfg.retryAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.cfg.status)
		fmt.Fprint(w, `{"error":{"code":"rate_limited","message":"slow down"}}`)
		return
	}
	offer(f.origins, r.Header.Get("Origin"))
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	f.mu.Lock()
	f.live = append(f.live, ws)
	f.mu.Unlock()
	defer ws.Close()
	offer(f.upgrade, struct{}{})

	if f.cfg.silent {
		<-f.stop
		return
	}
	nonce := make([]byte, protocol.NonceSize)
	if f.cfg.badNonce {
		nonce = nonce[:16]
	}
	_, _ = rand.Read(nonce)
	_ = ws.WriteMessage(websocket.TextMessage, protocol.EncodeChallenge(nonce))

	_ = ws.SetReadDeadline(time.Now().Add(waitLimit))
	_, data, err := ws.ReadMessage()
	if err != nil {
		return
	}
	var why string
	v, err := protocol.DecodeHolderFrame(data)
	intro, _ := v.(*protocol.Introduction)
	switch {
	case err != nil:
		why = err.Error()
	case intro == nil:
		why = "not an introduction"
	case !ed25519.Verify(ed25519.PublicKey(intro.PublicKey), protocol.IntroductionMessage(nonce), intro.Signature):
		why = "signature does not verify"
	case f.cfg.refuseIntro:
		why = "refused by configuration"
	}
	offer(f.intros, introOutcome{ok: why == "", err: why})
	if why != "" {
		_ = ws.WriteMessage(websocket.TextMessage, protocol.EncodeError(protocol.CodeIntroductionFailed, why, ""))
		_ = ws.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(protocol.CloseIntroductionFailed, "introduction failed"), time.Now().Add(time.Second))
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	}
	_ = ws.SetReadDeadline(time.Time{})

	pk, _ := protocol.PublicKeyFromBytes(intro.PublicKey)
	rc := &relayConn{
		t:         f.t,
		ws:        ws,
		key:       ed25519.PublicKey(intro.PublicKey),
		sessionID: newID(),
		frames:    make(chan []byte, 64),
		closed:    make(chan struct{}),
		pings:     make(chan string, 16),
		pongs:     make(chan string, 16),
	}
	ws.SetPongHandler(func(s string) error { offer(rc.pongs, s); return nil })
	ws.SetPingHandler(func(s string) error {
		offer(rc.pings, s)
		return ws.WriteControl(websocket.PongMessage, []byte(s), time.Now().Add(time.Second))
	})
	_ = ws.WriteMessage(websocket.TextMessage, protocol.EncodeIntroduced(pk, rc.sessionID))
	select {
	case f.conns <- rc:
	case <-f.stop:
		return
	}
	if f.cfg.noRead {
		<-f.stop
		return
	}
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			rc.closeErr = err
			close(rc.closed)
			return
		}
		select {
		case rc.frames <- data:
		case <-f.stop:
			return
		}
	}
}

// send writes one frame to the holder.
func (rc *relayConn) send(frame []byte) {
	rc.t.Helper()
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	if err := rc.ws.WriteMessage(websocket.TextMessage, frame); err != nil {
		rc.t.Fatalf("relay send: %v", err)
	}
}

// request sends a sign_request and returns its id.
func (rc *relayConn) request(msg []byte, desc string) string {
	rc.t.Helper()
	id := newID()
	rc.send(protocol.EncodeSignRequest(id, msg, desc, "", time.Now().Add(time.Minute)))
	return id
}

// closeWith sends a close frame with code, as the relay does on shutdown.
func (rc *relayConn) closeWith(code int, text string) {
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	_ = rc.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
}

// drop cuts the TCP connection without a close frame.
func (rc *relayConn) drop() { _ = rc.ws.NetConn().Close() }

// nextFrame returns the next frame from the holder, decoded into a map.
func (rc *relayConn) nextFrame() map[string]any {
	rc.t.Helper()
	select {
	case data := <-rc.frames:
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			rc.t.Fatalf("holder sent invalid JSON %q: %v", data, err)
		}
		return m
	case <-rc.closed:
		rc.t.Fatalf("connection closed while waiting for a frame: %v", rc.closeErr)
	case <-time.After(waitLimit):
		rc.t.Fatal("no frame from the holder")
	}
	return nil
}

// waitClosed waits until the relay's side of the connection has ended.
func (rc *relayConn) waitClosed() error {
	rc.t.Helper()
	select {
	case <-rc.closed:
		return rc.closeErr
	case <-time.After(waitLimit):
		rc.t.Fatal("connection did not close")
		return nil
	}
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// checkGoroutines fails the test if goroutines started during it are still
// running once its cleanups (registered later, so run earlier) are done.
func checkGoroutines(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(waitLimit)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutine leak: %d running, %d before the test\n%s",
					runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
				return
			}
			runtime.Gosched()
			time.Sleep(5 * time.Millisecond) // polling a condition, not synchronising
		}
	})
}

func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// offer sends v if ch has room; the fake relay never blocks on its reports.
func offer[T any](ch chan T, v T) {
	select {
	case ch <- v:
	default:
	}
}
