// Package signing runs sign requests: it sends each to every live connection
// of the key, waits for the first valid answer, a rejection, the deadline or
// the caller's cancellation, and tells the other connections when a request
// ends without their answer.
package signing

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/signrelay/signrelay/metrics"
	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/registry"
)

// Directory is where the service finds the live connections of a key. The
// local *registry.Registry is one. The service calls it under its shard
// locks, so an implementation must not do I/O or call back into the service.
type Directory interface {
	// Add registers h, or refuses it (registry.ErrTooManyConnections).
	Add(h registry.Holder) error
	Remove(h registry.Holder) bool
	// Holders returns a copy of k's live holders, which the caller owns.
	Holders(k protocol.PublicKey) []registry.Holder
}

// Bus joins a node's service to the other nodes of a cluster: requests made
// here reach the connections of their key on every node, and answers come
// back. The service calls it outside its locks. A nil Bus is one node.
//
// Connections on other nodes appear to the service as Holders whose Send
// does nothing: what they are sent travels as bus messages (Offer, End).
type Bus interface {
	// Ready reports whether the other nodes can be reached now.
	Ready() bool
	// Offer tells the nodes that hold o.Key about a request made here. They
	// deliver it to their connections of the key and report them with
	// AddRemote; with o.Probe, the bus reports NotHeld when no node holds
	// the key. It must not block.
	Offer(o Offer)
	// End tells the nodes that received a request made here that it ended:
	// they send sign_cancel with reason (none when "") to their recipients
	// but except.
	End(id string, key protocol.PublicKey, reason string, except registry.Holder)
	// Attached and Detached report local connections coming and going.
	Attached(h registry.Holder)
	Detached(h registry.Holder)
	// Respond and Reject handle answers of local connections to requests
	// made on other nodes, and return the error frame for the connection.
	// The request's owner verifies the signature: Respond may return nil
	// for one that does not verify, whose error reaches the connection
	// later.
	Respond(h registry.Holder, f *protocol.SignResponse) *protocol.FrameError
	Reject(h registry.Holder, f *protocol.SignReject) *protocol.FrameError
	// Adopt hands over request id, which this node takes over from a node
	// that died, as far as the bus delivered it to local connections.
	Adopt(id string) Handover
}

// Handover is what a node's bus knows of a request it delivered for
// another node, when this node takes the request over: the local
// connections that have it already, and the answers they gave (to an
// owner that may never have heard them), in the order they came.
type Handover struct {
	Have    []registry.Holder
	Failed  []registry.Holder // of Have: answered with a signature that did not verify
	Answers []Answer
}

// Answer is a key holder's sign_response or sign_reject to a request,
// with the connection that gave it: one of Response and Reject is set.
type Answer struct {
	By       registry.Holder
	Response *protocol.SignResponse
	Reject   *protocol.SignReject
}

// Offer is a request made on this node as the bus carries it.
type Offer struct {
	ID      string
	Key     protocol.PublicKey
	Frame   []byte // the sign_request frame, byte for byte what holders get
	Expires time.Time
	// Probe is set when no local connection holds the key: the request is
	// not connected (404) unless another node holds it.
	Probe bool
	// Resource is set for a request resource: when this node dies it is
	// taken over by another, so its recipients keep it (no
	// requester_gone) and accept the new owner's offer of the same id.
	Resource bool
}

