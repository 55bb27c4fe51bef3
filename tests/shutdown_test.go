package tests

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// startShutdown begins a graceful shutdown in the background, as SIGTERM
// does; the channel receives Shutdown's result when it returns.
func (r *relay) startShutdown() <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		done <- r.srv.Shutdown(ctx)
	}()
	return done
}

func awaitShutdown(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(wait + 5*time.Second):
		t.Fatal("Shutdown did not return")
	}
}

// health returns the status and decoded body of GET /healthz.
func (r *relay) health() (int, map[string]any, error) {
	res, err := r.client.Get(r.base + "/healthz")
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		return res.StatusCode, nil, errors.New("healthz body is not JSON: " + string(raw))
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return res.StatusCode, body, errors.New("healthz Content-Type " + ct)
	}
	return res.StatusCode, body, nil
}

// awaitDraining polls /healthz until it turns 503: a bounded condition wait
// on the relay's externally visible state, not a sleep.
func (r *relay) awaitDraining(t *testing.T) {
	t.Helper()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		status, _, err := r.health()
		if err != nil {
			t.Fatalf("GET /healthz while draining: %v", err)
		}
		if status == http.StatusServiceUnavailable {
			return
		}
		if status != http.StatusOK {
			t.Fatalf("GET /healthz: %d, want 200 then 503", status)
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatal("/healthz never turned 503 after Shutdown began")
		}
	}
}

// awaitTCPClose reads the raw connection until the relay closes it. The
// relay removes a connection from the registry before its handler returns
// and the socket closes, so after this a POST /sign for the key can no
// longer reach it.
func (h *holder) awaitTCPClose() {
	h.t.Helper()
	nc := h.conn.NetConn()
	_ = nc.SetReadDeadline(time.Now().Add(wait))
	_, err := io.Copy(io.Discard, nc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		h.t.Fatal("the relay did not close the TCP connection after its close frame")
	}
}

// introduceConn answers the challenge on a dialed connection with a fresh key.
func introduceConn(t *testing.T, conn *websocket.Conn) *holder {
	t.Helper()
	pub, priv := newKey(t)
	h := &holder{t: t, conn: conn, priv: priv, pub: pub}
	ch := h.expect(protocol.TypeChallenge)
	nonce, err := protocol.DecodeBase64(ch.str("nonce"))
	if err != nil {
		t.Fatal(err)
	}
	h.send(frame{"type": "introduction", "public_key": b64(pub),
		"signature": b64(ed25519.Sign(priv, protocol.IntroductionMessage(nonce)))})
	h.expect(protocol.TypeIntroduced)
	return h
}

// on returns the holder bound to t, for use inside a subtest.
func (h *holder) on(t *testing.T) *holder {
	c := *h
	c.t = t
	return &c
}

// expectCloseNow fails unless the very next thing on the socket is a close
// frame with code: no frame may come in between.
func (h *holder) expectCloseNow(code int) {
	h.t.Helper()
	f, err := h.read()
	if err == nil {
		h.t.Fatalf("got frame %v, want close %d", f, code)
	}
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != code {
		h.t.Fatalf("connection ended with %v, want close code %d", err, code)
	}
}

func TestShutdownHealthzTurns503(t *testing.T) {
	r := startRelay(t, nil) // shutdown_grace 2s
	status, body, err := r.health()
	if err != nil || status != http.StatusOK || body["status"] != "ok" {
		t.Fatalf("healthz while serving: %d %v %v, want 200 {\"status\":\"ok\"}", status, body, err)
	}

	// A pending request keeps the relay draining until it is answered.
	h := r.connect(t, nil)
	msg := []byte("keeps the drain open")
	res := r.signAsync(signBody(h.pub, msg, nil))
	req := h.expect(protocol.TypeSignRequest)

	done := r.startShutdown()
	r.awaitDraining(t)
	for i := 0; i < 3; i++ { // stays 503 for the whole drain, not a blip
		if status, _, err := r.health(); err != nil || status != http.StatusServiceUnavailable {
			t.Fatalf("healthz while draining: %d %v, want 503", status, err)
		}
	}
	// §D: draining is not being dead. A liveness probe that failed now
	// would have the process killed before its pending requests end.
	for path, want := range map[string]int{"/readyz": http.StatusServiceUnavailable, "/livez": http.StatusOK} {
		res, err := r.client.Get(r.base + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Fatalf("%s while draining: %d, want %d", path, res.StatusCode, want)
		}
	}

	h.approve(req)
	verifyResult(t, awaitResp(t, res), h.pub, msg)
	h.expectCloseNow(protocol.CloseGoingAway)
	awaitShutdown(t, done)
}

