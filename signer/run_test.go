package signer

import (
	"context"
	"crypto/ed25519"
	"errors"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/signrelay/signrelay/protocol"
)

// runInBackground starts Run and returns its cancel and result channel;
// at cleanup it cancels and waits, so that no goroutine outlives the test.
func runInBackground(t *testing.T, ctx context.Context, f *fakeRelay, key ed25519.PrivateKey, h Handler, opts *Options) (context.CancelFunc, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	errc := make(chan error, 1)
	done := make(chan struct{})
	go func() { defer close(done); errc <- Run(ctx, f.url(), key, h, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitLimit):
			t.Error("Run did not return after cancel")
		}
	})
	return cancel, errc
}

func approveAll(context.Context, Request) Decision { return Decision{Approve: true} }

func TestRunReconnectsAndApproves(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	key := newKey(t)
	states := make(chan StateChange, 64)
	cancel, errc := runInBackground(t, context.Background(), f, key, approveAll, &Options{
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		OnState: func(c StateChange) { offer(states, c) },
	})

	f.next().drop()                                  // dropped: 1006
	f.next().closeWith(websocket.CloseGoingAway, "") // relay restart: 1001
	rc := f.next()
	msg := []byte("after two reconnects")
	id := rc.request(msg, "")
	resp := rc.nextFrame()
	sig, _ := protocol.DecodeBase64(resp["signature"].(string))
	if resp["type"] != protocol.TypeSignResponse || resp["request_id"] != id || !ed25519.Verify(rc.key, msg, sig) {
		t.Fatalf("holder sent %v, want a verifying sign_response for %s", resp, id)
	}
	if n := f.dials.Load(); n != 3 {
		t.Errorf("relay saw %d dials, want 3", n)
	}

	cancel()
	if err := wait(t, errc, "Run to return"); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}

	want := []struct {
		state State
		code  int
	}{
		{StateConnecting, 0}, {StateConnected, 0}, {StateDisconnected, 1006},
		{StateConnecting, 0}, {StateConnected, 0}, {StateDisconnected, 1001},
		{StateConnecting, 0}, {StateConnected, 0},
	}
	for i, w := range want {
		c := wait(t, states, "state change")
		if c.State != w.state {
			t.Fatalf("state %d = %v, want %v", i, c.State, w.state)
		}
		var ce *CloseError
		if w.code != 0 && (!errors.As(c.Err, &ce) || ce.Code != w.code) {
			t.Errorf("state %d: Err = %v, want close code %d", i, c.Err, w.code)
		}
		if c.State == StateConnected && c.SessionID == "" {
			t.Errorf("state %d: connected without a session id", i)
		}
	}
}

type ctxKey struct{}

func TestRunHandlerDecisions(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	started := make(chan string, 4)
	causes := make(chan error, 4)
	values := make(chan any, 4)
	handler := func(ctx context.Context, req Request) Decision {
		values <- ctx.Value(ctxKey{})
		switch string(req.Message) {
		case "wait":
			started <- req.ID
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return Decision{Approve: true} // too late: must not be sent
		case "panic":
			panic("boom")
		}
		return Decision{Reason: "policy says no"}
	}
	ctx := context.WithValue(context.Background(), ctxKey{}, "run value")
	cancel, errc := runInBackground(t, ctx, f, newKey(t), handler, &Options{})
	rc := f.next()

	waitID := rc.request([]byte("wait"), "")
	if got := wait(t, started, "handler start"); got != waitID {
		t.Fatalf("handler got %s", got)
	}
	if v := wait(t, values, "ctx value"); v != "run value" {
		t.Errorf("handler ctx lacks Run's values: %v", v)
	}
	rc.send(protocol.EncodeSignCancel(waitID, protocol.CancelRequesterGone))
	var ce *CancelError
	if cause := wait(t, causes, "handler cancellation"); !errors.As(cause, &ce) || ce.Reason != protocol.CancelRequesterGone {
		t.Fatalf("handler ctx cause = %v, want *CancelError requester_gone", cause)
	}

	noID := rc.request([]byte("no"), "")
	if got := rc.nextFrame(); got["type"] != protocol.TypeSignReject || got["request_id"] != noID || got["reason"] != "policy says no" {
		t.Fatalf("holder sent %v, want sign_reject with the handler's reason", got)
	}
	panicID := rc.request([]byte("panic"), "")
	if got := rc.nextFrame(); got["type"] != protocol.TypeSignReject || got["request_id"] != panicID {
		t.Fatalf("holder sent %v, want sign_reject after a handler panic", got)
	}

	cancel()
	if err := wait(t, errc, "Run to return"); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v", err)
	}
	if err := rc.waitClosed(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Errorf("relay saw %v, want a normal close when Run stops", err)
	}
	select {
	case data := <-rc.frames:
		t.Errorf("holder answered a cancelled request: %s", data)
	default:
	}
}