// Options configures a Service. Zero fields take the defaults named.
type Options struct {
	// DefaultTimeout applies when a request names none. Default 60s.
	DefaultTimeout time.Duration
	// MaxTimeout caps a blocking request's timeout. Default 60s.
	MaxTimeout time.Duration
	// MaxAsyncTimeout caps an asynchronous request's timeout. Default 10m.
	MaxAsyncTimeout time.Duration
	// Resources bounds the ended request resources kept.
	Resources Resources
	// MaxPendingPerKey bounds concurrent requests per key. Default 64.
	MaxPendingPerKey int
	// Budget bounds the requests pending in all and per owner (API key),
	// by count and by message bytes; zero fields mean no bound.
	Budget Budget
	// Logger receives events; the default discards them.
	Logger *slog.Logger
	// Bus joins the service to a cluster; nil for one node.
	Bus Bus
	// Shared keeps request resources for the whole cluster; nil for one node.
	Shared Shared
	// Metrics observes how long requests live; nil counts nothing.
	Metrics *metrics.Metrics
	// Journal records every end before it is released; nil for none.
	Journal Journal
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
	if o.MaxAsyncTimeout < o.MaxTimeout {
		o.MaxAsyncTimeout = max(o.MaxTimeout, 10*time.Minute)
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
	ID string
	// Owner names who asks (the API key), for the per-owner budget.
	Owner       string
	Key         protocol.PublicKey
	Message     []byte
	Description string
	// Timeout bounds the wait; zero means Options.DefaultTimeout, and it is
	// capped at Options.MaxTimeout (MaxAsyncTimeout when Async).
	Timeout time.Duration
	// Requester is the public name of the API key, shown to key holders.
	Requester string
	// Async marks a request made with "wait": false: nobody waits for it
	// on the call that made it. It is a resource (see Start).
	Async bool
	// IdempotencyKey, when set, makes the request the one of Owner's key:
	// a retry with the same Fingerprint joins it, another fingerprint is
	// an *IdempotencyError.
	IdempotencyKey string
	Fingerprint    [32]byte
	// WaitForHolder lets a request for a key with no live connection wait
	// for one until its deadline instead of ErrNotConnected.
	WaitForHolder bool
}

// resource reports whether r makes a request resource: one that outlives
// the call that made it and is kept for a while after it ends.
func (r *Request) resource() bool { return r.Async || r.IdempotencyKey != "" }

// Result is a verified signature.
type Result struct {
	RequestID string
	Signature []byte
}

const shardCount = 64

// Service is safe for concurrent use. Its locks guard maps only; frames are
// queued to holders after the locks are released.
//
// Lock order: a shard's mu, then the Directory's own locks (inside its
// calls), then budget.mu. No lock is held while a frame is sent, and none
// of them is ever taken while another shard's mu is held.
type Service struct {
	dir    Directory
	bus    Bus // nil on one node
	opts   Options
	log    *slog.Logger
	budget *budget

	res     *resources
	closing atomic.Bool
	pending atomic.Int64
	// blocking counts the pending requests made by a blocking call, which
	// Drain waits for; asynchronous ones end at Close.
	blocking atomic.Int64
	drained  chan struct{} // signalled when blocking reaches zero while closing

	shards [shardCount]shard
}

type shard struct {
	mu sync.Mutex
	// guards the following fields and the recipients, failed, finished
	// and list fields of every pending request whose key falls in this shard
	byKey map[protocol.PublicKey]*keyPending
	byID  map[uuid.UUID]*pending
}

// keyPending lists a key's pending requests in the order they were made,
// so that a reconnecting holder is handed them in that order; removal is
// O(1).
type keyPending struct {
	head, tail *pending
	n          int
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
	owner   string
	message []byte
	frame   []byte // the encoded sign_request, shared by every recipient
	// ended is closed by finish, once out is set: every waiter (the
	// blocking call, idempotent retries, long polls) waits on it.
	ended chan struct{}
	out   outcome // written once, before ended is closed

	description, requester string
	async, waitForHolder   bool
	idemKey                string
	fp                     [32]byte
	res                    *resource   // set for a request resource
	timer                  *time.Timer // the deadline; guarded by the shard's mu

	// recipients are the live holders that received the request: on one
	// node, every live holder of the key. failed is the subset whose
	// answer did not verify; when it is all of them, the request ends 502.
	recipients map[registry.Holder]struct{}
	failed     map[registry.Holder]struct{}
	finished   bool
	published  bool     // made pending by publish; before that nothing may end it
	endReason  string   // the sign_cancel reason it ended with, once finished
	prev, next *pending // the key's list

	// probe is set for a request offered to the bus with no local holder:
	// it carries whether another node holds the key (first news wins).
	probe     chan bool
	expires   time.Time
	created   time.Time
	completed time.Time // set by finish
}

// remoteGrace is how long past its deadline a request running on another
// node is waited for: its end is written there and has to travel.
const remoteGrace = 15 * time.Second

// exhaustGrace: on a cluster, a request is not ended as answered invalidly
// by all its recipients before it is this old, since the news of a
// recipient on another node may still be on its way.
const exhaustGrace = 200 * time.Millisecond

// New returns a Service that finds key holders in dir.
func New(dir Directory, opts Options) *Service {
	opts.setDefaults()
	s := &Service{dir: dir, bus: opts.Bus, opts: opts, log: opts.Logger, budget: newBudget(opts.Budget), res: newResources(opts.Resources), drained: make(chan struct{}, 1)}
	for i := range s.shards {
		s.shards[i].byKey = make(map[protocol.PublicKey]*keyPending)
		s.shards[i].byID = make(map[uuid.UUID]*pending)
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
	h, err := s.Start(ctx, req)
	if err != nil {
		return nil, err
	}
	rec, err := h.Await(ctx)
	if err != nil {
		return nil, err
	}
	if rec.Status == StatusPending { // a resource whose caller went away
		return nil, ErrRequesterGone
	}
	return &Result{RequestID: rec.ID, Signature: rec.Signature}, nil
}

// Handle is a request that Start made or joined. Await waits for its end;
// Record shows it now.
type Handle struct {
	// Replayed is set when an idempotency key named a request that was
	// made before: nothing was sent to any holder this time.
	Replayed bool

	s   *Service
	p   *pending // the request, when it runs here
	rec *Record  // otherwise: its end, or (remote) a request running on another node
	// remote is set when rec is pending on another node: Await waits for
	// it through Shared.
	remote bool
}

// ID is the request's id.
func (h *Handle) ID() string {
	if h.rec != nil {
		return h.rec.ID
	}
	return h.p.idStr
}

// Record is a snapshot of the request as it is now.
func (h *Handle) Record() *Record {
	if h.rec != nil {
		return h.rec
	}
	return h.p.snapshot()
}

// Made is what an asynchronous call answers with: the request as it was
// made (pending) when this call made it, as it is now when the call
// joined one made before. A holder may answer before the 202 is written;
// the contract's 202 still says pending.
func (h *Handle) Made() *Record {
	if h.p != nil && !h.Replayed {
		return h.p.record(false)
	}
	return h.Record()
}

// Await waits until the request ends or ctx is done, and returns its
// record with the error a blocking call gets (nil when signed). When ctx
// is done first, a request that is not a resource ends then
// (ErrRequesterGone, or ErrTimeout for ctx's deadline); a resource runs on
// to its own deadline and Await returns it still pending, with
// ErrRequesterGone.
func (h *Handle) Await(ctx context.Context) (*Record, error) {
	if h.remote {
		// Bounded by the request's own deadline: a record nobody runs
		// any more must not hold the caller forever.
		ctx, cancel := context.WithDeadline(ctx, h.rec.Expires.Add(remoteGrace))
		defer cancel()
		rec, err := h.s.opts.Shared.Wait(ctx, h.rec.Owner, h.rec.ID)
		switch {
		case errors.Is(err, ErrNotFound): // never made after all (no node held the key)
			return h.rec, ErrNotConnected
		case err != nil:
			h.s.log.Warn("cannot follow a request of another node", "request_id", h.rec.ID, "err", err)
			return h.rec, ErrClusterUnreachable
		case rec.Status == StatusPending && !time.Now().Before(h.rec.Expires):
			return rec, ErrTimeout
		case rec.Status == StatusPending:
			return rec, ErrRequesterGone
		}
		return rec, rec.Err()
	}
	if h.rec != nil {
		return h.rec, h.rec.Err()
	}
	p := h.p
	select {
	case <-p.ended:
	case <-ctx.Done():
		if p.res != nil {
			select {
			case <-p.ended:
			default:
				return p.snapshot(), ErrRequesterGone
			}
			break
		}
		err, reason := ErrRequesterGone, protocol.CancelRequesterGone
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err, reason = ErrTimeout, protocol.CancelTimeout
		}
		h.s.finish(p, outcome{err: err}, reason, nil)
		// Whoever finished first set out: an answer that raced wins.
		<-p.ended
	}
	return p.snapshot(), p.out.err
}

// Start makes req and sends it to every live connection of its key, then
// returns without waiting for the answer: with Handle.Await that is Sign.
// A request with an IdempotencyKey that names one made before is not made
// again; the Handle joins that one (Replayed). ctx bounds only what Start
// itself waits for (on a cluster, whether any node holds the key).
//
// The errors are those that happen before a request is made
// (ErrNotConnected, ErrTooManyPending, ErrShuttingDown,
// ErrClusterUnreachable, *IdempotencyError): nothing is recorded for them.
func (s *Service) Start(ctx context.Context, req Request) (*Handle, error) {
	if s.closing.Load() {
		return nil, ErrShuttingDown
	}
	var id uuid.UUID
	if req.ID == "" {
		id = uuid.New()
	} else {
		parsed, err := uuid.Parse(req.ID)
		if err != nil {
			return nil, err
		}
		id = parsed
	}
	timeout, limit := req.Timeout, s.opts.MaxTimeout
	if req.Async {
		limit = s.opts.MaxAsyncTimeout
	}
	if timeout <= 0 {
		timeout = s.opts.DefaultTimeout
	}
	timeout = min(timeout, limit)
	now := time.Now()
	expires := now.Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(expires) && !req.resource() {
		expires = d
	}

	p := newPending(id, &Record{
		Owner: req.Owner, Requester: req.Requester, Key: req.Key, Message: req.Message, Description: req.Description,
		Created: now, Expires: expires, Async: req.Async, WaitForHolder: req.WaitForHolder,
		IdemKey: req.IdempotencyKey, Fingerprint: req.Fingerprint,
	})
	if req.resource() {
		r := &resource{id: id, owner: req.Owner, idemKey: req.IdempotencyKey, fp: req.Fingerprint, p: p}
		if sh := s.opts.Shared; sh != nil {
			// On a cluster the shared claim alone decides, for calls on
			// this node as for the others.
			held, err := sh.Claim(ctx, p.snapshot())
			if err != nil {
				if !errors.Is(err, ErrClaimed) {
					s.log.Warn("request resource not recorded in the cluster's store", "request_id", p.idStr, "err", err)
					return nil, ErrClusterUnreachable
				}
				if held.Fingerprint != req.Fingerprint {
					return nil, &IdempotencyError{RequestID: held.ID}
				}
				if local := s.res.get(req.Owner, uuid.MustParse(held.ID)); local != nil {
					hp, rec := s.res.state(local)
					return &Handle{Replayed: true, s: s, p: hp, rec: rec}, nil
				}
				return &Handle{Replayed: true, s: s, rec: held, remote: held.Status == StatusPending}, nil
			}
			r.idemKey = "" // claimed for the cluster; locally found by id
			s.res.add(r)
		} else if req.IdempotencyKey == "" {
			s.res.add(r)
		} else if held := s.res.claim(r); held != nil {
			if held.fp != req.Fingerprint {
				return nil, &IdempotencyError{RequestID: held.id.String()}
			}
			hp, rec := s.res.state(held)
			return &Handle{Replayed: true, s: s, p: hp, rec: rec}, nil
		}
		p.res = r
	}
	if err := s.publish(p, nil); err != nil {
		if p.res != nil {
			if s.opts.Shared != nil {
				s.opts.Shared.Release(p.snapshot())
			}
			s.unmake(p, err)
		}
		return nil, err
	}
	if p.probe != nil {
		select {
		case held := <-p.probe:
			if !held {
				s.notHeld(p)
			}
		case <-p.ended:
		case <-ctx.Done():
		}
		select {
		case <-p.ended:
			if errors.Is(p.out.err, ErrNotConnected) {
				return nil, ErrNotConnected
			}
		default:
		}
	}
	return &Handle{s: s, p: p}, nil
}

// newPending is the request rec describes (its ID aside), not yet
// published: what Start makes and what Adopt takes over.
func newPending(id uuid.UUID, rec *Record) *pending {
	p := &pending{
		id: id, idStr: id.String(), key: rec.Key, owner: rec.Owner, message: rec.Message,
		ended: make(chan struct{}), expires: rec.Expires, created: rec.Created,
		description: rec.Description, requester: rec.Requester, async: rec.Async, waitForHolder: rec.WaitForHolder,
		idemKey: rec.IdemKey, fp: rec.Fingerprint,
	}
	p.frame = protocol.EncodeSignRequest(p.idStr, p.message, p.description, p.requester, p.expires)
	return p
}

// unmake undoes the local claim of a resource that was never made: a
// retry starts fresh, and a retry that joined it meanwhile gets err.
func (s *Service) unmake(p *pending, err error) {
	s.res.drop(p.res)
	p.out = outcome{err: err}
	close(p.ended)
}

// publish makes p pending and sends it to the live connections of its key
// (and, on a cluster, to the other nodes), then starts its deadline.
// The connections in have already have its frame: they are recipients,
// and are not sent it again.
func (s *Service) publish(p *pending, have map[registry.Holder]struct{}) error {
	// Asked before the lock: the bus may take locks of its own.
	busReady := s.bus != nil && s.bus.Ready()
	sh := s.shardOf(p.key)
	sh.mu.Lock()
	if s.closing.Load() {
		sh.mu.Unlock()
		return ErrShuttingDown
	}
	holders := s.dir.Holders(p.key)
	probe := len(holders) == 0 && s.bus != nil && !p.waitForHolder
	switch {
	case len(holders) > 0:
	case s.bus == nil:
		if !p.waitForHolder {
			sh.mu.Unlock()
			return ErrNotConnected
		}
	case !busReady:
		// Another node may hold the key; this one cannot know.
		sh.mu.Unlock()
		return ErrClusterUnreachable
	}
	kp := sh.byKey[p.key]
	if kp != nil && kp.n >= s.opts.MaxPendingPerKey {
		sh.mu.Unlock()
		return ErrTooManyPending
	}
	if !s.budget.take(p.owner, len(p.message)) {
		sh.mu.Unlock()
		return ErrTooManyPending
	}
	if kp == nil {
		kp = &keyPending{}
		sh.byKey[p.key] = kp
	}
	kp.push(p)
	sh.byID[p.id] = p
	p.published = true
	p.recipients = make(map[registry.Holder]struct{}, len(holders))
	for _, h := range holders {
		p.recipients[h] = struct{}{}
	}
	if probe {
		p.probe = make(chan bool, 1)
	}
	s.pending.Add(1)
	if !p.async {
		s.blocking.Add(1)
	}
	sh.mu.Unlock()

	for _, h := range holders {
		if _, ok := have[h]; !ok {
			h.Send(p.frame)
		}
	}
	if s.bus != nil {
		s.bus.Offer(Offer{ID: p.idStr, Key: p.key, Frame: p.frame, Expires: p.expires, Probe: probe, Resource: p.res != nil})
	}
	// The deadline runs from here: a timeout's sign_cancel must come after
	// the sign_request it cancels, however short the timeout.
	sh.mu.Lock()
	if !p.finished {
		p.timer = time.AfterFunc(time.Until(p.expires), func() { s.finish(p, outcome{err: ErrTimeout}, protocol.CancelTimeout, nil) })
	}
	sh.mu.Unlock()
	return nil
}

// snapshot is p's record now; once p ended, its final one.
func (p *pending) snapshot() *Record {
	select {
	case <-p.ended:
		return p.record(true)
	default:
		return p.record(false)
	}
}

// record is p's record, pending or (ended, once finish set out) final.
func (p *pending) record(ended bool) *Record {
	r := &Record{
		ID: p.idStr, Owner: p.owner, Requester: p.requester, Key: p.key, Message: p.message,
		Description: p.description, Created: p.created, Expires: p.expires, Status: StatusPending, Async: p.async,
		WaitForHolder: p.waitForHolder, IdemKey: p.idemKey, Fingerprint: p.fp,
	}
	if !ended {
		return r
	}
	r.Completed = p.completed
	r.Status = statusOf(p.out.err)
	r.Signature = p.out.sig
	if p.out.err != nil {
		// re escapes to errors.As: declared here, only a failure pays for it.
		var re *RejectedError
		if errors.As(p.out.err, &re) {
			r.Reason = re.Reason
		}
	}
	return r
}

// Get returns owner's request resource id. With wait, a pending one is
// waited for until it ends, wait passes or ctx is done (a long poll).
// ErrNotFound when it is unknown, forgotten or another owner's.
func (s *Service) Get(ctx context.Context, owner, id string, wait time.Duration) (*Record, error) {
	uid, err := uuid.Parse(id)
	if err != nil {
		return nil, ErrNotFound
	}
	r := s.res.get(owner, uid)
	if r == nil {
		if s.opts.Shared == nil {
			return nil, ErrNotFound
		}
		return s.getShared(ctx, owner, id, wait)
	}
	p, rec := s.res.state(r)
	if rec != nil {
		return rec, nil
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-p.ended:
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return p.snapshot(), nil
}

// Cancel ends owner's pending request resource id as cancelled: its
// recipients get sign_cancel "cancelled" and its waiters ErrCancelled.
// Cancelling a cancelled request again returns it; one that ended
// otherwise is ErrNotPending (with its record), an unknown one
// ErrNotFound.
func (s *Service) Cancel(owner, id string) (*Record, error) {
	r, valid := s.resourceHere(owner, id)
	if r == nil {
		if !valid || s.opts.Shared == nil {
			return nil, ErrNotFound
		}
		return s.opts.Shared.Cancel(context.Background(), owner, id)
	}
	return s.cancelResource(r)
}

// CancelHere is Cancel for a request that runs on this node, without
// asking the cluster's store: what another node's forwarded DELETE, or the
// store itself, calls.
func (s *Service) CancelHere(owner, id string) (*Record, error) {
	r, _ := s.resourceHere(owner, id)
	if r == nil {
		return nil, ErrNotFound
	}
	return s.cancelResource(r)
}

// resourceHere is owner's resource id on this node, if any; valid is
// false when id is not a request id at all.
func (s *Service) resourceHere(owner, id string) (r *resource, valid bool) {
	uid, err := uuid.Parse(id)
	if err != nil {
		return nil, false
	}
	return s.res.get(owner, uid), true
}

func (s *Service) cancelResource(r *resource) (*Record, error) {
	p, rec := s.res.state(r)
	if rec == nil {
		if !s.finish(p, outcome{err: ErrCancelled}, protocol.CancelCancelled, nil) && !s.isPublished(p) {
			// Claimed a moment ago and not yet sent: not a request yet.
			return nil, ErrNotFound
		}
		<-p.ended
		rec = p.snapshot()
	}
	if rec.Status != StatusCancelled {
		return rec, ErrNotPending
	}
	return rec, nil
}

func (kp *keyPending) push(p *pending) {
	p.prev = kp.tail
	if kp.tail != nil {
		kp.tail.next = p
	} else {
		kp.head = p
	}
	kp.tail = p
	kp.n++
}

func (kp *keyPending) remove(p *pending) {
	if p.prev != nil {
		p.prev.next = p.next
	} else {
		kp.head = p.next
	}
	if p.next != nil {
		p.next.prev = p.prev
	} else {
		kp.tail = p.prev
	}
	p.prev, p.next = nil, nil
	kp.n--
}

// endLocked takes p, published and not yet ended, out of the pending set
// with outcome o, and reports whether it did: the part of an end that
// needs sh.mu, held by the caller.
func (sh *shard) endLocked(p *pending, o outcome) bool {
	if p.finished || !p.published {
		return false
	}
	p.finished = true
	p.out = o
	p.completed = time.Now()
	if p.timer != nil {
		p.timer.Stop()
	}
	if kp := sh.byKey[p.key]; kp != nil {
		kp.remove(p)
		if kp.n == 0 {
			delete(sh.byKey, p.key)
		}
	}
	delete(sh.byID, p.id)
	return true
}

// finish ends p once: it records the outcome, removes p from the pending
// set and sends sign_cancel with reason to every recipient but except. It
// is the one transition out of pending, whatever ends a request.
func (s *Service) finish(p *pending, o outcome, reason string, except registry.Holder) bool {
	sh := s.shardOf(p.key)
	sh.mu.Lock()
	if !sh.endLocked(p, o) {
		sh.mu.Unlock()
		return false
	}
	p.endReason = reason
	var recipients []registry.Holder
	if reason != "" {
		recipients = make([]registry.Holder, 0, len(p.recipients))
		for h := range p.recipients {
			if h != except {
				recipients = append(recipients, h)
			}
		}
	}
	sh.mu.Unlock()
	s.budget.give(p.owner, len(p.message))

	made := !errors.Is(o.err, ErrNotConnected) // a cluster-wide 404 was never made
	var rec *Record
	if s.opts.Journal != nil || p.res != nil {
		rec = p.record(true)
	}
	if s.opts.Journal != nil && made {
		if err := s.opts.Journal.Ended(rec, o.err); err != nil {
			s.log.Error("audit log not written", "request_id", p.idStr, "err", err)
			if o.err == nil {
				// Fail closed: no signature leaves without its line.
				p.out = outcome{err: ErrJournal}
				rec = p.record(true)
			}
		}
	}
	if p.res != nil {
		// Recorded before anyone hears of the end, so that whoever hears
		// of it can read it on any node.
		if made {
			s.res.end(p.res, rec)
			if s.opts.Shared != nil {
				s.opts.Shared.Save(rec)
			}
		} else {
			s.res.drop(p.res)
			if s.opts.Shared != nil {
				s.opts.Shared.Release(rec)
			}
		}
	}
	close(p.ended)
	s.opts.Metrics.Ended(p.completed.Sub(p.created).Seconds())
	s.pending.Add(-1)
	if !p.async && s.blocking.Add(-1) == 0 && s.closing.Load() {
		select {
		case s.drained <- struct{}{}:
		default:
		}
	}
	if len(recipients) > 0 {
		cancel := protocol.EncodeSignCancel(p.idStr, reason)
		for _, h := range recipients {
			h.Send(cancel)
		}
	}
	if s.bus != nil {
		s.bus.End(p.idStr, p.key, reason, except)
	}
	return true
}

// notHeld ends a probing request with ErrNotConnected when it still has no
// recipient (a local connection may have been introduced meanwhile), and
// reports whether it did.
func (s *Service) notHeld(p *pending) bool {
	sh := s.shardOf(p.key)
	sh.mu.Lock()
	empty := len(p.recipients) == 0
	sh.mu.Unlock()
	return empty && s.finish(p, outcome{err: ErrNotConnected}, "", nil)
}

// lookupLocked finds the request id pending for h, or nil.
func (sh *shard) lookupLocked(h registry.Holder, id uuid.UUID) *pending {
	p := sh.byID[id]
	if p == nil || p.key != h.Key() {
		return nil
	}
	if _, ok := p.recipients[h]; !ok {
		return nil
	}
	if _, bad := p.failed[h]; bad {
		return nil
	}
	return p
}

// exhaustedLocked reports whether no holder of p's key is left that may
// still answer: at least one received it, and every one gave a bad answer.
// With none left the request waits for the key to reconnect.
func (p *pending) exhaustedLocked() bool {
	return len(p.recipients) > 0 && len(p.failed) == len(p.recipients)
}

// pendingFor finds the request requestID that h may still answer, or the
// unknown_request error to send back.
func (s *Service) pendingFor(h registry.Holder, requestID string) (*pending, *protocol.FrameError) {
	id, err := uuid.Parse(requestID)
	if err != nil {
		return nil, protocol.UnknownRequest(requestID)
	}
	sh := s.shardOf(h.Key())
	sh.mu.Lock()
	p := sh.lookupLocked(h, id)
	sh.mu.Unlock()
	if p == nil {
		return nil, protocol.UnknownRequest(requestID)
	}
	return p, nil
}

// Respond handles a sign_response from h. It returns the error frame to send
// back to h, or nil. A valid signature ends the request; an invalid one ends
// it only when no other live connection of the key may still answer.
func (s *Service) Respond(h registry.Holder, f *protocol.SignResponse) *protocol.FrameError {
	p, ferr := s.pendingFor(h, f.RequestID)
	if ferr != nil {
		if s.bus != nil && !IsRemote(h) {
			return s.bus.Respond(h, f)
		}
		return ferr
	}
	sh := s.shardOf(h.Key())
	// p.message is immutable: verify without the lock.
	bad := protocol.CheckAnswer(h.Key(), p.message, f)
	if bad == nil {
		sig := append([]byte(nil), f.Signature...)
		if !s.finish(p, outcome{sig: sig}, protocol.CancelAnsweredElsewhere, h) {
			s.log.Debug("late answer", "request_id", p.idStr, "session", h.SessionID())
		}
		return nil
	}
	s.log.Warn("invalid sign_response", "request_id", p.idStr, "key", h.Key().ShortString(), "session", h.SessionID(), "why", bad.Message)

	sh.mu.Lock()
	exhausted := false
	if _, still := p.recipients[h]; still && !p.finished {
		if p.failed == nil {
			p.failed = make(map[registry.Holder]struct{}, 1)
		}
		p.failed[h] = struct{}{}
		exhausted = p.exhaustedLocked()
	}
	sh.mu.Unlock()
	if exhausted {
		s.endExhausted(p, h)
	}
	return bad
}

// Reject handles a sign_reject from h: the key holder said no, which ends
// the request for every connection of the key.
func (s *Service) Reject(h registry.Holder, f *protocol.SignReject) *protocol.FrameError {
	p, ferr := s.pendingFor(h, f.RequestID)
	if ferr != nil {
		if s.bus != nil && !IsRemote(h) {
			return s.bus.Reject(h, f)
		}
		return ferr
	}
	s.finish(p, outcome{err: &RejectedError{Reason: f.Reason}}, protocol.CancelAnsweredElsewhere, h)
	return nil
}

// Attach registers an introduced holder and hands it every request still
// pending for its key, with the same request_id and expires_at, in the
// order they were made. A key at its connection limit refuses it with
// registry.ErrTooManyConnections, and nothing is sent.
func (s *Service) Attach(h registry.Holder) error {
	sh := s.shardOf(h.Key())
	sh.mu.Lock()
	if err := s.dir.Add(h); err != nil {
		sh.mu.Unlock()
		return err
	}
	var handed []*pending
	if kp := sh.byKey[h.Key()]; kp != nil {
		for p := kp.head; p != nil; p = p.next {
			if _, ok := p.recipients[h]; !ok {
				p.recipients[h] = struct{}{}
				handed = append(handed, p)
			}
		}
	}
	sh.mu.Unlock()
	if s.bus != nil {
		s.bus.Attached(h)
	}
	if len(handed) == 0 {
		return nil
	}
	for _, p := range handed {
		h.Send(p.frame)
	}
	// A request that ended between the unlock and the sends above had its
	// sign_cancel queued to h before its sign_request: send the cancel
	// again, after it, so that h does not show a request that is over.
	var late []*pending
	sh.mu.Lock()
	for _, p := range handed {
		if p.finished && p.endReason != "" {
			late = append(late, p)
		}
	}
	sh.mu.Unlock()
	for _, p := range late {
		h.Send(protocol.EncodeSignCancel(p.idStr, p.endReason))
	}
	return nil
}

// Detach unregisters a holder whose connection closed. Its pending requests
// keep waiting for another connection of the key, unless every one left
// has already answered with an invalid signature. It costs O(pending
// requests of the key).
func (s *Service) Detach(h registry.Holder) {
	sh := s.shardOf(h.Key())
	sh.mu.Lock()
	if !s.dir.Remove(h) {
		sh.mu.Unlock()
		return
	}
	s.forgetLocked(sh, h)
	if s.bus != nil {
		s.bus.Detached(h)
	}
}

// forgetLocked removes h from the requests of its key, then ends those
// that no connection is left to answer (every one left answered
// invalidly). It is called with sh.mu held and releases it.
func (s *Service) forgetLocked(sh *shard, h registry.Holder) {
	var exhausted []*pending
	if kp := sh.byKey[h.Key()]; kp != nil {
		for p := kp.head; p != nil; p = p.next {
			delete(p.recipients, h)
			if _, bad := p.failed[h]; bad {
				delete(p.failed, h)
			}
			if len(p.failed) > 0 && p.exhaustedLocked() {
				exhausted = append(exhausted, p)
			}
		}
	}
	sh.mu.Unlock()
	for _, p := range exhausted {
		s.endExhausted(p, nil)
	}
}

// endExhausted ends p with ErrInvalidSignature: every recipient answered
// invalidly. On a cluster it waits until p is exhaustGrace old and then
// looks again, since a recipient on another node may not be known yet.
func (s *Service) endExhausted(p *pending, except registry.Holder) {
	if wait := time.Until(p.created.Add(exhaustGrace)); s.bus != nil && wait > 0 {
		time.AfterFunc(wait, func() {
			sh := s.shardOf(p.key)
			sh.mu.Lock()
			still := !p.finished && p.exhaustedLocked()
			sh.mu.Unlock()
			if still {
				s.finish(p, outcome{err: ErrInvalidSignature}, protocol.CancelAnsweredElsewhere, except)
			}
		})
		return
	}
	s.finish(p, outcome{err: ErrInvalidSignature}, protocol.CancelAnsweredElsewhere, except)
}

// Pending returns the number of requests in flight.
func (s *Service) Pending() int { return int(s.pending.Load()) }

// Drain stops new requests (they get ErrShuttingDown) and waits until the
// pending blocking ones have ended or ctx is done, and reports whether all
// did. Asynchronous requests have nobody waiting on this node's answer:
// Close ends them.
func (s *Service) Drain(ctx context.Context) bool {
	s.closing.Store(true)
	for s.blocking.Load() > 0 {
		select {
		case <-s.drained:
		case <-ctx.Done():
			return s.blocking.Load() == 0
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
		for _, p := range sh.byID {
			all = append(all, p)
		}
		sh.mu.Unlock()
	}
	for _, p := range all {
		if p.async && p.res != nil && s.opts.Shared != nil {
			s.leave(p)
			continue
		}
		s.finish(p, outcome{err: ErrShuttingDown}, protocol.CancelShutdown, nil)
	}
}

func (s *Service) isPublished(p *pending) bool {
	sh := s.shardOf(p.key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return p.published
}

// leave lets go of p, an asynchronous resource on a cluster, as this node
// shuts down: it does not end (no sign_cancel, nothing recorded), so
// another node takes it over as it would from a node that died, and its
// recipients keep it. Waiters on this node get ErrShuttingDown; a retry on
// another node joins the request again. Blocking ones end as on one node.
func (s *Service) leave(p *pending) {
	sh := s.shardOf(p.key)
	sh.mu.Lock()
	if !sh.endLocked(p, outcome{err: ErrShuttingDown}) {
		sh.mu.Unlock()
		return
	}
	sh.mu.Unlock()
	s.budget.give(p.owner, len(p.message))
	s.res.drop(p.res)
	close(p.ended)
	s.pending.Add(-1)
	if !p.async {
		s.blocking.Add(-1)
	}
	s.log.Info("request left for another node", "request_id", p.idStr)
}
