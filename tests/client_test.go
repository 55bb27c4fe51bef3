package tests

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signrelay/signrelay/client"
	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// The Go client for backends (package client) against the real relay:
// every call, every error of the contract it names, and the retries that
// keep a network blip from asking a person twice.

const clientOtherAPIKey = "client-other-api-key-0123456789abcdef"

// clientNamedKeys: testAPIKey is named "billing", clientOtherAPIKey is bare.
func clientNamedKeys(c *config.Config) {
	c.APIKeys = []config.APIKey{{Name: "billing", Key: testAPIKey}, {Key: clientOtherAPIKey}}
}

// retries records the retries a client makes.
type retries struct {
	mu   sync.Mutex
	list []client.Retry
}

func (r *retries) add(x client.Retry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, x)
}

func (r *retries) get() []client.Retry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]client.Retry(nil), r.list...)
}

// newRelayClient is a client of r with apiKey, fast retries recorded in the
// returned list, and its own connections, closed when the test ends.
func newRelayClient(t *testing.T, r *relay, apiKey string, tr *http.Transport, policy client.RetryPolicy) (*client.Client, *retries) {
	t.Helper()
	if tr == nil {
		tr = &http.Transport{}
	}
	rec := &retries{}
	if policy.MinBackoff == 0 {
		policy.MinBackoff, policy.MaxBackoff = time.Millisecond, 5*time.Millisecond
	}
	policy.OnRetry = rec.add
	hc := &http.Client{Transport: tr}
	t.Cleanup(hc.CloseIdleConnections)
	return client.New(r.base, apiKey, client.WithHTTPClient(hc), client.WithRetry(policy)), rec
}

type signOutcome struct {
	sig *client.Signature
	err error
}

func goSign(ctx context.Context, c *client.Client, req client.SignRequest) <-chan signOutcome {
	ch := make(chan signOutcome, 1)
	go func() {
		sig, err := c.Sign(ctx, req)
		ch <- signOutcome{sig, err}
	}()
	return ch
}

func awaitSignOutcome(t *testing.T, ch <-chan signOutcome) signOutcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(wait + 60*time.Second):
		t.Fatal("Sign did not return")
	}
	return signOutcome{}
}

type waitOutcome struct {
	req *client.Request
	err error
}

func goWait(ctx context.Context, c *client.Client, id string) <-chan waitOutcome {
	ch := make(chan waitOutcome, 1)
	go func() {
		r, err := c.Wait(ctx, id)
		ch <- waitOutcome{r, err}
	}()
	return ch
}

func awaitWaitOutcome(t *testing.T, ch <-chan waitOutcome) waitOutcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(wait + 60*time.Second):
		t.Fatal("Wait did not return")
	}
	return waitOutcome{}
}

// expectClientError checks that err is an *client.Error of status and
// code that matches sentinel.
func expectClientError(t *testing.T, err error, sentinel error, status int, code string) *client.Error {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v (%T), want a *client.Error %d %s", err, err, status, code)
	}
	if !errors.Is(err, sentinel) || e.Status != status || e.Code != code || e.Message == "" {
		t.Fatalf("got %+v, want %d %s matching %v", e, status, code, sentinel)
	}
	return e
}

// expectNextRequest reads the holder's next frame: a sign_request for msg.
// Used after a test's other requests ended, it proves that none of them
// was sent twice.
func expectNextRequest(t *testing.T, h *holder, msg []byte) frame {
	t.Helper()
	f := h.expect(protocol.TypeSignRequest)
	if f.str("message") != b64(msg) {
		t.Fatalf("got sign_request %v, want one for %q (a request sent twice?)", f, msg)
	}
	return f
}

// closeCheck asks a last request and checks it is the next the holder sees.
func closeCheck(t *testing.T, c *client.Client, h *holder) {
	t.Helper()
	msg := []byte("the last request of the test")
	ch := goSign(context.Background(), c, client.SignRequest{PublicKey: h.pub, Message: msg})
	h.approve(expectNextRequest(t, h, msg))
	if o := awaitSignOutcome(t, ch); o.err != nil {
		t.Fatal(o.err)
	}
}

