package signer

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/signrelay/signrelay/protocol"
)

// dial connects key to the relay and closes the session at cleanup.
func dial(t *testing.T, f *fakeRelay, key ed25519.PrivateKey, opts *DialOptions) (*Session, *relayConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	s, err := Dial(ctx, f.url(), key, opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, f.next()
}

func nextRequest(t *testing.T, s *Session) Request {
	t.Helper()
	req, ok := <-waitChan(t, s.Requests())
	if !ok {
		t.Fatalf("Requests closed: %v", s.Err())
	}
	return req
}

// waitChan returns a channel that yields one receive from ch (with ok),
// failing the test if none comes in time.
func waitChan[T any](t *testing.T, ch <-chan T) <-chan T {
	t.Helper()
	out := make(chan T, 1)
	select {
	case v, ok := <-ch:
		if ok {
			out <- v
		} else {
			close(out)
		}
	case <-time.After(waitLimit):
		t.Fatal("timed out waiting on a channel")
	}
	return out
}

func TestDialIntroducesAndApproves(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	key := newKey(t)
	s, rc := dial(t, f, key, &DialOptions{Header: http.Header{"Origin": {"https://app.example"}}})

	if got := wait(t, f.intros, "introduction check"); !got.ok {
		t.Fatalf("relay refused the introduction: %s", got.err)
	}
	if got := wait(t, f.origins, "origin"); got != "https://app.example" {
		t.Errorf("Origin = %q, want the DialOptions header", got)
	}
	if s.SessionID() != rc.sessionID {
		t.Errorf("SessionID = %q, want %q", s.SessionID(), rc.sessionID)
	}
	if !bytes.Equal(s.PublicKey().Bytes(), key.Public().(ed25519.PublicKey)) {
		t.Errorf("PublicKey = %s, not the key's", s.PublicKey())
	}

	msg := []byte("invoice:42")
	expires := time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond)
	id := newID()
	rc.send(protocol.EncodeSignRequest(id, msg, "pay Bob", "billing", expires))

	req := nextRequest(t, s)
	if req.ID != id || !bytes.Equal(req.Message, msg) || req.Description != "pay Bob" || req.Requester != "billing" || !req.ExpiresAt.Equal(expires) {
		t.Fatalf("request = %+v, want id %s message %q description %q requester billing expires %v", req, id, msg, "pay Bob", expires)
	}
	req.Message[0] = 'X' // the caller's copy: must not change what is signed
	if err := s.Approve(context.Background(), req.ID); err != nil {
		t.Fatalf("Approve: %v", err)
	}

	resp := rc.nextFrame()
	if resp["type"] != protocol.TypeSignResponse || resp["request_id"] != id {
		t.Fatalf("holder sent %v, want a sign_response for %s", resp, id)
	}
	gotMsg, err := protocol.DecodeBase64(resp["message"].(string))
	if err != nil || !bytes.Equal(gotMsg, msg) {
		t.Fatalf("sign_response message = %q (%v), want the requested bytes %q", gotMsg, err, msg)
	}
	sig, err := protocol.DecodeBase64(resp["signature"].(string))
	if err != nil || !ed25519.Verify(rc.key, msg, sig) {
		t.Fatalf("sign_response signature does not verify (%v)", err)
	}

	if err := context.Cause(req.Context()); !errors.Is(err, ErrAnswered) {
		t.Errorf("request context cause = %v, want ErrAnswered", err)
	}
	if err := s.Approve(context.Background(), req.ID); !errors.Is(err, ErrNotPending) {
		t.Errorf("second Approve = %v, want ErrNotPending", err)
	}
	if err := s.Reject(context.Background(), "no-such-id", ""); !errors.Is(err, ErrNotPending) {
		t.Errorf("Reject of an unknown id = %v, want ErrNotPending", err)
	}
}

func TestReject(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	s, rc := dial(t, f, newKey(t), nil)

	id := rc.request([]byte("transfer 1000"), "")
	req := nextRequest(t, s)
	if req.Requester != "" {
		t.Errorf("Requester = %q for a request of a bare API key, want empty", req.Requester)
	}
	if err := s.Reject(context.Background(), req.ID, "not today"); err != nil {
		t.Fatalf("Reject: %v", err)
	}
	got := rc.nextFrame()
	if got["type"] != protocol.TypeSignReject || got["request_id"] != id || got["reason"] != "not today" {
		t.Fatalf("holder sent %v, want sign_reject for %s with the reason", got, id)
	}
	if err := s.Approve(context.Background(), id); !errors.Is(err, ErrNotPending) {
		t.Errorf("Approve after Reject = %v, want ErrNotPending", err)
	}
}