func TestShutdownRefusesNewWork(t *testing.T) {
	r := startRelay(t, nil)
	holding := r.connect(t, nil)
	res := r.signAsync(signBody(holding.pub, []byte("pending"), nil))
	req := holding.expect(protocol.TypeSignRequest)
	idle := r.connect(t, nil) // connected, nothing pending

	done := r.startShutdown()
	r.awaitDraining(t)

	t.Run("POST /sign", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			body []byte
		}{
			{"key with a live connection", signBody(idle.pub, []byte("new work"), nil)},
			{"key with a pending request", signBody(holding.pub, []byte("more work"), nil)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				expectError(t, r.post(tc.body), http.StatusServiceUnavailable, "unavailable")
			})
		}
	})
	t.Run("WebSocket upgrade", func(t *testing.T) {
		conn, resp, err := r.dial(t, nil)
		expectRefusedUpgrade(t, conn, resp, err, http.StatusServiceUnavailable, "unavailable")
	})

	// The pending request is still served, and the refused ones reached no
	// key holder: the next thing idle sees is the 1001 close.
	holding.approve(req)
	if got := awaitResp(t, res); got.Status != http.StatusOK {
		t.Fatalf("pending request answered during the grace: %d %s", got.Status, got.RawBody)
	}
	idle.expectCloseNow(protocol.CloseGoingAway)
	holding.expectCloseNow(protocol.CloseGoingAway)
	awaitShutdown(t, done)
}

func TestShutdownCancelsUnansweredAfterGrace(t *testing.T) {
	const grace = 300 * time.Millisecond
	r := startRelay(t, func(c *config.Config) { c.ShutdownGrace = config.Duration(grace) })
	h := r.connect(t, nil)
	res := r.signAsync(signBody(h.pub, []byte("nobody answers"), nil))
	req := h.expect(protocol.TypeSignRequest)

	start := time.Now()
	done := r.startShutdown()
	got := awaitResp(t, res)
	elapsed := time.Since(start)
	expectError(t, got, http.StatusServiceUnavailable, "unavailable")
	if got.RequestID != req.str("request_id") {
		t.Fatalf("503 names request %q, the sign_request was %q", got.RequestID, req.str("request_id"))
	}
	if elapsed < grace {
		t.Fatalf("request ended %v after shutdown began, before shutdown_grace %v", elapsed, grace)
	}
	h.expectCancel(req.str("request_id"), protocol.CancelShutdown)
	h.expectCloseNow(protocol.CloseGoingAway)
	awaitShutdown(t, done)
}

func TestShutdownClosesUnintroducedSocket(t *testing.T) {
	r := startRelay(t, nil)
	conn, _, err := r.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &holder{t: t, conn: conn}
	h.expect(protocol.TypeChallenge)
	done := r.startShutdown()
	h.expectCloseNow(protocol.CloseGoingAway)
	awaitShutdown(t, done)
}

