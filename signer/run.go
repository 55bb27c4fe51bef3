package signer

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"
)

// Defaults of Options.
const (
	DefaultMinBackoff    = 250 * time.Millisecond
	DefaultMaxBackoff    = 30 * time.Second
	DefaultMaxConcurrent = 16
)

// Decision is a Handler's answer: Approve signs the request; otherwise the
// relay is sent a sign_reject with Reason (may be empty), and the backend
// gets 403 rejected.
type Decision struct {
	Approve bool
	Reason  string
}

// Handler decides one sign request. ctx carries Run's ctx values and is
// cancelled when the relay cancels the request (context.Cause is a
// *CancelError), when the connection ends, or when Run stops; the
// decision is then discarded. A handler that waits for a person must
// return when ctx is done. The relay redelivers a request that is still
// pending when the key reconnects, so a handler may see the same ID again.
type Handler func(ctx context.Context, req Request) Decision

// State is where Run's connection stands; see StateChange.
type State int

// The states reported to Options.OnState.
const (
	StateConnecting   State = iota // a dial is starting; Attempt counts failures since the last stable session
	StateConnected                 // introduced; SessionID is set
	StateDisconnected              // dial failed or session ended; Err says why, RetryIn when the next dial starts
)

// String names the state for logs: "connecting", "connected", "disconnected".
func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateDisconnected:
		return "disconnected"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// StateChange is one event of Run's connection life, for Options.OnState.
type StateChange struct {
	State     State
	Attempt   int           // consecutive failed or short-lived connections so far
	SessionID string        // StateConnected and the StateDisconnected that follows it
	Err       error         // StateDisconnected: why
	RetryIn   time.Duration // StateDisconnected: the wait before the next dial
}

// Options tunes Run. The zero value (or a nil pointer) gives the documented
// defaults.
type Options struct {
	// Dial is used for every connection. Its Logger defaults to Logger.
	Dial *DialOptions

	// MinBackoff and MaxBackoff bound the wait between connection
	// attempts: it doubles from MinBackoff with each consecutive failure up
	// to MaxBackoff, with random jitter (between half and all of it). A
	// session that stayed up for MaxBackoff resets it. A relay's
	// Retry-After (HTTP 429/503 on upgrade) is honoured when longer.
	// Defaults DefaultMinBackoff (250 ms) and DefaultMaxBackoff (30 s).
	MinBackoff, MaxBackoff time.Duration

	// MaxConcurrent bounds the handlers running at once. When it is
	// reached, further requests wait (and then the session stops reading;
	// see DialOptions.RequestBuffer). Default DefaultMaxConcurrent (16).
	MaxConcurrent int

	// Logger receives connection state changes and handler failures.
	// Nil: slog.Default().
	Logger *slog.Logger

	// OnState, when set, is called synchronously from Run's goroutine on
	// every state change; it must return quickly.
	OnState func(StateChange)
}

// Run keeps key connected to the relay at url until ctx is done, and
// answers each sign request with handler's decision, running handlers
// concurrently (at most Options.MaxConcurrent). It reconnects after any
// failure, a refused introduction included, with exponential backoff and
// jitter. It returns ctx's error once every handler has returned, or at
// once an error for arguments that can never work (bad URL or key, nil
// handler).
func Run(ctx context.Context, url string, key ed25519.PrivateKey, handler Handler, opts *Options) error {
	if handler == nil {
		return errors.New("signer: nil handler")
	}
	if len(key) != ed25519.PrivateKeySize {
		return errors.New("signer: key must be an ed25519.PrivateKey of 64 bytes")
	}
	if err := checkURL(url); err != nil {
		return err
	}
	r := newRunner(handler, opts)
	defer r.handlers.Wait()

	attempt := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		r.state(StateChange{State: StateConnecting, Attempt: attempt})
		s, err := Dial(ctx, url, key, &r.dial)
		var retryIn time.Duration
		var sessionID string
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			attempt++
			retryIn = r.backoff(attempt)
			var he *HandshakeError
			if errors.As(err, &he) && he.RetryAfter > retryIn {
				retryIn = he.RetryAfter
			}
		} else {
			sessionID = s.SessionID()
			r.state(StateChange{State: StateConnected, Attempt: attempt, SessionID: sessionID})
			start := time.Now()
			r.serve(ctx, s)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			err = s.Err()
			if time.Since(start) >= r.maxBackoff {
				attempt = 0
			}
			attempt++
			retryIn = r.backoff(attempt)
		}
		r.state(StateChange{State: StateDisconnected, Attempt: attempt, SessionID: sessionID, Err: err, RetryIn: retryIn})

		t := time.NewTimer(retryIn)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