func TestClientSignVerified(t *testing.T) {
	r := startRelay(t, clientNamedKeys)
	c, rec := newRelayClient(t, r, testAPIKey, nil, client.RetryPolicy{})
	h := r.connect(t, nil)
	msg := []byte("invoice: 42, 10.00 EUR")

	ch := goSign(context.Background(), c, client.SignRequest{PublicKey: h.pub, Message: msg, Description: "Invoice 42"})
	f := h.expect(protocol.TypeSignRequest)
	if f.str("requester") != "billing" || f.str("description") != "Invoice 42" || f.str("message") != b64(msg) {
		t.Fatalf("sign_request %v", f)
	}
	h.approve(f)
	o := awaitSignOutcome(t, ch)
	if o.err != nil {
		t.Fatal(o.err)
	}
	s := o.sig
	if s.RequestID != f.str("request_id") || !bytes.Equal(s.PublicKey, h.pub) || !bytes.Equal(s.Message, msg) || s.Replayed {
		t.Fatalf("signature %+v", s)
	}
	if !ed25519.Verify(h.pub, msg, s.Signature) {
		t.Fatal("signature does not verify")
	}
	if n := len(rec.get()); n != 0 {
		t.Fatalf("%d retries, want none", n)
	}
	closeCheck(t, c, h)
}

// Every error a blocking Sign can meet, as typed errors, none retried.
func TestClientSignErrors(t *testing.T) {
	r := startRelay(t, clientNamedKeys)
	c, rec := newRelayClient(t, r, testAPIKey, nil, client.RetryPolicy{})
	ctx := context.Background()

	t.Run("not_connected", func(t *testing.T) {
		pub, _ := newKey(t)
		_, err := c.Sign(ctx, client.SignRequest{PublicKey: pub, Message: []byte("x")})
		expectClientError(t, err, client.ErrNotConnected, http.StatusNotFound, "not_connected")
	})
	t.Run("rejected", func(t *testing.T) {
		h := r.connect(t, nil)
		ch := goSign(ctx, c, client.SignRequest{PublicKey: h.pub, Message: []byte("transfer: all of it")})
		f := h.expect(protocol.TypeSignRequest)
		h.reject(f, "not today")
		o := awaitSignOutcome(t, ch)
		e := expectClientError(t, o.err, client.ErrRejected, http.StatusForbidden, "rejected")
		if e.Reason != "not today" || e.RequestID != f.str("request_id") {
			t.Fatalf("error %+v, want reason %q and request %s", e, "not today", f.str("request_id"))
		}
		if !strings.Contains(e.Error(), "not today") {
			t.Fatalf("Error() = %q, want the reason in it", e.Error())
		}
	})
	t.Run("timeout", func(t *testing.T) {
		h := r.connect(t, nil)
		ch := goSign(ctx, c, client.SignRequest{PublicKey: h.pub, Message: []byte("x"), Timeout: 100 * time.Millisecond})
		f := h.expect(protocol.TypeSignRequest)
		h.expectCancel(f.str("request_id"), protocol.CancelTimeout)
		o := awaitSignOutcome(t, ch)
		e := expectClientError(t, o.err, client.ErrTimeout, http.StatusGatewayTimeout, "timeout")
		if e.RequestID != f.str("request_id") {
			t.Fatalf("request id %q, want %q", e.RequestID, f.str("request_id"))
		}
	})
	t.Run("unauthorized", func(t *testing.T) {
		bad, badRec := newRelayClient(t, r, "not-an-api-key-0123456789", nil, client.RetryPolicy{})
		pub, _ := newKey(t)
		_, err := bad.Sign(ctx, client.SignRequest{PublicKey: pub, Message: []byte("x")})
		expectClientError(t, err, client.ErrUnauthorized, http.StatusUnauthorized, "unauthorized")
		_, err = bad.Get(ctx, "6f1c2f52-3a55-4b8e-9a4e-6a1c1d1e2f30")
		expectClientError(t, err, client.ErrUnauthorized, http.StatusUnauthorized, "unauthorized")
		if n := len(badRec.get()); n != 0 {
			t.Fatalf("%d retries of a 401, want none", n)
		}
	})
	t.Run("invalid_request", func(t *testing.T) {
		pub, _ := newKey(t)
		_, err := c.Sign(ctx, client.SignRequest{PublicKey: pub, Message: []byte(protocol.ReservedPrefix + "introduction:x")})
		expectClientError(t, err, client.ErrInvalidRequest, http.StatusBadRequest, "invalid_request")
		_, err = c.Sign(ctx, client.SignRequest{PublicKey: pub, Message: []byte("x"), Timeout: 61 * time.Second})
		expectClientError(t, err, client.ErrInvalidRequest, http.StatusBadRequest, "invalid_request")
		_, err = c.Sign(ctx, client.SignRequest{PublicKey: pub, Message: []byte("x"), IdempotencyKey: "no spaces allowed"})
		expectClientError(t, err, client.ErrInvalidRequest, http.StatusBadRequest, "invalid_request")
		// Caught by the client itself: a key of the wrong size.
		if _, err := c.Sign(ctx, client.SignRequest{PublicKey: pub[:31], Message: []byte("x")}); !errors.Is(err, client.ErrInvalidRequest) {
			t.Fatalf("31-byte key: %v, want ErrInvalidRequest", err)
		}
	})
	t.Run("message_too_large", func(t *testing.T) {
		h := r.connect(t, nil)
		big := bytes.Repeat([]byte("a"), r.cfg.Sign.MaxMessageBytes+1)
		_, err := c.Sign(ctx, client.SignRequest{PublicKey: h.pub, Message: big})
		expectClientError(t, err, client.ErrMessageTooLarge, http.StatusRequestEntityTooLarge, "message_too_large")
		closeCheck(t, c, h)
	})
	if n := len(rec.get()); n != 0 {
		t.Fatalf("retries %+v, want none", rec.get())
	}
}