// TestShutdownLeavesNoRequestHanging holds requests in every state a
// shutdown can meet and checks that each POST /sign returns, with the
// status its state calls for, and that no key holder is left open.
func TestShutdownLeavesNoRequestHanging(t *testing.T) {
	const grace = 2 * time.Second // room to answer in it, even on a slow machine
	r := startRelay(t, func(c *config.Config) { c.ShutdownGrace = config.Duration(grace) })

	type pendingCase struct {
		name   string
		res    <-chan signResp
		req    frame     // the sign_request, as the first holder saw it
		during func()    // what the key holder does during the grace
		status int       // the POST's outcome
		code   string    // its error code, if any
		cancel []*holder // holders that must get sign_cancel "shutdown"
	}

	// One key, two requests: one answered in the grace, one not.
	one := r.connect(t, nil)
	resA := r.signAsync(signBody(one.pub, []byte("answered"), nil))
	reqA := one.expect(protocol.TypeSignRequest)
	resB := r.signAsync(signBody(one.pub, []byte("unanswered"), nil))
	reqB := one.expect(protocol.TypeSignRequest)

	// One key on two connections, nobody answers.
	twoA := r.connect(t, nil)
	twoB := r.connect(t, twoA.priv)
	resC := r.signAsync(signBody(twoA.pub, []byte("two tabs"), nil))
	reqC := twoA.expect(protocol.TypeSignRequest)
	twoB.expect(protocol.TypeSignRequest)

	// A key holder that went away: the request waits for it to reconnect.
	gone := r.connect(t, nil)
	resD := r.signAsync(signBody(gone.pub, []byte("holder left"), nil))
	gone.expect(protocol.TypeSignRequest)
	_ = gone.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	gone.expectClose(websocket.CloseNormalClosure)

	// A key holder that declines during the grace.
	no := r.connect(t, nil)
	resE := r.signAsync(signBody(no.pub, []byte("declined"), nil))
	reqE := no.expect(protocol.TypeSignRequest)

	cases := []pendingCase{
		{name: "answered in the grace", res: resA, req: reqA, during: func() { one.approve(reqA) }, status: http.StatusOK},
		{name: "unanswered", res: resB, req: reqB, status: http.StatusServiceUnavailable, code: "unavailable", cancel: []*holder{one}},
		{name: "unanswered on two connections", res: resC, req: reqC, status: http.StatusServiceUnavailable, code: "unavailable", cancel: []*holder{twoA, twoB}},
		{name: "holder disconnected", res: resD, status: http.StatusServiceUnavailable, code: "unavailable"},
		{name: "rejected in the grace", res: resE, req: reqE, during: func() { no.reject(reqE, "no") }, status: http.StatusForbidden, code: "rejected"},
	}

	done := r.startShutdown()
	r.awaitDraining(t)
	for _, tc := range cases {
		if tc.during != nil {
			tc.during()
		}
	}
	// Every call returns, whatever its state; none waits for its own
	// 60-second deadline.
	bound := time.After(grace + wait)
	for _, tc := range cases {
		select {
		case got := <-tc.res:
			if got.TransportE != nil {
				t.Fatalf("%s: %v", tc.name, got.TransportE)
			}
			if got.Status != tc.status || got.Error.Code != tc.code {
				t.Errorf("%s: %d %q (%s), want %d %q", tc.name, got.Status, got.Error.Code, got.RawBody, tc.status, tc.code)
			}
			if tc.req != nil && got.RequestID != tc.req.str("request_id") {
				t.Errorf("%s: request_id %q, want %q", tc.name, got.RequestID, tc.req.str("request_id"))
			}
		case <-bound:
			t.Fatalf("%s: POST /sign still hanging after the shutdown grace", tc.name)
		}
	}
	for _, tc := range cases {
		for _, h := range tc.cancel {
			h.expectCancel(tc.req.str("request_id"), protocol.CancelShutdown)
		}
	}
	for _, h := range []*holder{one, twoA, twoB, no} {
		h.expectCloseNow(protocol.CloseGoingAway)
	}
	awaitShutdown(t, done)
}

// TestShutdownWhileClientsLeave closes many sockets, introduced or not, at
// the moment the relay shuts down: the relay must neither write to a socket
// its handler has already released nor wait for one that is gone.
func TestShutdownWhileClientsLeave(t *testing.T) {
	for round := 0; round < 5; round++ {
		r := startRelay(t, nil)
		var conns []*websocket.Conn
		for i := 0; i < 20; i++ {
			if i%2 == 0 {
				conns = append(conns, r.connect(t, nil).conn)
				continue
			}
			conn, _, err := r.dial(t, nil)
			if err != nil {
				t.Fatal(err)
			}
			(&holder{t: t, conn: conn}).expect(protocol.TypeChallenge)
			conns = append(conns, conn)
		}
		closed := make(chan struct{})
		for _, c := range conns {
			go func() {
				c.Close()
				closed <- struct{}{}
			}()
		}
		done := r.startShutdown()
		for range conns {
			<-closed
		}
		awaitShutdown(t, done)
	}
}

func TestShutdownTwice(t *testing.T) {
	r := startRelay(t, nil)
	h := r.connect(t, nil)
	first, second := r.startShutdown(), r.startShutdown()
	h.expectCloseNow(protocol.CloseGoingAway)
	awaitShutdown(t, first)
	awaitShutdown(t, second)
	// And once more after it has stopped (the harness does so at cleanup).
	awaitShutdown(t, r.startShutdown())
}
