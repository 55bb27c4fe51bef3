package client

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// These tests drive the client against scripted fake relays, for the
// edges the real relay (tests/client_test.go) cannot be made to show:
// proxies' pages, broken signatures, long Retry-After values.

var testKey = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))

func testPub() ed25519.PublicKey { return testKey.Public().(ed25519.PublicKey) }

// seen is one request the fake relay received.
type seen struct {
	method, path, query string
	header              http.Header
	body                map[string]any
}

// fakeRelay answers the n-th request with script[n] (the last one again
// after the end) and records what it received.
type fakeRelay struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	script []http.HandlerFunc
	got    []seen
}

func newFake(t *testing.T, script ...http.HandlerFunc) *fakeRelay {
	f := &fakeRelay{t: t, script: script}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		s := seen{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery, header: r.Header.Clone()}
		if len(raw) > 0 {
			if err := json.Unmarshal(raw, &s.body); err != nil {
				t.Errorf("body is not JSON: %q", raw)
			}
		}
		f.mu.Lock()
		n := len(f.got)
		f.got = append(f.got, s)
		h := f.script[min(n, len(f.script)-1)]
		f.mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeRelay) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.got...)
}

// client is a client of f whose waits are recorded instead of slept.
func (f *fakeRelay) client(policy RetryPolicy, opts ...Option) (*Client, *[]time.Duration) {
	var mu sync.Mutex
	waits := new([]time.Duration)
	c := New(f.srv.URL, "api-key", append([]Option{WithHTTPClient(f.srv.Client()), WithRetry(policy)}, opts...)...)
	c.sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		*waits = append(*waits, d)
		mu.Unlock()
		return ctx.Err()
	}
	return c, waits
}

func jsonAnswer(status int, body any, headers ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(body)
	}
}

func errAnswer(status int, code string, headers ...string) http.HandlerFunc {
	return jsonAnswer(status, map[string]any{"error": map[string]any{"code": code, "message": code + " happened"}, "request_id": "r-1"}, headers...)
}

func pageAnswer(status int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, "<html><body>Bad Gateway</body></html>")
	}
}

// dropAnswer closes the connection without an answer.
func dropAnswer(w http.ResponseWriter, r *http.Request) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		_ = conn.(*net.TCPConn).SetLinger(0)
		_ = conn.Close()
	}
}

