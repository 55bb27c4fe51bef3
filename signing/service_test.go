package signing

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/registry"
)

// holder is a fake connection that records what the service sends it.
type holder struct {
	key    protocol.PublicKey
	priv   ed25519.PrivateKey
	id     string
	frames chan []byte
}

func (h *holder) Key() protocol.PublicKey { return h.key }
func (h *holder) SessionID() string       { return h.id }
func (h *holder) Send(f []byte) bool {
	select {
	case h.frames <- f:
		return true
	default:
		return false
	}
}

type frame struct {
	Type, RequestID, Reason, ExpiresAt string
	Message                            protocol.Bytes
}

func (h *holder) next(t *testing.T) frame {
	t.Helper()
	select {
	case raw := <-h.frames:
		var f struct {
			Type      string         `json:"type"`
			RequestID string         `json:"request_id"`
			Reason    string         `json:"reason"`
			ExpiresAt string         `json:"expires_at"`
			Message   protocol.Bytes `json:"message"`
		}
		if err := json.Unmarshal(raw, &f); err != nil {
			t.Fatal(err)
		}
		return frame{f.Type, f.RequestID, f.Reason, f.ExpiresAt, f.Message}
	case <-time.After(5 * time.Second):
		t.Fatal("no frame")
	}
	return frame{}
}

func (h *holder) quiet(t *testing.T) {
	t.Helper()
	select {
	case raw := <-h.frames:
		t.Fatalf("unexpected frame %s", raw)
	default:
	}
}

func newHolder(t *testing.T, priv ed25519.PrivateKey, id string) *holder {
	if priv == nil {
		_, priv, _ = ed25519.GenerateKey(nil)
	}
	k, _ := protocol.PublicKeyFromBytes(priv.Public().(ed25519.PublicKey))
	return &holder{key: k, priv: priv, id: id, frames: make(chan []byte, 16)}
}

// attachPair attaches two connections of one new key, as two tabs would be.
func attachPair(t *testing.T, s *Service) (a, b *holder) {
	a = newHolder(t, nil, "a")
	b = newHolder(t, a.priv, "b")
	s.Attach(a)
	s.Attach(b)
	return a, b
}

func (h *holder) answer(req frame) *protocol.SignResponse {
	return &protocol.SignResponse{RequestID: req.RequestID, Message: req.Message, Signature: ed25519.Sign(h.priv, req.Message)}
}

type result struct {
	res *Result
	err error
}

func start(s *Service, ctx context.Context, req Request) <-chan result {
	ch := make(chan result, 1)
	go func() {
		r, err := s.Sign(ctx, req)
		ch <- result{r, err}
	}()
	return ch
}

func await(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("Sign did not return")
	}
	return result{}
}

func setup(t *testing.T, opts Options) (*Service, *registry.Registry) {
	reg := registry.New(0)
	s := New(reg, opts)
	t.Cleanup(s.Close)
	return s, reg
}

func TestFirstValidAnswerWins(t *testing.T) {
	s, _ := setup(t, Options{})
	a, b := attachPair(t, s)
	ch := start(s, context.Background(), Request{Key: a.key, Message: []byte("m")})
	ra, rb := a.next(t), b.next(t)
	if ra.RequestID != rb.RequestID {
		t.Fatal("different request ids")
	}
	if fe := s.Respond(b, b.answer(rb)); fe != nil {
		t.Fatal(fe)
	}
	r := await(t, ch)
	if r.err != nil || !ed25519.Verify(a.priv.Public().(ed25519.PublicKey), []byte("m"), r.res.Signature) {
		t.Fatalf("result %+v", r)
	}
	if c := a.next(t); c.Type != protocol.TypeSignCancel || c.Reason != protocol.CancelAnsweredElsewhere {
		t.Fatalf("a got %+v", c)
	}
	b.quiet(t) // the winner gets no cancel
	if fe := s.Respond(a, a.answer(ra)); fe == nil || fe.Code != protocol.CodeUnknownRequest {
		t.Fatalf("late answer: %v", fe)
	}
	if s.Pending() != 0 {
		t.Fatalf("%d pending", s.Pending())
	}
}