type runner struct {
	handler                Handler
	dial                   DialOptions
	minBackoff, maxBackoff time.Duration
	sem                    chan struct{}
	log                    *slog.Logger
	onState                func(StateChange)
	handlers               sync.WaitGroup
}

func newRunner(h Handler, opts *Options) *runner {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = DefaultMaxConcurrent
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	r := &runner{
		handler:    h,
		minBackoff: o.MinBackoff,
		maxBackoff: o.MaxBackoff,
		sem:        make(chan struct{}, o.MaxConcurrent),
		log:        o.Logger,
		onState:    o.OnState,
	}
	if o.Dial != nil {
		r.dial = *o.Dial
	}
	if r.dial.Logger == nil {
		r.dial.Logger = o.Logger
	}
	return r
}

// backoff is the wait after the attempt-th consecutive failure (from 1):
// MinBackoff·2^(attempt-1) capped at MaxBackoff, then a random value
// between half of it and all of it.
func (r *runner) backoff(attempt int) time.Duration {
	return backoff(r.minBackoff, r.maxBackoff, attempt, rand.Int64N)
}

func backoff(minD, maxD time.Duration, attempt int, randN func(int64) int64) time.Duration {
	d := minD
	for i := 1; i < attempt && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	half := d / 2
	return half + time.Duration(randN(int64(d-half)+1))
}

func (r *runner) state(c StateChange) {
	switch c.State {
	case StateConnected:
		r.log.Info("signer: connected to the relay", "session_id", c.SessionID)
	case StateDisconnected:
		msg := "signer: disconnected from the relay"
		if c.SessionID == "" {
			msg = "signer: could not connect to the relay"
		}
		r.log.Warn(msg, "session_id", c.SessionID, "err", c.Err, "retry_in", c.RetryIn, "attempt", c.Attempt)
	}
	if r.onState != nil {
		r.onState(c)
	}
}

// serve hands s's requests to handlers until s ends or ctx is done, then
// closes s. Handlers still running keep going (their ctx is cancelled);
// Run waits for them before it returns.
func (r *runner) serve(ctx context.Context, s *Session) {
	defer s.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case req, ok := <-s.Requests():
			if !ok {
				return
			}
			select {
			case r.sem <- struct{}{}:
			case <-ctx.Done():
				return
			case <-s.Done():
				return
			}
			r.handlers.Go(func() {
				defer func() { <-r.sem }()
				r.handle(ctx, s, req)
			})
		}
	}
}

func (r *runner) handle(ctx context.Context, s *Session, req Request) {
	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(req.Context(), func() { cancel(context.Cause(req.Context())) })
	defer stop()

	d, ok := r.decide(hctx, req)
	if hctx.Err() != nil {
		return // cancelled, answered elsewhere or disconnected: nothing to send
	}
	var err error
	switch {
	case !ok:
		err = s.Reject(ctx, req.ID, "")
	case d.Approve:
		err = s.Approve(ctx, req.ID)
	default:
		err = s.Reject(ctx, req.ID, d.Reason)
	}
	if err != nil && !errors.Is(err, ErrNotPending) && ctx.Err() == nil {
		r.log.Warn("signer: answering a request failed", "request_id", req.ID, "err", err)
	}
}

// decide calls the handler; ok is false if it panicked, which is logged
// and answered with a reject rather than crashing the service.
func (r *runner) decide(ctx context.Context, req Request) (d Decision, ok bool) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("signer: handler panicked; rejecting the request", "request_id", req.ID, "panic", p, "stack", string(debug.Stack()))
			ok = false
		}
	}()
	return r.handler(ctx, req), true
}