func TestSignCancelCancelsRequest(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	s, rc := dial(t, f, newKey(t), nil)

	id := rc.request([]byte("a"), "")
	req := nextRequest(t, s)
	if req.CancelReason() != "" || req.Context().Err() != nil {
		t.Fatal("request cancelled before any sign_cancel")
	}
	rc.send(protocol.EncodeSignCancel(id, protocol.CancelTimeout))

	wait(t, req.Context().Done(), "request context to be cancelled")
	var ce *CancelError
	if !errors.As(context.Cause(req.Context()), &ce) || ce.RequestID != id || ce.Reason != protocol.CancelTimeout {
		t.Fatalf("cause = %v, want *CancelError{%s, timeout}", context.Cause(req.Context()), id)
	}
	if req.CancelReason() != protocol.CancelTimeout {
		t.Errorf("CancelReason = %q", req.CancelReason())
	}
	if c := wait(t, s.Cancels(), "Cancels"); c != (Cancel{RequestID: id, Reason: protocol.CancelTimeout}) {
		t.Errorf("Cancels gave %+v", c)
	}
	if err := s.Approve(context.Background(), id); !errors.Is(err, ErrNotPending) {
		t.Errorf("Approve after sign_cancel = %v, want ErrNotPending", err)
	}

	// A cancel that arrives while the request is still queued is visible
	// when the program takes it.
	id2 := rc.request([]byte("b"), "")
	rc.send(protocol.EncodeSignCancel(id2, protocol.CancelAnsweredElsewhere))
	wait(t, s.Cancels(), "second cancel")
	req2 := nextRequest(t, s)
	if req2.ID != id2 || req2.Context().Err() == nil || req2.CancelReason() != protocol.CancelAnsweredElsewhere {
		t.Errorf("queued request %s: err %v reason %q, want cancelled answered_elsewhere", req2.ID, req2.Context().Err(), req2.CancelReason())
	}
	if errors.As(context.Cause(req2.Context()), &ce) && ce.ByRequester() {
		t.Errorf("answered_elsewhere counts as cancelled by the requester")
	}
}

// A backend that takes its request back (DELETE /sign/{id}) makes the relay
// send sign_cancel "cancelled": known, told apart from the relay's reasons.
func TestSignCancelByRequester(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	s, rc := dial(t, f, newKey(t), nil)

	id := newID()
	// An asynchronous request: ten minutes to its deadline.
	expires := time.Now().Add(10 * time.Minute).UTC().Truncate(time.Millisecond)
	rc.send(protocol.EncodeSignRequest(id, []byte("invoice:7"), "", "billing", expires))
	req := nextRequest(t, s)
	if req.Requester != "billing" || !req.ExpiresAt.Equal(expires) {
		t.Fatalf("request = %+v, want requester billing expiring %v", req, expires)
	}
	rc.send(protocol.EncodeSignCancel(id, protocol.CancelCancelled))

	wait(t, req.Context().Done(), "request context to be cancelled")
	var ce *CancelError
	if !errors.As(context.Cause(req.Context()), &ce) || ce.RequestID != id || ce.Reason != protocol.CancelCancelled {
		t.Fatalf("cause = %v, want *CancelError{%s, cancelled}", context.Cause(req.Context()), id)
	}
	if !ce.ByRequester() {
		t.Error("ByRequester = false for reason cancelled")
	}
	if got, want := ce.Error(), "signer: request "+id+" cancelled by the relay (cancelled: the backend that asked cancelled it)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if req.CancelReason() != protocol.CancelCancelled {
		t.Errorf("CancelReason = %q, want cancelled", req.CancelReason())
	}
	if c := wait(t, s.Cancels(), "Cancels"); c != (Cancel{RequestID: id, Reason: protocol.CancelCancelled}) {
		t.Errorf("Cancels gave %+v", c)
	}
	if err := s.Approve(context.Background(), id); !errors.Is(err, ErrNotPending) {
		t.Errorf("Approve after a cancel by the requester = %v, want ErrNotPending", err)
	}

	// A reason from a newer relay is passed on as it came.
	id2 := rc.request([]byte("b"), "")
	nextRequest(t, s)
	rc.send(protocol.EncodeSignCancel(id2, "moved_to_the_moon"))
	if c := wait(t, s.Cancels(), "second cancel"); c.Reason != "moved_to_the_moon" {
		t.Errorf("Cancels gave %+v", c)
	}
	if got := (&CancelError{RequestID: id2, Reason: "moved_to_the_moon"}).Error(); got != "signer: request "+id2+" cancelled by the relay (moved_to_the_moon)" {
		t.Errorf("Error() of an unknown reason = %q", got)
	}
}

