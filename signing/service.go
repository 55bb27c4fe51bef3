// Package signing runs sign requests: it sends each to every live connection
// of the key, waits for the first valid answer, a rejection, the deadline or
// the caller's cancellation, and tells the other connections when a request
// ends without their answer.
package signing

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/registry"
)

// Directory is where the service finds the live connections of a key. The
// local *registry.Registry is one; a multi-node deployment can put a
// directory here whose holders forward frames to another node.
type Directory interface {
	Add(h registry.Holder)
	Remove(h registry.Holder) bool
	Holders(k protocol.PublicKey) []registry.Holder
}

// Options configures a Service. Zero fields take the defaults named.
type Options struct {
	// DefaultTimeout applies when a request names none. Default 60s.
	DefaultTimeout time.Duration
	// MaxTimeout caps every request's timeout. Default 60s.
	MaxTimeout time.Duration
	// MaxPendingPerKey bounds concurrent requests per key. Default 64.
	MaxPendingPerKey int
	// Logger receives events; the default discards them.
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.DefaultTimeout <= 0 {
		o.DefaultTimeout = 60 * time.Second
	}
	if o.MaxTimeout <= 0 {
		o.MaxTimeout = 60 * time.Second
	}
	if o.DefaultTimeout > o.MaxTimeout {
		o.DefaultTimeout = o.MaxTimeout
	}
	if o.MaxPendingPerKey <= 0 {
		o.MaxPendingPerKey = 64
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Request is one sign request from a backend.
type Request struct {
	// ID names the request on the wire and in logs; a new UUID when empty.
	ID          string
	Key         protocol.PublicKey
	Message     []byte
	Description string
	// Timeout bounds the wait; zero means Options.DefaultTimeout, and it is
	// capped at Options.MaxTimeout.
	Timeout time.Duration
}

// Result is a verified signature.
type Result struct {
	RequestID string
	Signature []byte
}

const shardCount = 64

// Service is safe for concurrent use. Its locks guard maps only; frames are
// queued to holders after the locks are released.
type Service struct {
	dir  Directory
	opts Options
	log  *slog.Logger

	closing atomic.Bool
	pending atomic.Int64
	drained chan struct{} // signalled when pending reaches zero while closing

	shards [shardCount]shard
}

type shard struct {
	mu sync.Mutex
	// guards the following field and the recipients, failed and finished
	// fields of every pending request whose key falls in this shard
	byKey map[protocol.PublicKey][]*pending
}

type outcome struct {
	sig []byte
	err error
}

// pending is one request in flight. Its immutable fields are set before it
// is published; the rest is guarded by its shard's mutex.
type pending struct {
	id      uuid.UUID
	idStr   string
	key     protocol.PublicKey
	message []byte
	frame   []byte       // the encoded sign_request, shared by every recipient
	done    chan outcome // buffered to one; filled exactly once, by finish

	recipients []registry.Holder // live holders that received the request
	failed     []registry.Holder // recipients whose answer did not verify
	finished   bool
}

// New returns a Service that finds key holders in dir.
func New(dir Directory, opts Options) *Service {
	opts.setDefaults()
	s := &Service{dir: dir, opts: opts, log: opts.Logger, drained: make(chan struct{}, 1)}
	for i := range s.shards {
		s.shards[i].byKey = make(map[protocol.PublicKey][]*pending)
	}
	return s
}

func (s *Service) shardOf(k protocol.PublicKey) *shard {
	b := k.Array()
	return &s.shards[binary.LittleEndian.Uint64(b[8:16])%shardCount]
}

// Sign sends req to every live connection of req.Key and waits for the first
// valid signature, a rejection, the deadline, or ctx's cancellation (which
// means the requester went away). Errors are the sentinels of this package.
func (s *Service) Sign(ctx context.Context, req Request) (*Result, error) {
	if s.closing.Load() {
		return nil, ErrShuttingDown
	}
	id := uuid.New()
	if req.ID != "" {
		parsed, err := uuid.Parse(req.ID)
		if err != nil {
			return nil, err
		}
		id = parsed
	}
	timeout := req.Timeout
	if timeout <= 0 {
		timeout = s.opts.DefaultTimeout
	}
	timeout = min(timeout, s.opts.MaxTimeout)
	expires := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(expires) {
		expires = d
	}
	ctx, cancel := context.WithDeadline(ctx, expires)
	defer cancel()

	p := &pending{
		id: id, idStr: id.String(), key: req.Key, message: req.Message,
		done: make(chan outcome, 1),
	}
	p.frame = protocol.EncodeSignRequest(p.idStr, req.Message, req.Description, expires)

	sh := s.shardOf(req.Key)
	sh.mu.Lock()
	if s.closing.Load() {
		sh.mu.Unlock()
		return nil, ErrShuttingDown
	}
	holders := s.dir.Holders(req.Key)
	if len(holders) == 0 {
		sh.mu.Unlock()
		return nil, ErrNotConnected
	}
	if len(sh.byKey[req.Key]) >= s.opts.MaxPendingPerKey {
		sh.mu.Unlock()
		return nil, ErrTooManyPending
	}
	sh.byKey[req.Key] = append(sh.byKey[req.Key], p)
	p.recipients = append(make([]registry.Holder, 0, len(holders)), holders...)
	s.pending.Add(1)
	sh.mu.Unlock()

	for _, h := range holders {
		h.Send(p.frame)
	}

	select {
	case o := <-p.done:
		return o.result(p)
	case <-ctx.Done():
	}
	err, reason := ErrRequesterGone, protocol.CancelRequesterGone
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err, reason = ErrTimeout, protocol.CancelTimeout
	}
	s.finish(p, outcome{err: err}, reason, nil)
	// Whoever finished first filled done: an answer that raced the deadline wins.
	return (<-p.done).result(p)
}

func (o outcome) result(p *pending) (*Result, error) {
	if o.err != nil {
		return nil, o.err
	}
	return &Result{RequestID: p.idStr, Signature: o.sig}, nil
}

// finish ends p once: it records the outcome, removes p from the pending
// set and sends sign_cancel with reason to every recipient but except.
func (s *Service) finish(p *pending, o outcome, reason string, except registry.Holder) bool {
	sh := s.shardOf(p.key)
	sh.mu.Lock()
	if p.finished {
		sh.mu.Unlock()
		return false
	}
	p.finished = true
	sh.removeLocked(p)
	recipients := p.recipients
	sh.mu.Unlock()

	p.done <- o
	if s.pending.Add(-1) == 0 && s.closing.Load() {
		select {
		case s.drained <- struct{}{}:
		default:
		}
	}
	if reason == "" {
		return true
	}
	var cancel []byte
	for _, h := range recipients {
		if h == except {
			continue
		}
		if cancel == nil {
			cancel = protocol.EncodeSignCancel(p.idStr, reason)
		}
		h.Send(cancel)
	}
	return true
}

func (sh *shard) removeLocked(p *pending) {
	list := sh.byKey[p.key]
	for i, x := range list {
		if x == p {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(sh.byKey, p.key)
	} else {
		sh.byKey[p.key] = list
	}
}

// lookupLocked finds the request id pending for h, or nil.
func (sh *shard) lookupLocked(h registry.Holder, id uuid.UUID) *pending {
	for _, p := range sh.byKey[h.Key()] {
		if p.id == id {
			if contains(p.recipients, h) && !contains(p.failed, h) {
				return p
			}
			return nil
		}
	}
	return nil
}

func contains(list []registry.Holder, h registry.Holder) bool {
	for _, x := range list {
		if x == h {
			return true
		}
	}
	return false
}

func without(list []registry.Holder, h registry.Holder) []registry.Holder {
	for i, x := range list {
		if x == h {
			out := make([]registry.Holder, 0, len(list)-1)
			out = append(out, list[:i]...)
			return append(out, list[i+1:]...)
		}
	}
	return list
}

// exhaustedLocked reports whether no live holder of p's key is left that may
// still answer: at least one is live, and every live one gave a bad answer.
// With none live the request waits for the key to reconnect.
func (s *Service) exhaustedLocked(p *pending) bool {
	live := s.dir.Holders(p.key)
	if len(live) == 0 {
		return false
	}
	for _, h := range live {
		if !contains(p.failed, h) {
			return false
		}
	}
	return true
}

func unknownRequest(id string) *protocol.FrameError {
	return &protocol.FrameError{Code: protocol.CodeUnknownRequest, Message: "no request with this request_id is pending for this connection", RequestID: id}
}

// pendingFor finds the request requestID that h may still answer, or the
// unknown_request error to send back.
func (s *Service) pendingFor(h registry.Holder, requestID string) (*pending, *protocol.FrameError) {
	id, err := uuid.Parse(requestID)
	if err != nil {
		return nil, unknownRequest(requestID)
	}
	sh := s.shardOf(h.Key())
	sh.mu.Lock()
	p := sh.lookupLocked(h, id)
	sh.mu.Unlock()
	if p == nil {
		return nil, unknownRequest(requestID)
	}
	return p, nil
}

// Respond handles a sign_response from h. It returns the error frame to send
// back to h, or nil. A valid signature ends the request; an invalid one ends
// it only when no other live connection of the key may still answer.
func (s *Service) Respond(h registry.Holder, f *protocol.SignResponse) *protocol.FrameError {
	p, ferr := s.pendingFor(h, f.RequestID)
	if ferr != nil {
		return ferr
	}
	sh := s.shardOf(h.Key())
	// p.message is immutable: verify without the lock.
	if bytes.Equal(f.Message, p.message) && h.Key().Verify(p.message, f.Signature) {
		sig := append([]byte(nil), f.Signature...)
		if !s.finish(p, outcome{sig: sig}, protocol.CancelAnsweredElsewhere, h) {
			s.log.Debug("late answer", "request_id", p.idStr, "session", h.SessionID())
		}
		return nil
	}
	what := "signature does not verify against the public key and message"
	if !bytes.Equal(f.Message, p.message) {
		what = "message differs from the requested message"
	}
	s.log.Warn("invalid sign_response", "request_id", p.idStr, "key", h.Key().ShortString(), "session", h.SessionID(), "why", what)

	sh.mu.Lock()
	exhausted := false
	if !p.finished {
		p.failed = append(p.failed, h)
		exhausted = s.exhaustedLocked(p)
	}
	sh.mu.Unlock()
	if exhausted {
		s.finish(p, outcome{err: ErrInvalidSignature}, protocol.CancelAnsweredElsewhere, h)
	}
	return &protocol.FrameError{Code: protocol.CodeInvalidSignature, Message: what, RequestID: p.idStr}
}

// Reject handles a sign_reject from h: the key holder said no, which ends
// the request for every connection of the key.
func (s *Service) Reject(h registry.Holder, f *protocol.SignReject) *protocol.FrameError {
	p, ferr := s.pendingFor(h, f.RequestID)
	if ferr != nil {
		return ferr
	}
	s.finish(p, outcome{err: &RejectedError{Reason: f.Reason}}, protocol.CancelAnsweredElsewhere, h)
	return nil
}

// Attach registers an introduced holder and hands it every request still
// pending for its key, with the same request_id and expires_at.
func (s *Service) Attach(h registry.Holder) {
	sh := s.shardOf(h.Key())
	sh.mu.Lock()
	s.dir.Add(h)
	var frames [][]byte
	for _, p := range sh.byKey[h.Key()] {
		if !contains(p.recipients, h) {
			p.recipients = append(p.recipients, h)
			frames = append(frames, p.frame)
		}
	}
	sh.mu.Unlock()
	for _, f := range frames {
		h.Send(f)
	}
}

// Detach unregisters a holder whose connection closed. Its pending requests
// keep waiting for another connection of the key, unless every live one
// left has already answered with an invalid signature.
func (s *Service) Detach(h registry.Holder) {
	sh := s.shardOf(h.Key())
	sh.mu.Lock()
	if !s.dir.Remove(h) {
		sh.mu.Unlock()
		return
	}
	var exhausted []*pending
	for _, p := range sh.byKey[h.Key()] {
		p.recipients = without(p.recipients, h)
		hadFailed := len(p.failed) > 0
		p.failed = without(p.failed, h)
		if hadFailed && s.exhaustedLocked(p) {
			exhausted = append(exhausted, p)
		}
	}
	sh.mu.Unlock()
	for _, p := range exhausted {
		s.finish(p, outcome{err: ErrInvalidSignature}, protocol.CancelAnsweredElsewhere, nil)
	}
}

// Pending returns the number of requests in flight.
func (s *Service) Pending() int { return int(s.pending.Load()) }

// Drain stops new requests (they get ErrShuttingDown) and waits until the
// pending ones have ended or ctx is done. It reports whether all ended.
func (s *Service) Drain(ctx context.Context) bool {
	s.closing.Store(true)
	for s.pending.Load() > 0 {
		select {
		case <-s.drained:
		case <-ctx.Done():
			return s.pending.Load() == 0
		}
	}
	return true
}

// Close stops new requests and ends every pending one with ErrShuttingDown,
// telling its recipients with sign_cancel "shutdown". Calling it again is
// harmless.
func (s *Service) Close() {
	s.closing.Store(true)
	var all []*pending
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, list := range sh.byKey {
			all = append(all, list...)
		}
		sh.mu.Unlock()
	}
	for _, p := range all {
		s.finish(p, outcome{err: ErrShuttingDown}, protocol.CancelShutdown, nil)
	}
}