// The handler sees who asks, and a request its backend takes back ends the
// handler's ctx with the cause "cancelled".
func TestRunRequesterAndCancelByRequester(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	type seen struct {
		id, requester string
		expires       time.Time
	}
	got := make(chan seen, 4)
	causes := make(chan error, 4)
	handler := func(ctx context.Context, req Request) Decision {
		got <- seen{req.ID, req.Requester, req.ExpiresAt}
		if req.Requester != "billing" {
			return Decision{Reason: "only billing may ask"}
		}
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return Decision{Approve: true} // too late: must not be sent
	}
	_, _ = runInBackground(t, context.Background(), f, newKey(t), handler, &Options{})
	rc := f.next()

	id := newID()
	expires := time.Now().Add(10 * time.Minute).UTC().Truncate(time.Millisecond)
	rc.send(protocol.EncodeSignRequest(id, []byte("invoice:9"), "March", "billing", expires))
	if s := wait(t, got, "handler call"); s.id != id || s.requester != "billing" || !s.expires.Equal(expires) {
		t.Fatalf("handler got %+v, want %s from billing expiring %v", s, id, expires)
	}
	rc.send(protocol.EncodeSignCancel(id, protocol.CancelCancelled))
	var ce *CancelError
	if cause := wait(t, causes, "handler cancellation"); !errors.As(cause, &ce) || !ce.ByRequester() || ce.Reason != protocol.CancelCancelled {
		t.Fatalf("handler ctx cause = %v, want *CancelError cancelled", cause)
	}

	bare := rc.request([]byte("invoice:10"), "")
	if s := wait(t, got, "handler call"); s.id != bare || s.requester != "" {
		t.Fatalf("handler got %+v, want %s with no requester", s, bare)
	}
	if fr := rc.nextFrame(); fr["type"] != protocol.TypeSignReject || fr["request_id"] != bare || fr["reason"] != "only billing may ask" {
		t.Fatalf("holder sent %v, want sign_reject of the bare key's request", fr)
	}
	select {
	case data := <-rc.frames:
		t.Errorf("holder answered the cancelled request: %s", data)
	default:
	}
}

func TestRunBoundsConcurrency(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	var running, peak atomic.Int32
	started := make(chan struct{}, 8)
	release := make(chan struct{})
	handler := func(ctx context.Context, req Request) Decision {
		n := running.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		started <- struct{}{}
		<-release
		running.Add(-1)
		return Decision{Approve: true}
	}
	runInBackground(t, context.Background(), f, newKey(t), handler, &Options{MaxConcurrent: 2})
	rc := f.next()
	for range 3 {
		rc.request([]byte("m"), "")
	}
	wait(t, started, "first handler")
	wait(t, started, "second handler")
	close(release)
	wait(t, started, "third handler, once a slot is free")
	for range 3 {
		if got := rc.nextFrame(); got["type"] != protocol.TypeSignResponse {
			t.Fatalf("got %v", got)
		}
	}
	if p := peak.Load(); p != 2 {
		t.Errorf("peak concurrency %d, want 2", p)
	}
}

func TestRunHonoursRetryAfter(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{status: http.StatusTooManyRequests, retryAfter: "30"})
	states := make(chan StateChange, 8)
	cancel, errc := runInBackground(t, context.Background(), f, newKey(t), approveAll, &Options{
		MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond,
		OnState: func(c StateChange) { offer(states, c) },
	})
	wait(t, states, "connecting")
	c := wait(t, states, "disconnected")
	var he *HandshakeError
	if c.State != StateDisconnected || !errors.As(c.Err, &he) || c.RetryIn != 30*time.Second {
		t.Fatalf("state %+v, want disconnected with HandshakeError and RetryIn 30s", c)
	}
	cancel() // Run must stop during the wait, not after it
	if err := wait(t, errc, "Run to return"); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v", err)
	}
}

func TestRunArguments(t *testing.T) {
	key := newKey(t)
	for name, run := range map[string]func() error{
		"nil handler": func() error { return Run(context.Background(), "ws://127.0.0.1:1/ws", key, nil, nil) },
		"bad key":     func() error { return Run(context.Background(), "ws://127.0.0.1:1/ws", key[:10], approveAll, nil) },
		"bad url":     func() error { return Run(context.Background(), "https://x/ws", key, approveAll, nil) },
	} {
		if err := run(); err == nil || errors.Is(err, context.Canceled) {
			t.Errorf("%s: Run = %v, want an immediate error", name, err)
		}
	}
}

func TestBackoff(t *testing.T) {
	lowest := func(int64) int64 { return 0 }
	highest := func(n int64) int64 { return n - 1 }
	for _, tc := range []struct {
		attempt int
		full    time.Duration
	}{
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{5, time.Second},
		{1000, time.Second},
	} {
		lo := backoff(100*time.Millisecond, time.Second, tc.attempt, lowest)
		hi := backoff(100*time.Millisecond, time.Second, tc.attempt, highest)
		if lo != tc.full/2 || hi != tc.full {
			t.Errorf("attempt %d: range [%v, %v], want [%v, %v]", tc.attempt, lo, hi, tc.full/2, tc.full)
		}
	}
	var r runner
	r.minBackoff, r.maxBackoff = 10*time.Millisecond, 40*time.Millisecond
	for range 100 {
		if d := r.backoff(3); d < 20*time.Millisecond || d > 40*time.Millisecond {
			t.Fatalf("backoff(3) = %v, outside [20ms, 40ms]", d)
		}
	}
}