// SignAsync makes a pending resource; Wait returns as soon as it ends.
func TestClientSignAsyncWait(t *testing.T) {
	r := startRelay(t, clientNamedKeys)
	c, _ := newRelayClient(t, r, testAPIKey, nil, client.RetryPolicy{})
	h := r.connect(t, nil)
	msg := []byte("invoice: 7")
	ctx := context.Background()

	before := time.Now().Truncate(time.Second)
	req, err := c.SignAsync(ctx, client.SignRequest{PublicKey: h.pub, Message: msg, Description: "async", Timeout: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if req.Status != client.StatusPending || req.Requester != "billing" || req.Description != "async" ||
		!bytes.Equal(req.PublicKey, h.pub) || !bytes.Equal(req.Message, msg) || req.Replayed || req.Err() != nil ||
		req.CreatedAt.Before(before) || req.ExpiresAt.Sub(req.CreatedAt) < 4*time.Minute || !req.CompletedAt.IsZero() {
		t.Fatalf("resource %+v", req)
	}
	f := h.expect(protocol.TypeSignRequest)
	if f.str("request_id") != req.ID {
		t.Fatalf("holder got %s, resource is %s", f.str("request_id"), req.ID)
	}
	got, err := c.Get(ctx, req.ID)
	if err != nil || got.Status != client.StatusPending {
		t.Fatalf("Get: %+v %v", got, err)
	}

	// A long poll of a minute: if it did not return when the request
	// ends, the 20 s context would end it first.
	lp := client.New(r.base, testAPIKey, client.WithHTTPClient(r.client), client.WithLongPoll(time.Minute))
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	ch := goWait(wctx, lp, req.ID)
	h.approve(f)
	o := awaitWaitOutcome(t, ch)
	if o.err != nil {
		t.Fatal(o.err)
	}
	if o.req.Status != client.StatusSigned || !ed25519.Verify(h.pub, msg, o.req.Signature) || o.req.CompletedAt.IsZero() || o.req.Err() != nil {
		t.Fatalf("after Wait: %+v", o.req)
	}
	if again, err := c.Get(ctx, req.ID); err != nil || again.Status != client.StatusSigned || !bytes.Equal(again.Signature, o.req.Signature) {
		t.Fatalf("Get after the end: %+v %v", again, err)
	}
	closeCheck(t, c, h)
}

// Wait with a context that ends first returns the last state it saw.
func TestClientWaitContextEnds(t *testing.T) {
	r := startRelay(t, nil)
	c, _ := newRelayClient(t, r, testAPIKey, nil, client.RetryPolicy{})
	h := r.connect(t, nil)
	req, err := c.SignAsync(context.Background(), client.SignRequest{PublicKey: h.pub, Message: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	h.expect(protocol.TypeSignRequest)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	got, err := c.Wait(ctx, req.ID)
	if !errors.Is(err, context.DeadlineExceeded) || got == nil || got.Status != client.StatusPending || got.ID != req.ID {
		t.Fatalf("Wait: %+v %v, want the pending request and DeadlineExceeded", got, err)
	}
}

// A request for a key nobody holds yet reaches the holder when it connects.
func TestClientWaitForHolder(t *testing.T) {
	r := startRelay(t, nil)
	c, _ := newRelayClient(t, r, testAPIKey, nil, client.RetryPolicy{})
	pub, priv := newKey(t)
	msg := []byte("sign when you are back")
	req, err := c.SignAsync(context.Background(), client.SignRequest{PublicKey: pub, Message: msg, WaitForHolder: true, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if req.Status != client.StatusPending {
		t.Fatalf("resource %+v", req)
	}
	ch := goWait(context.Background(), c, req.ID)
	h := r.connect(t, priv)
	f := h.expect(protocol.TypeSignRequest)
	if f.str("request_id") != req.ID {
		t.Fatalf("holder got %v, want %s", f, req.ID)
	}
	h.approve(f)
	o := awaitWaitOutcome(t, ch)
	if o.err != nil || o.req.Status != client.StatusSigned || !ed25519.Verify(pub, msg, o.req.Signature) {
		t.Fatalf("Wait: %+v %v", o.req, o.err)
	}
}

func TestClientCancel(t *testing.T) {
	r := startRelay(t, nil)
	c, _ := newRelayClient(t, r, testAPIKey, nil, client.RetryPolicy{})
	h := r.connect(t, nil)
	ctx := context.Background()

	t.Run("async", func(t *testing.T) {
		req, err := c.SignAsync(ctx, client.SignRequest{PublicKey: h.pub, Message: []byte("deploy?")})
		if err != nil {
			t.Fatal(err)
		}
		f := h.expect(protocol.TypeSignRequest)
		ch := goWait(ctx, c, req.ID)
		got, err := c.Cancel(ctx, req.ID)
		if err != nil || got.Status != client.StatusCancelled || got.ID != req.ID {
			t.Fatalf("Cancel: %+v %v", got, err)
		}
		expectClientError(t, got.Err(), client.ErrCancelled, http.StatusConflict, "cancelled")
		h.expectCancel(f.str("request_id"), protocol.CancelCancelled)
		o := awaitWaitOutcome(t, ch)
		if o.err != nil || o.req.Status != client.StatusCancelled || !errors.Is(o.req.Err(), client.ErrCancelled) {
			t.Fatalf("Wait: %+v %v", o.req, o.err)
		}
		// Again: the same cancelled resource.
		if again, err := c.Cancel(ctx, req.ID); err != nil || again.Status != client.StatusCancelled {
			t.Fatalf("second Cancel: %+v %v", again, err)
		}
	})
	t.Run("blocking", func(t *testing.T) {
		ch := goSign(ctx, c, client.SignRequest{PublicKey: h.pub, Message: []byte("wait for me")})
		f := h.expect(protocol.TypeSignRequest)
		if _, err := c.Cancel(ctx, f.str("request_id")); err != nil {
			t.Fatal(err)
		}
		h.expectCancel(f.str("request_id"), protocol.CancelCancelled)
		o := awaitSignOutcome(t, ch)
		e := expectClientError(t, o.err, client.ErrCancelled, http.StatusConflict, "cancelled")
		if e.RequestID != f.str("request_id") {
			t.Fatalf("request id %q, want %q", e.RequestID, f.str("request_id"))
		}
	})
	t.Run("ended", func(t *testing.T) {
		req, err := c.SignAsync(ctx, client.SignRequest{PublicKey: h.pub, Message: []byte("sign me")})
		if err != nil {
			t.Fatal(err)
		}
		h.approve(h.expect(protocol.TypeSignRequest))
		if o, err := c.Wait(ctx, req.ID); err != nil || o.Status != client.StatusSigned {
			t.Fatalf("Wait: %+v %v", o, err)
		}
		_, err = c.Cancel(ctx, req.ID)
		e := expectClientError(t, err, client.ErrNotPending, http.StatusConflict, "not_pending")
		if e.RequestID != req.ID {
			t.Fatalf("request id %q, want %q", e.RequestID, req.ID)
		}
	})
	closeCheck(t, c, h)
}

// Another API key's request, or an unknown one, does not exist.
func TestClientNotFound(t *testing.T) {
	r := startRelay(t, clientNamedKeys)
	c, _ := newRelayClient(t, r, testAPIKey, nil, client.RetryPolicy{})
	other, _ := newRelayClient(t, r, clientOtherAPIKey, nil, client.RetryPolicy{})
	h := r.connect(t, nil)
	ctx := context.Background()

	req, err := c.SignAsync(ctx, client.SignRequest{PublicKey: h.pub, Message: []byte("mine")})
	if err != nil {
		t.Fatal(err)
	}
	h.expect(protocol.TypeSignRequest)
	_, err = other.Get(ctx, req.ID)
	expectClientError(t, err, client.ErrNotFound, http.StatusNotFound, "not_found")
	_, err = other.Wait(ctx, req.ID)
	expectClientError(t, err, client.ErrNotFound, http.StatusNotFound, "not_found")
	_, err = other.Cancel(ctx, req.ID)
	expectClientError(t, err, client.ErrNotFound, http.StatusNotFound, "not_found")
	if got, err := c.Get(ctx, req.ID); err != nil || got.Status != client.StatusPending {
		t.Fatalf("the owner's Get: %+v %v (the other key's Cancel must not touch it)", got, err)
	}
	_, err = c.Get(ctx, "0b9d6f0e-5b0a-4c61-8f55-3c0f0a4b6e21")
	expectClientError(t, err, client.ErrNotFound, http.StatusNotFound, "not_found")
	_, err = c.Get(ctx, "not-a-uuid")
	expectClientError(t, err, client.ErrInvalidRequest, http.StatusBadRequest, "invalid_request")
}

// dropDialer hands the test every connection the client opens, so that
// the test can cut one.
type dropDialer struct{ conns chan net.Conn }

func (d *dropDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		d.conns <- c
	}
	return c, err
}

func (d *dropDialer) next(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-d.conns:
		return c
	case <-time.After(wait):
		t.Fatal("the client opened no connection")
	}
	return nil
}

// A blocking Sign whose connection drops after the relay made the request
// is retried with the same idempotency key and joins that request: the
// holder is asked once, and the retry gets the signature, Replayed.
func TestClientRetryAfterDropJoinsRequest(t *testing.T) {
	r := startRelay(t, nil)
	d := &dropDialer{conns: make(chan net.Conn, 16)}
	c, rec := newRelayClient(t, r, testAPIKey, &http.Transport{DialContext: d.DialContext}, client.RetryPolicy{})
	h := r.connect(t, nil)
	msg := []byte("pay 10.00 EUR once")

	ch := goSign(context.Background(), c, client.SignRequest{PublicKey: h.pub, Message: msg})
	first := d.next(t)
	f := h.expect(protocol.TypeSignRequest) // the first attempt made the request
	first.Close()                           // and then its connection dropped
	d.next(t)                               // the retry dials again
	h.approve(f)
	o := awaitSignOutcome(t, ch)
	if o.err != nil {
		t.Fatal(o.err)
	}
	if o.sig.RequestID != f.str("request_id") || !o.sig.Replayed || !ed25519.Verify(h.pub, msg, o.sig.Signature) {
		t.Fatalf("signature %+v, want request %s, replayed", o.sig, f.str("request_id"))
	}
	rs := rec.get()
	if len(rs) != 1 || rs[0].Attempt != 1 || rs[0].Method != http.MethodPost {
		t.Fatalf("retries %+v, want one after the first attempt", rs)
	}
	var ce *client.Error
	if errors.As(rs[0].Err, &ce) {
		t.Fatalf("retried %v, want a transport error", rs[0].Err)
	}
	closeCheck(t, c, h) // the holder saw no second sign_request
}

func TestClientIdempotencyKey(t *testing.T) {
	r := startRelay(t, nil)
	c, rec := newRelayClient(t, r, testAPIKey, nil, client.RetryPolicy{})
	h := r.connect(t, nil)
	ctx := context.Background()
	ask := client.SignRequest{PublicKey: h.pub, Message: []byte("invoice: 9"), IdempotencyKey: "job-9"}

	first, err := c.SignAsync(ctx, ask)
	if err != nil {
		t.Fatal(err)
	}
	f := h.expect(protocol.TypeSignRequest)
	// The same key and request while pending: the same request, no new card.
	again, err := c.SignAsync(ctx, ask)
	if err != nil || again.ID != first.ID || !again.Replayed || first.Replayed {
		t.Fatalf("second SignAsync: %+v %v, want %s replayed", again, err, first.ID)
	}
	// The same key for another message: 422 naming the first request.
	other := ask
	other.Message = []byte("invoice: 9, but more")
	_, err = c.SignAsync(ctx, other)
	e := expectClientError(t, err, client.ErrIdempotencyKeyReused, http.StatusUnprocessableEntity, "idempotency_key_reused")
	if e.RequestID != first.ID {
		t.Fatalf("422 names %q, want %q", e.RequestID, first.ID)
	}
	// A blocking Sign with the key joins the request and gets its answer.
	ch := goSign(ctx, c, ask)
	h.approve(f)
	o := awaitSignOutcome(t, ch)
	if o.err != nil || o.sig.RequestID != first.ID || !o.sig.Replayed {
		t.Fatalf("Sign with the key: %+v %v", o.sig, o.err)
	}
	if rs := rec.get(); len(rs) != 0 {
		t.Fatalf("retries %+v, want none", rs)
	}
	closeCheck(t, c, h)
}

// With a generated key, a ctx deadline sooner than the timeout becomes the
// request's: nobody is asked to sign once the caller stopped waiting.
func TestClientSignDeadlineBoundsRequest(t *testing.T) {
	r := startRelay(t, nil)
	c, _ := newRelayClient(t, r, testAPIKey, nil, client.RetryPolicy{})
	h := r.connect(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	ch := goSign(ctx, c, client.SignRequest{PublicKey: h.pub, Message: []byte("x")})
	f := h.expect(protocol.TypeSignRequest)
	exp, err := time.Parse(time.RFC3339Nano, f.str("expires_at"))
	if err != nil {
		t.Fatal(err)
	}
	if dl, _ := ctx.Deadline(); exp.After(dl.Add(time.Second)) {
		t.Fatalf("expires_at %s, want by the caller's deadline %s", exp, dl)
	}
	h.approve(f)
	if o := awaitSignOutcome(t, ch); o.err != nil {
		t.Fatal(o.err)
	}
}

// 429 is retried after its Retry-After, with the same idempotency key; a
// Retry-After over the policy's bound is returned at once.
func TestClientRetriesRateLimit(t *testing.T) {
	r := startRelay(t, withLimits(ample, config.Limit{Rate: 1, Burst: 1}, ample))
	c, rec := newRelayClient(t, r, testAPIKey, nil, client.RetryPolicy{})
	impatient, impRec := newRelayClient(t, r, testAPIKey, nil, client.RetryPolicy{MaxRetryAfter: 500 * time.Millisecond})
	h := r.connect(t, nil)
	ctx := context.Background()

	// The burst of one.
	ch := goSign(ctx, c, client.SignRequest{PublicKey: h.pub, Message: []byte("one")})
	h.approve(expectNextRequest(t, h, []byte("one")))
	if o := awaitSignOutcome(t, ch); o.err != nil {
		t.Fatal(o.err)
	}
	// Within the second: 429 Retry-After 1, over this client's bound.
	_, err := impatient.Sign(ctx, client.SignRequest{PublicKey: h.pub, Message: []byte("two")})
	e := expectClientError(t, err, client.ErrRateLimited, http.StatusTooManyRequests, "rate_limited")
	if e.RetryAfter < time.Second {
		t.Fatalf("RetryAfter %s, want at least 1s", e.RetryAfter)
	}
	if rs := impRec.get(); len(rs) != 0 {
		t.Fatalf("retries %+v, want none", rs)
	}
	// The default bound waits the Retry-After, then the request is made.
	start := time.Now()
	ch = goSign(ctx, c, client.SignRequest{PublicKey: h.pub, Message: []byte("three")})
	h.approve(expectNextRequest(t, h, []byte("three")))
	o := awaitSignOutcome(t, ch)
	if o.err != nil {
		t.Fatal(o.err)
	}
	rs := rec.get()
	if len(rs) == 0 || !errors.Is(rs[0].Err, client.ErrRateLimited) || rs[0].Delay < time.Second {
		t.Fatalf("retries %+v, want a 429 retried after its Retry-After", rs)
	}
	if el := time.Since(start); el < time.Second {
		t.Fatalf("retried after %s, before the Retry-After", el)
	}
}

// A caller's deadline ends in the relay's 504, not in an aborted call, and
// the holder is told the request timed out.
func TestClientSignDeadlineTimesOut(t *testing.T) {
	r := startRelay(t, nil)
	c, _ := newRelayClient(t, r, testAPIKey, nil, client.RetryPolicy{})
	h := r.connect(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	ch := goSign(ctx, c, client.SignRequest{PublicKey: h.pub, Message: []byte("nobody answers")})
	f := h.expect(protocol.TypeSignRequest)
	h.expectCancel(f.str("request_id"), protocol.CancelTimeout)
	o := awaitSignOutcome(t, ch)
	expectClientError(t, o.err, client.ErrTimeout, http.StatusGatewayTimeout, "timeout")
}

// 503 (too many requests pending for the key) is retried until the key
// has room, and then the request is made once.
func TestClientRetriesUnavailable(t *testing.T) {
	r := startRelay(t, func(c *config.Config) { c.Sign.MaxPendingPerKey = 1 })
	retried := make(chan client.Retry, 1)
	hc := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(hc.CloseIdleConnections)
	c := client.New(r.base, testAPIKey, client.WithHTTPClient(hc), client.WithRetry(client.RetryPolicy{
		MaxAttempts: 100000, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		OnRetry: func(x client.Retry) {
			select {
			case retried <- x:
			default:
			}
		},
	}))
	h := r.connect(t, nil)
	ctx := context.Background()

	first, err := c.SignAsync(ctx, client.SignRequest{PublicKey: h.pub, Message: []byte("first")})
	if err != nil {
		t.Fatal(err)
	}
	f := expectNextRequest(t, h, []byte("first"))
	ch := goSign(ctx, c, client.SignRequest{PublicKey: h.pub, Message: []byte("second")})
	select {
	case x := <-retried:
		if !errors.Is(x.Err, client.ErrUnavailable) {
			t.Fatalf("retried %v, want a 503", x.Err)
		}
	case <-time.After(wait):
		t.Fatal("no retry of the 503")
	}
	h.approve(f)
	if done, err := c.Wait(ctx, first.ID); err != nil || done.Status != client.StatusSigned {
		t.Fatalf("first: %+v %v", done, err)
	}
	h.approve(expectNextRequest(t, h, []byte("second")))
	if o := awaitSignOutcome(t, ch); o.err != nil {
		t.Fatal(o.err)
	}
	closeCheck(t, c, h)
}