func TestOutcomes(t *testing.T) {
	cases := []struct {
		name       string
		act        func(s *Service, h *holder, req frame, cancel context.CancelFunc)
		want       error
		cancelSent string
	}{
		{"reject", func(s *Service, h *holder, req frame, _ context.CancelFunc) {
			s.Reject(h, &protocol.SignReject{RequestID: req.RequestID, Reason: "no"})
		}, ErrRejected, ""},
		{"requester gone", func(s *Service, h *holder, req frame, cancel context.CancelFunc) { cancel() }, ErrRequesterGone, protocol.CancelRequesterGone},
		{"timeout", func(*Service, *holder, frame, context.CancelFunc) {}, ErrTimeout, protocol.CancelTimeout},
		{"invalid signature, only holder", func(s *Service, h *holder, req frame, _ context.CancelFunc) {
			if fe := s.Respond(h, &protocol.SignResponse{RequestID: req.RequestID, Message: req.Message, Signature: make([]byte, 64)}); fe == nil || fe.Code != protocol.CodeInvalidSignature {
				t.Errorf("error frame %v", fe)
			}
		}, ErrInvalidSignature, ""},
		{"message differs", func(s *Service, h *holder, req frame, _ context.CancelFunc) {
			other := []byte("other")
			s.Respond(h, &protocol.SignResponse{RequestID: req.RequestID, Message: other, Signature: ed25519.Sign(h.priv, other)})
		}, ErrInvalidSignature, ""},
		{"shutdown", func(s *Service, h *holder, req frame, _ context.CancelFunc) { s.Close() }, ErrShuttingDown, protocol.CancelShutdown},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := setup(t, Options{})
			h := newHolder(t, nil, "h")
			s.Attach(h)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ch := start(s, ctx, Request{Key: h.key, Message: []byte("m"), Timeout: 100 * time.Millisecond})
			req := h.next(t)
			tc.act(s, h, req, cancel)
			r := await(t, ch)
			if !errors.Is(r.err, tc.want) {
				t.Fatalf("err %v, want %v", r.err, tc.want)
			}
			if tc.cancelSent != "" {
				if c := h.next(t); c.Type != protocol.TypeSignCancel || c.Reason != tc.cancelSent || c.RequestID != req.RequestID {
					t.Fatalf("cancel %+v", c)
				}
			}
			h.quiet(t)
		})
	}
}

func TestNotConnectedAndTooManyPending(t *testing.T) {
	s, _ := setup(t, Options{MaxPendingPerKey: 2})
	h := newHolder(t, nil, "h")
	if _, err := s.Sign(context.Background(), Request{Key: h.key, Message: []byte("m")}); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("err %v", err)
	}
	s.Attach(h)
	ctx, cancel := context.WithCancel(context.Background())
	first, second := start(s, ctx, Request{Key: h.key, Message: []byte("1")}), start(s, ctx, Request{Key: h.key, Message: []byte("2")})
	h.next(t)
	h.next(t)
	if _, err := s.Sign(context.Background(), Request{Key: h.key, Message: []byte("3")}); !errors.Is(err, ErrTooManyPending) {
		t.Fatalf("third: %v", err)
	}
	cancel()
	await(t, first)
	await(t, second)
}