func TestErrorFramesAreReported(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	s, rc := dial(t, f, newKey(t), nil)

	id := newID()
	rc.send(protocol.EncodeError(protocol.CodeUnknownRequest, "no such request", id))
	rc.send(protocol.EncodeError(protocol.CodeMalformedFrame, "bad", ""))
	e := wait(t, s.Errors(), "first error")
	if e.Code != protocol.CodeUnknownRequest || e.Message != "no such request" || e.RequestID != id {
		t.Errorf("Errors gave %+v", e)
	}
	if e := wait(t, s.Errors(), "second error"); e.Code != protocol.CodeMalformedFrame || e.RequestID != "" {
		t.Errorf("Errors gave %+v", e)
	}
	// Error frames do not end the session; unknown frame types are ignored.
	rc.send([]byte(`{"type":"from_the_future","x":1}`))
	rc.request([]byte("still here"), "")
	if req := nextRequest(t, s); string(req.Message) != "still here" {
		t.Errorf("got request %q", req.Message)
	}
}

func TestEventChannelsDropOldestWhenFull(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	s, rc := dial(t, f, newKey(t), &DialOptions{EventBuffer: 2})
	for _, code := range []string{"a", "b", "c"} {
		rc.send(protocol.EncodeError(code, "", ""))
	}
	// A request after the errors proves the reader got past a full channel.
	rc.request([]byte("m"), "")
	nextRequest(t, s)
	if a, b := wait(t, s.Errors(), "error"), wait(t, s.Errors(), "error"); a.Code != "b" || b.Code != "c" {
		t.Errorf("kept %s, %s; want the newest two (b, c)", a.Code, b.Code)
	}
}

func TestIntroductionRefused(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{refuseIntro: true})
	_, err := Dial(context.Background(), f.url(), newKey(t), nil)
	var ie *IntroductionError
	if !errors.As(err, &ie) {
		t.Fatalf("Dial = %v, want *IntroductionError", err)
	}
	if ie.Code != protocol.CodeIntroductionFailed || ie.CloseCode != protocol.CloseIntroductionFailed || ie.Message == "" {
		t.Errorf("IntroductionError = %+v, want code introduction_failed, close 4401 and a message", ie)
	}
	if got := wait(t, f.intros, "introduction check"); got.err != "refused by configuration" {
		t.Errorf("the introduction itself should have verified; relay said %q", got.err)
	}
}

func TestDialRefusesBadChallenge(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{badNonce: true})
	_, err := Dial(context.Background(), f.url(), newKey(t), nil)
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("Dial with a 16-byte nonce = %v, want ErrProtocol", err)
	}
}

func TestDialHandshakeRefused(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{status: http.StatusTooManyRequests, retryAfter: "3"})
	_, err := Dial(context.Background(), f.url(), newKey(t), nil)
	var he *HandshakeError
	if !errors.As(err, &he) {
		t.Fatalf("Dial = %v, want *HandshakeError", err)
	}
	if he.StatusCode != 429 || he.Code != "rate_limited" || he.Message != "slow down" || he.RetryAfter != 3*time.Second {
		t.Errorf("HandshakeError = %+v", he)
	}
}