func enc(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func signedAnswer(msg []byte) http.HandlerFunc {
	return jsonAnswer(http.StatusOK, map[string]any{
		"request_id": "r-1", "public_key": enc(testPub()), "message": enc(msg),
		"signature": enc(ed25519.Sign(testKey, msg)),
	})
}

func resource(status string, msg, sig []byte) map[string]any {
	m := map[string]any{
		"request_id": "6f1c2f52-3a55-4b8e-9a4e-6a1c1d1e2f30", "status": status,
		"public_key": enc(testPub()), "message": enc(msg), "description": "", "requester": "billing",
		"created_at": "2026-12-01T10:00:00Z", "expires_at": "2026-12-01T10:10:00Z",
	}
	if status != "pending" {
		m["completed_at"] = "2026-12-01T10:01:00.5Z"
	}
	if sig != nil {
		m["signature"] = enc(sig)
	}
	return m
}

var msg = []byte("invoice: 1")

func ask() SignRequest { return SignRequest{PublicKey: testPub(), Message: msg} }

var idemKeyShape = regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`)

func TestRetry503KeepsIdempotencyKey(t *testing.T) {
	f := newFake(t, errAnswer(503, "unavailable"), errAnswer(503, "unavailable", "Retry-After", "2"), signedAnswer(msg))
	c, waits := f.client(RetryPolicy{Jitter: func(d time.Duration) time.Duration { return d }})
	sig, err := c.Sign(context.Background(), ask())
	if err != nil || !ed25519.Verify(testPub(), msg, sig.Signature) {
		t.Fatalf("Sign: %+v %v", sig, err)
	}
	got := f.requests()
	if len(got) != 3 {
		t.Fatalf("%d attempts, want 3", len(got))
	}
	key := got[0].header.Get("Idempotency-Key")
	if !idemKeyShape.MatchString(key) {
		t.Fatalf("generated Idempotency-Key %q, want 22 base64url characters", key)
	}
	for i, s := range got {
		if s.header.Get("Idempotency-Key") != key || s.header.Get("Authorization") != "Bearer api-key" || s.method != "POST" || s.path != "/sign" {
			t.Fatalf("attempt %d: %+v", i+1, s)
		}
		if _, ok := s.body["wait"]; ok {
			t.Fatalf("a blocking Sign sent wait: %v", s.body)
		}
	}
	// Backoff from 200ms, then the longer of backoff and Retry-After.
	if fmt.Sprint(*waits) != "[200ms 2s]" {
		t.Fatalf("waits %v, want [200ms 2s]", *waits)
	}
	// A second call makes a key of its own.
	if _, err := c.Sign(context.Background(), ask()); err != nil {
		t.Fatal(err)
	}
	if k := f.requests()[3].header.Get("Idempotency-Key"); k == key || !idemKeyShape.MatchString(k) {
		t.Fatalf("second call's key %q (first %q)", k, key)
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	f := newFake(t, errAnswer(429, "rate_limited", "Retry-After", "7"), signedAnswer(msg))
	c, waits := f.client(RetryPolicy{})
	if _, err := c.Sign(context.Background(), ask()); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(*waits) != "[7s]" {
		t.Fatalf("waits %v, want [7s]", *waits)
	}
}

func TestRetryAfterOverBoundReturned(t *testing.T) {
	f := newFake(t, errAnswer(429, "rate_limited", "Retry-After", "120"), signedAnswer(msg))
	c, waits := f.client(RetryPolicy{})
	_, err := c.Sign(context.Background(), ask())
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrRateLimited) || e.RetryAfter != 2*time.Minute || e.Status != 429 {
		t.Fatalf("got %v, want 429 with RetryAfter 2m", err)
	}
	if len(f.requests()) != 1 || len(*waits) != 0 {
		t.Fatalf("%d attempts, waits %v; want one, none", len(f.requests()), *waits)
	}
}

func TestRetryAfterPastDeadlineReturned(t *testing.T) {
	f := newFake(t, errAnswer(429, "rate_limited", "Retry-After", "5"), signedAnswer(msg))
	c, waits := f.client(RetryPolicy{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := c.Sign(ctx, ask()); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("got %v, want ErrRateLimited at once", err)
	}
	if len(f.requests()) != 1 || len(*waits) != 0 {
		t.Fatalf("%d attempts, waits %v", len(f.requests()), *waits)
	}
}

func TestNoRetryOfOutcomesAnd4xx(t *testing.T) {
	for _, tc := range []struct {
		status int
		code   string
		want   error
	}{
		{400, "invalid_request", ErrInvalidRequest},
		{401, "unauthorized", ErrUnauthorized},
		{403, "rejected", ErrRejected},
		{404, "not_connected", ErrNotConnected},
		{404, "not_found", ErrNotFound},
		{409, "cancelled", ErrCancelled},
		{409, "not_pending", ErrNotPending},
		{413, "message_too_large", ErrMessageTooLarge},
		{422, "idempotency_key_reused", ErrIdempotencyKeyReused},
		{502, "invalid_signature", ErrInvalidSignature},
		{504, "timeout", ErrTimeout},
		{500, "internal_error", ErrUnexpectedResponse},
		{405, "method_not_allowed", ErrUnexpectedResponse},
	} {
		t.Run(tc.code, func(t *testing.T) {
			f := newFake(t, errAnswer(tc.status, tc.code), signedAnswer(msg))
			c, _ := f.client(RetryPolicy{})
			_, err := c.Sign(context.Background(), ask())
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, tc.want) || e.Status != tc.status || e.Code != tc.code || e.RequestID != "r-1" {
				t.Fatalf("got %#v, want %d %s", err, tc.status, tc.code)
			}
			if n := len(f.requests()); n != 1 {
				t.Fatalf("%d attempts, want 1", n)
			}
		})
	}
}

// A replayed 503 is a stored outcome (the relay lost the request): asking
// again gets it again.
func TestReplayedOutcomeNotRetried(t *testing.T) {
	f := newFake(t, errAnswer(503, "unavailable", "Idempotent-Replayed", "true"), signedAnswer(msg))
	c, _ := f.client(RetryPolicy{})
	_, err := c.Sign(context.Background(), ask())
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrUnavailable) || !e.Replayed || len(f.requests()) != 1 {
		t.Fatalf("got %v after %d attempts", err, len(f.requests()))
	}
}

// A proxy's 502 or 504 page is not the relay's outcome: retried.
func TestProxyPagesRetried(t *testing.T) {
	f := newFake(t, pageAnswer(502), pageAnswer(504), signedAnswer(msg))
	c, _ := f.client(RetryPolicy{})
	if _, err := c.Sign(context.Background(), ask()); err != nil {
		t.Fatal(err)
	}
	if n := len(f.requests()); n != 3 {
		t.Fatalf("%d attempts, want 3", n)
	}
	// And when they are all there is, the error says what came.
	f = newFake(t, pageAnswer(502))
	c, _ = f.client(RetryPolicy{MaxAttempts: 2})
	_, err := c.Sign(context.Background(), ask())
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrUnexpectedResponse) || e.Code != "" || !strings.Contains(e.Message, "Bad Gateway") {
		t.Fatalf("got %v", err)
	}
}

func TestAttemptsBounded(t *testing.T) {
	f := newFake(t, errAnswer(503, "unavailable"))
	var retries []Retry
	c, waits := f.client(RetryPolicy{MaxAttempts: 3, OnRetry: func(r Retry) { retries = append(retries, r) }})
	if _, err := c.Sign(context.Background(), ask()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	if len(f.requests()) != 3 || len(*waits) != 2 || len(retries) != 2 || retries[1].Attempt != 2 || !errors.Is(retries[1].Err, ErrUnavailable) {
		t.Fatalf("%d attempts, waits %v, retries %+v", len(f.requests()), *waits, retries)
	}
	// MaxAttempts 1: no retry at all.
	f = newFake(t, errAnswer(503, "unavailable"))
	c, _ = f.client(RetryPolicy{MaxAttempts: 1})
	_, _ = c.Sign(context.Background(), ask())
	if n := len(f.requests()); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
}

func TestTransportErrorRetried(t *testing.T) {
	f := newFake(t, dropAnswer, dropAnswer, signedAnswer(msg))
	c, _ := f.client(RetryPolicy{})
	sig, err := c.Sign(context.Background(), ask())
	if err != nil || sig == nil {
		t.Fatalf("Sign: %v", err)
	}
	got := f.requests()
	if len(got) != 3 || got[0].header.Get("Idempotency-Key") != got[2].header.Get("Idempotency-Key") {
		t.Fatalf("%d attempts: %+v", len(got), got)
	}
	// Spent attempts give the transport error.
	f = newFake(t, dropAnswer)
	c, _ = f.client(RetryPolicy{MaxAttempts: 2})
	_, err = c.Sign(context.Background(), ask())
	var e *Error
	if err == nil || errors.As(err, &e) || len(f.requests()) != 2 {
		t.Fatalf("got %v after %d attempts, want a transport error after 2", err, len(f.requests()))
	}
}

func TestContextEndsDuringBackoff(t *testing.T) {
	f := newFake(t, errAnswer(503, "unavailable"))
	ctx, cancel := context.WithCancel(context.Background())
	c := New(f.srv.URL, "api-key", WithHTTPClient(f.srv.Client()),
		WithRetry(RetryPolicy{MinBackoff: time.Hour, OnRetry: func(Retry) { cancel() }}))
	_, err := c.Sign(ctx, ask())
	if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %v, want context.Canceled wrapping the last 503", err)
	}
}

func TestSignatureVerified(t *testing.T) {
	other := []byte("invoice: 2")
	for name, h := range map[string]http.HandlerFunc{
		"bad signature": jsonAnswer(200, map[string]any{"request_id": "r", "public_key": enc(testPub()), "message": enc(msg), "signature": enc(make([]byte, 64))}),
		"other message": jsonAnswer(200, map[string]any{"request_id": "r", "public_key": enc(testPub()), "message": enc(other), "signature": enc(ed25519.Sign(testKey, other))}),
		"other key":     jsonAnswer(200, map[string]any{"request_id": "r", "public_key": enc(make([]byte, 32)), "message": enc(msg), "signature": enc(ed25519.Sign(testKey, msg))}),
		"short sig":     jsonAnswer(200, map[string]any{"request_id": "r", "public_key": enc(testPub()), "message": enc(msg), "signature": enc([]byte{1})}),
	} {
		t.Run(name, func(t *testing.T) {
			f := newFake(t, h)
			c, _ := f.client(RetryPolicy{})
			if sig, err := c.Sign(context.Background(), ask()); !errors.Is(err, ErrUnverifiedSignature) || sig != nil {
				t.Fatalf("got %+v %v, want ErrUnverifiedSignature", sig, err)
			}
			if n := len(f.requests()); n != 1 {
				t.Fatalf("%d attempts, want 1", n)
			}
		})
	}
	t.Run("resource", func(t *testing.T) {
		f := newFake(t, jsonAnswer(200, resource("signed", msg, make([]byte, 64))))
		c, _ := f.client(RetryPolicy{})
		if _, err := c.Get(context.Background(), "6f1c2f52-3a55-4b8e-9a4e-6a1c1d1e2f30"); !errors.Is(err, ErrUnverifiedSignature) {
			t.Fatalf("got %v, want ErrUnverifiedSignature", err)
		}
	})
	t.Run("async for another message", func(t *testing.T) {
		f := newFake(t, jsonAnswer(202, resource("signed", other, ed25519.Sign(testKey, other))))
		c, _ := f.client(RetryPolicy{})
		if _, err := c.SignAsync(context.Background(), ask()); !errors.Is(err, ErrUnverifiedSignature) {
			t.Fatalf("got %v, want ErrUnverifiedSignature", err)
		}
	})
}

func TestSignAsyncBody(t *testing.T) {
	f := newFake(t, jsonAnswer(202, resource("pending", msg, nil), "Location", "/sign/6f1c2f52-3a55-4b8e-9a4e-6a1c1d1e2f30", "Idempotent-Replayed", "true"))
	c, _ := f.client(RetryPolicy{})
	r := ask()
	r.Description, r.Timeout, r.WaitForHolder, r.IdempotencyKey = "d", 1500*time.Microsecond, true, "my-key"
	req, err := c.SignAsync(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if req.Status != StatusPending || !req.Replayed || req.Requester != "billing" || req.ExpiresAt.Sub(req.CreatedAt) != 10*time.Minute || !req.CompletedAt.IsZero() {
		t.Fatalf("resource %+v", req)
	}
	s := f.requests()[0]
	want := map[string]any{"public_key": enc(testPub()), "message": enc(msg), "description": "d", "timeout_ms": 2.0, "wait": false, "wait_for_holder": true}
	if fmt.Sprint(s.body) != fmt.Sprint(want) || s.header.Get("Idempotency-Key") != "my-key" {
		t.Fatalf("body %v key %q, want %v", s.body, s.header.Get("Idempotency-Key"), want)
	}
}

func TestResourceErrors(t *testing.T) {
	rej := resource("rejected", msg, nil)
	rej["error"] = map[string]any{"code": "rejected", "message": "the key holder declined: no", "reason": "no"}
	f := newFake(t, jsonAnswer(200, rej))
	c, _ := f.client(RetryPolicy{})
	req, err := c.Get(context.Background(), "6f1c2f52-3a55-4b8e-9a4e-6a1c1d1e2f30")
	if err != nil {
		t.Fatal(err)
	}
	var e *Error
	if !errors.As(req.Err(), &e) || !errors.Is(req.Err(), ErrRejected) || e.Status != 403 || e.Reason != "no" || e.RequestID != req.ID || req.CompletedAt.IsZero() {
		t.Fatalf("request %+v error %+v", req, e)
	}
	for _, bad := range []map[string]any{
		{"request_id": "x", "status": "weird"},
		resource("timeout", msg, nil), // no error object
		func() map[string]any { m := resource("pending", msg, nil); m["public_key"] = "AAAA"; return m }(),
		func() map[string]any { m := resource("pending", msg, nil); m["created_at"] = "yesterday"; return m }(),
	} {
		f := newFake(t, jsonAnswer(200, bad))
		c, _ := f.client(RetryPolicy{})
		if _, err := c.Get(context.Background(), "6f1c2f52-3a55-4b8e-9a4e-6a1c1d1e2f30"); !errors.Is(err, ErrUnexpectedResponse) {
			t.Fatalf("%v: got %v, want ErrUnexpectedResponse", bad, err)
		}
	}
}

// Wait asks again while pending, each time with wait_ms, shorter near the
// caller's deadline.
func TestWaitRepolls(t *testing.T) {
	pending := jsonAnswer(200, resource("pending", msg, nil))
	f := newFake(t, pending, pending, jsonAnswer(200, resource("signed", msg, ed25519.Sign(testKey, msg))))
	c, _ := f.client(RetryPolicy{}, WithLongPoll(2*time.Second))
	req, err := c.Wait(context.Background(), "6f1c2f52-3a55-4b8e-9a4e-6a1c1d1e2f30")
	if err != nil || req.Status != StatusSigned {
		t.Fatalf("Wait: %+v %v", req, err)
	}
	got := f.requests()
	if len(got) != 3 {
		t.Fatalf("%d polls, want 3", len(got))
	}
	for _, s := range got {
		if s.method != "GET" || s.path != "/sign/6f1c2f52-3a55-4b8e-9a4e-6a1c1d1e2f30" || s.query != "wait_ms=2000" {
			t.Fatalf("poll %+v", s)
		}
	}

	f = newFake(t, jsonAnswer(200, resource("cancelled", msg, nil)))
	c, _ = f.client(RetryPolicy{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = c.Wait(ctx, "6f1c2f52-3a55-4b8e-9a4e-6a1c1d1e2f30")
	var ms int
	if _, err := fmt.Sscanf(f.requests()[0].query, "wait_ms=%d", &ms); err != nil || ms > 5000 || ms < 4000 {
		t.Fatalf("query %q, want wait_ms under the 5s deadline", f.requests()[0].query)
	}
}

func TestBadBaseURL(t *testing.T) {
	for _, u := range []string{"relay.example.com", "ftp://relay.example.com", "http://", "http://%zz"} {
		c := New(u, "k")
		if _, err := c.Get(context.Background(), "x"); err == nil || strings.Contains(err.Error(), "dial") {
			t.Fatalf("%q: got %v, want a base URL error", u, err)
		}
	}
}

func TestErrorText(t *testing.T) {
	e := &Error{Status: 403, Code: "rejected", Message: "the key holder declined: no", Reason: "no", RequestID: "r-1"}
	if s := e.Error(); s != "signrelay: 403 rejected: the key holder declined: no (request r-1)" {
		t.Fatalf("Error() = %q", s)
	}
	e = &Error{Status: 429, Code: "rate_limited", Message: "slow down", RetryAfter: 3 * time.Second}
	if s := e.Error(); s != "signrelay: 429 rate_limited: slow down (retry after 3s)" {
		t.Fatalf("Error() = %q", s)
	}
	if !errors.Is(&Error{Status: 503}, ErrUnavailable) || !errors.Is(&Error{Status: 401}, ErrUnauthorized) || !errors.Is(&Error{Status: 404}, ErrUnexpectedResponse) {
		t.Fatal("status fallbacks")
	}
}