func TestRedeliveryAndDetach(t *testing.T) {
	s, _ := setup(t, Options{})
	a := newHolder(t, nil, "a")
	s.Attach(a)
	ch := start(s, context.Background(), Request{Key: a.key, Message: []byte("m"), Description: "d"})
	first := a.next(t)
	s.Detach(a)
	s.Detach(a) // harmless
	b := newHolder(t, a.priv, "b")
	s.Attach(b)
	again := b.next(t)
	if again.RequestID != first.RequestID || again.ExpiresAt != first.ExpiresAt {
		t.Fatalf("redelivered %+v, first %+v", again, first)
	}
	// a is gone: it can no longer answer.
	if fe := s.Respond(a, a.answer(first)); fe == nil {
		t.Fatal("a detached holder answered")
	}
	s.Respond(b, b.answer(again))
	if r := await(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
}

func TestInvalidThenDetachOfLastGood(t *testing.T) {
	s, _ := setup(t, Options{})
	a, b := attachPair(t, s)
	ch := start(s, context.Background(), Request{Key: a.key, Message: []byte("m")})
	ra := a.next(t)
	b.next(t)
	if fe := s.Respond(a, &protocol.SignResponse{RequestID: ra.RequestID, Message: ra.Message, Signature: make([]byte, 64)}); fe == nil || fe.Code != protocol.CodeInvalidSignature {
		t.Fatalf("%v", fe)
	}
	select {
	case r := <-ch:
		t.Fatalf("ended early: %+v", r)
	default:
	}
	s.Detach(b)
	if r := await(t, ch); !errors.Is(r.err, ErrInvalidSignature) {
		t.Fatalf("err %v", r.err)
	}
}

func TestDrain(t *testing.T) {
	s, _ := setup(t, Options{})
	h := newHolder(t, nil, "h")
	s.Attach(h)
	ch := start(s, context.Background(), Request{Key: h.key, Message: []byte("m")})
	req := h.next(t)
	drained := make(chan bool, 1)
	go func() { drained <- s.Drain(context.Background()) }()
	// Drain refuses new work at once, and lets the pending request finish.
	for !s.closing.Load() {
		runtime.Gosched()
	}
	if _, err := s.Sign(context.Background(), Request{Key: h.key, Message: []byte("n")}); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("new request while draining: %v", err)
	}
	s.Respond(h, h.answer(req))
	if r := await(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	if !<-drained {
		t.Fatal("Drain reported requests left")
	}
}

// The budget bounds pending requests in all and per owner, by count and by
// message bytes, and gives back what an ended request held.
func TestBudget(t *testing.T) {
	b := newBudget(Budget{MaxPending: 3, MaxPendingBytes: 100, MaxPendingPerOwner: 2, MaxPendingBytesPerOwner: 60})
	steps := []struct {
		owner string
		n     int
		ok    bool
	}{
		{"a", 30, true},
		{"a", 31, false}, // a's bytes: 61 > 60
		{"a", 30, true},
		{"a", 1, false},  // a's count: 3 > 2
		{"b", 41, false}, // all bytes: 101 > 100
		{"b", 40, true},
		{"c", 1, false}, // all count: 4 > 3
	}
	for i, s := range steps {
		if got := b.take(s.owner, s.n); got != s.ok {
			t.Fatalf("step %d: take(%s, %d) = %v, want %v", i, s.owner, s.n, got, s.ok)
		}
	}
	b.give("a", 30)
	if !b.take("c", 1) {
		t.Fatal("a freed place was not given back")
	}
	b.give("a", 30)
	b.give("b", 40)
	b.give("c", 1)
	if b.count != 0 || b.bytes != 0 || len(b.owners) != 0 {
		t.Fatalf("left over: %d requests, %d bytes, %d owners", b.count, b.bytes, len(b.owners))
	}
}

// A request over the budget is refused with ErrTooManyPending and sends
// nothing to the key's holders.
func TestBudgetRefusesSign(t *testing.T) {
	s, _ := setup(t, Options{Budget: Budget{MaxPendingPerOwner: 1}})
	h := newHolder(t, nil, "h")
	s.Attach(h)
	first := start(s, context.Background(), Request{Owner: "k1", Key: h.key, Message: []byte("1")})
	req := h.next(t)
	if _, err := s.Sign(context.Background(), Request{Owner: "k1", Key: h.key, Message: []byte("2")}); !errors.Is(err, ErrTooManyPending) {
		t.Fatalf("second request of k1: %v, want ErrTooManyPending", err)
	}
	h.quiet(t)
	other := start(s, context.Background(), Request{Owner: "k2", Key: h.key, Message: []byte("3")})
	req2 := h.next(t)
	s.Respond(h, h.answer(req))
	s.Respond(h, h.answer(req2))
	if r := await(t, first); r.err != nil {
		t.Fatal(r.err)
	}
	if r := await(t, other); r.err != nil {
		t.Fatal(r.err)
	}
}

// An asynchronous call answers with the request as made, even when the
// holder answered before the 202 was written (contract §C: status
// pending); a call that joins the request later sees it as it is then.
func TestMadeIsPendingWhenAnsweredAtOnce(t *testing.T) {
	s, _ := setup(t, Options{})
	a := newHolder(t, nil, "a")
	s.Attach(a)
	req := Request{Owner: "o", Key: a.key, Message: []byte("m"), Async: true, IdempotencyKey: "k"}
	h, err := s.Start(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if fe := s.Respond(a, a.answer(a.next(t))); fe != nil {
		t.Fatal(fe)
	}
	if _, err := s.Get(context.Background(), "o", h.ID(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := h.Record().Status; got != StatusSigned {
		t.Fatalf("Record: %s, want signed", got)
	}
	if got := h.Made().Status; got != StatusPending {
		t.Fatalf("Made: %s, want pending", got)
	}
	again, err := s.Start(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Replayed || again.Made().Status != StatusSigned {
		t.Fatalf("replay: replayed %v, %s", again.Replayed, again.Made().Status)
	}
}