func TestDialHonoursContext(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{silent: true})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := Dial(ctx, f.url(), newKey(t), nil)
		errc <- err
	}()
	wait(t, f.upgrade, "upgrade")
	cancel()
	if err := wait(t, errc, "Dial to return"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial = %v, want context.Canceled", err)
	}

	// HandshakeTimeout bounds a relay that never sends its challenge.
	_, err := Dial(context.Background(), f.url(), newKey(t), &DialOptions{HandshakeTimeout: 50 * time.Millisecond})
	if err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("Dial with a silent relay = %v, want a timeout", err)
	}
}

func TestDialArguments(t *testing.T) {
	key := newKey(t)
	for _, tc := range []struct {
		name string
		url  string
		key  ed25519.PrivateKey
	}{
		{"http scheme", "http://127.0.0.1:1/ws", key},
		{"no host", "ws:///ws", key},
		{"short key", "ws://127.0.0.1:1/ws", key[:32]},
	} {
		if _, err := Dial(context.Background(), tc.url, tc.key, nil); err == nil {
			t.Errorf("%s: Dial succeeded", tc.name)
		}
	}
}

func TestRelayEndsSession(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(*relayConn)
		code int
	}{
		{"shutdown", func(rc *relayConn) { rc.closeWith(websocket.CloseGoingAway, "shutting down") }, 1001},
		{"policy", func(rc *relayConn) { rc.closeWith(websocket.ClosePolicyViolation, "") }, 1008},
		{"too big", func(rc *relayConn) { rc.closeWith(websocket.CloseMessageTooBig, "") }, 1009},
		{"dropped", func(rc *relayConn) { rc.drop() }, 1006},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkGoroutines(t)
			f := newRelay(t, relayConfig{})
			s, rc := dial(t, f, newKey(t), nil)
			rc.request([]byte("pending"), "")
			req := nextRequest(t, s)

			tc.end(rc)
			wait(t, s.Done(), "session end")
			var ce *CloseError
			if !errors.As(s.Err(), &ce) || ce.Code != tc.code {
				t.Fatalf("Err = %v, want *CloseError with code %d", s.Err(), tc.code)
			}
			if !errors.Is(context.Cause(req.Context()), s.Err()) {
				t.Errorf("pending request cause = %v, want the session's error", context.Cause(req.Context()))
			}
			if _, ok := <-s.Requests(); ok {
				t.Error("Requests not closed")
			}
			if err := s.Approve(context.Background(), req.ID); !errors.Is(err, s.Err()) {
				t.Errorf("Approve after the end = %v, want the session's error", err)
			}
			if err := s.Close(); err != nil {
				t.Errorf("Close after the end = %v", err)
			}
			if !errors.As(s.Err(), &ce) {
				t.Errorf("Close changed Err to %v", s.Err())
			}
		})
	}
}

func TestReadLimit(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	s, rc := dial(t, f, newKey(t), &DialOptions{ReadLimit: 1024})
	rc.request(bytes.Repeat([]byte("x"), 2048), "")
	wait(t, s.Done(), "session end")
	var ce *CloseError
	if !errors.As(s.Err(), &ce) || ce.Code != 1009 || !errors.Is(s.Err(), websocket.ErrReadLimit) {
		t.Fatalf("Err = %v, want CloseError 1009 wrapping ErrReadLimit", s.Err())
	}
	if err := rc.waitClosed(); !websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
		t.Errorf("relay saw %v, want close 1009", err)
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	s, rc := dial(t, f, newKey(t), nil)
	rc.request([]byte("m"), "")
	req := nextRequest(t, s)

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close = %v", err)
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Errorf("Close again = %v", err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Close returned")
	}
	if !errors.Is(s.Err(), ErrClosed) {
		t.Errorf("Err = %v, want ErrClosed", s.Err())
	}
	if !errors.Is(context.Cause(req.Context()), ErrClosed) {
		t.Errorf("request cause = %v, want ErrClosed", context.Cause(req.Context()))
	}
	if err := s.Approve(context.Background(), req.ID); !errors.Is(err, ErrClosed) {
		t.Errorf("Approve after Close = %v, want ErrClosed", err)
	}
	if err := rc.waitClosed(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Errorf("relay saw %v, want a normal close (1000)", err)
	}
}

func TestCloseWithFullRequestQueue(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	s, rc := dial(t, f, newKey(t), &DialOptions{RequestBuffer: 1})
	for range 3 {
		rc.request([]byte("m"), "")
	}
	// Nobody reads Requests: the reader is blocked on the second request.
	// Close must still return, and the queued request must be cancelled.
	done := make(chan struct{})
	go func() { _ = s.Close(); close(done) }()
	wait(t, done, "Close with a blocked reader")
	if req, ok := <-s.Requests(); ok && req.Context().Err() == nil {
		t.Error("queued request not cancelled by Close")
	}
}

func TestApproveHonoursContextAndKeepsRequest(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	s, rc := dial(t, f, newKey(t), nil)
	id := rc.request([]byte("m"), "")
	nextRequest(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Approve(ctx, id); !errors.Is(err, context.Canceled) {
		t.Fatalf("Approve with a done ctx = %v", err)
	}
	if err := s.Approve(context.Background(), id); err != nil {
		t.Fatalf("the request should still be pending: %v", err)
	}
	if got := rc.nextFrame(); got["type"] != protocol.TypeSignResponse {
		t.Fatalf("got %v", got)
	}
}

func TestReservedPrefixIsNeverSigned(t *testing.T) {
	checkGoroutines(t)
	f := newRelay(t, relayConfig{})
	s, rc := dial(t, f, newKey(t), nil)
	nonce := make([]byte, protocol.NonceSize)
	evil := rc.request(protocol.IntroductionMessage(nonce), "")
	got := rc.nextFrame()
	if got["type"] != protocol.TypeSignReject || got["request_id"] != evil {
		t.Fatalf("holder sent %v, want an automatic sign_reject", got)
	}
	rc.request([]byte("fine"), "")
	if req := nextRequest(t, s); string(req.Message) != "fine" {
		t.Fatalf("the reserved request reached the program: %q", req.Message)
	}
}

func TestKeepAlive(t *testing.T) {
	t.Run("pings both ways", func(t *testing.T) {
		checkGoroutines(t)
		f := newRelay(t, relayConfig{})
		s, rc := dial(t, f, newKey(t), &DialOptions{KeepAlive: 50 * time.Millisecond})
		wait(t, rc.pings, "a keep-alive ping from the holder")
		if err := rc.ws.WriteControl(websocket.PingMessage, []byte("relay-ping"), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		if got := wait(t, rc.pongs, "the holder's pong"); got != "relay-ping" {
			t.Errorf("pong carried %q", got)
		}
		select {
		case <-s.Done():
			t.Fatalf("session ended: %v", s.Err())
		default:
		}
	})
	t.Run("dead relay", func(t *testing.T) {
		checkGoroutines(t)
		f := newRelay(t, relayConfig{noRead: true})
		s, _ := dial(t, f, newKey(t), &DialOptions{KeepAlive: 20 * time.Millisecond})
		wait(t, s.Done(), "the session to notice the silent relay")
		var ce *CloseError
		var ne net.Error
		if !errors.As(s.Err(), &ce) || ce.Code != 1006 || !errors.As(s.Err(), &ne) || !ne.Timeout() {
			t.Fatalf("Err = %v, want CloseError 1006 wrapping a timeout", s.Err())
		}
	})
}

func TestParsePrivateKey(t *testing.T) {
	key := newKey(t)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	bad := bytes.Clone(key)
	bad[40] ^= 1
	for _, tc := range []struct {
		name string
		data []byte
		ok   bool
	}{
		{"pkcs8 pem", pemKey, true},
		{"base64 seed", []byte(base64.StdEncoding.EncodeToString(key.Seed()) + "\n"), true},
		{"base64 key", []byte(base64.StdEncoding.EncodeToString(key)), true},
		{"raw seed", key.Seed(), true},
		{"raw key", key, true},
		{"mismatched halves", bad, false},
		{"rsa-ish pem", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte{1}}), false},
		{"garbage", []byte("hello"), false},
	} {
		got, err := ParsePrivateKey(tc.data)
		if tc.ok && (err != nil || !bytes.Equal(got, key)) {
			t.Errorf("%s: got %v, want the key", tc.name, err)
		}
		if !tc.ok && err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}

	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadPrivateKey(path); err != nil || !bytes.Equal(got, key) {
		t.Errorf("LoadPrivateKey = %v", err)
	}
	if _, err := LoadPrivateKey(path + ".missing"); err == nil {
		t.Error("LoadPrivateKey of a missing file succeeded")
	}
}
