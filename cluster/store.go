package cluster

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/signing"
)

// Timing of the store.
const (
	// storeOp bounds one key-value operation.
	storeOp = 5 * time.Second
	// takeoverEvery is how often a node looks for pending resources whose
	// node is gone; a node is taken for gone after takeoverMisses checks
	// in a row, missRecheck apart, found nobody answering on its subject.
	// A dead node's resources are adopted within takeoverEvery +
	// missRecheck (+ the pings) of its interest going, well inside the
	// contract's 10 s.
	takeoverEvery  = 2 * time.Second
	takeoverMisses = 2
	missRecheck    = time.Second
	aliveTimeout   = time.Second
	// openRetry is how long the store keeps trying to create its bucket
	// at start: a JetStream cluster elects its meta leader first.
	openRetry = 30 * time.Second
)

// ErrNoJetStream: the NATS server the relay connects to has no JetStream,
// which request resources on a cluster need.
var ErrNoJetStream = errors.New("cluster: the NATS server has no JetStream enabled; run nats-server with -js (or jetstream {} in its configuration): request resources (async requests, Idempotency-Key) are kept in a JetStream key-value bucket")

// Store is signing.Shared over a JetStream key-value bucket: every node
// reads the same records, an idempotency key is claimed with a
// compare-and-set (the first writer wins), long polls watch a key, and a
// pending resource whose node is gone is adopted by another node.
//
// Keys of the bucket:
//
//	r.<request id>           the record (JSON)
//	i.<owner>.<key hash>     an idempotency key: the request id it names
//	p.<node>.<request id>    an index of the pending resources per node
//	w.<node>                 written once when node opens the bucket
//
// Blocking requests without an idempotency key never reach it.
type Store struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	node     string
	prefix   string
	ttl      time.Duration // sign.result_ttl
	bucket   jetstream.KeyValueConfig
	external bool
	log      *slog.Logger

	kv atomic.Pointer[jetstream.KeyValue] // nil until the bucket is open

	// Owned by Start and Close.
	svc       *signing.Service
	subs      []*nats.Subscription
	stop      chan struct{}
	done      sync.WaitGroup
	closeOnce sync.Once

	// Owned by the takeover loop.
	lastPending map[string][]string // the last listing of p.*: node -> request ids
}

// storedRecord is a record as the bucket keeps it.
type storedRecord struct {
	ID            string `json:"id"`
	Owner         string `json:"owner"`
	Node          string `json:"node"` // the node that runs it while pending
	Requester     string `json:"requester,omitempty"`
	Key           []byte `json:"key"`
	Message       []byte `json:"message"`
	Description   string `json:"description,omitempty"`
	Created       int64  `json:"created"` // unix milliseconds
	Expires       int64  `json:"expires"`
	Completed     int64  `json:"completed,omitempty"`
	Status        string `json:"status"`
	Signature     []byte `json:"signature,omitempty"`
	Reason        string `json:"reason,omitempty"`
	Async         bool   `json:"async,omitempty"`
	WaitForHolder bool   `json:"wait_for_holder,omitempty"`
	IdemKey       string `json:"idem_key,omitempty"`
	Fingerprint   []byte `json:"fp,omitempty"`
}

type idemEntry struct {
	ID string `json:"id"`
}

func toStored(r *signing.Record, node string) *storedRecord {
	s := &storedRecord{
		ID: r.ID, Owner: r.Owner, Node: node, Requester: r.Requester, Key: keyBytes(r.Key), Message: r.Message,
		Description: r.Description, Created: r.Created.UnixMilli(), Expires: r.Expires.UnixMilli(),
		Status: string(r.Status), Signature: r.Signature, Reason: r.Reason, Async: r.Async,
		WaitForHolder: r.WaitForHolder, IdemKey: r.IdemKey, Fingerprint: r.Fingerprint[:],
	}
	if !r.Completed.IsZero() {
		s.Completed = r.Completed.UnixMilli()
	}
	return s
}

func (s *storedRecord) record() (*signing.Record, error) {
	key, err := protocol.PublicKeyFromBytes(s.Key)
	if err != nil {
		return nil, err
	}
	r := &signing.Record{
		ID: s.ID, Owner: s.Owner, Requester: s.Requester, Key: key, Message: s.Message, Description: s.Description,
		Created: time.UnixMilli(s.Created), Expires: time.UnixMilli(s.Expires), Status: signing.Status(s.Status),
		Signature: s.Signature, Reason: s.Reason, Async: s.Async, WaitForHolder: s.WaitForHolder, IdemKey: s.IdemKey,
	}
	copy(r.Fingerprint[:], s.Fingerprint)
	if s.Completed != 0 {
		r.Completed = time.UnixMilli(s.Completed)
	}
	return r, nil
}

func decodeStored(b []byte) (*storedRecord, error) {
	var s storedRecord
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// StoreOptions sizes the bucket.
type StoreOptions struct {
	// ResultTTL is sign.result_ttl; MaxLife the longest a request may be
	// pending (sign.max_async_timeout).
	ResultTTL, MaxLife time.Duration
	// MaxBytes bounds the bucket.
	MaxBytes int64
	// Replicas is how many servers keep the bucket (1 to 5).
	Replicas int
	// External is set when the NATS server is not our own: a server
	// without JetStream is then a start-up error.
	External bool
}

// NewStore opens the request store of l. With an external server it
// checks at once that JetStream is there; the bucket itself is created
// (or found) in the background, retried while a JetStream cluster elects
// its leader, and the store answers ErrClusterUnreachable until then.
func NewStore(l *Link, o StoreOptions, log *slog.Logger) (*Store, error) {
	js, err := jetstream.New(l.Conn())
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The store names this process, not only the node: a node that
	// restarts under the same cluster.node_id is a new owner, and the
	// requests of the process that died are taken over like any other.
	inc := make([]byte, 4)
	if _, err := rand.Read(inc); err != nil {
		return nil, err
	}
	self := l.NodeID() + "-" + hex.EncodeToString(inc)
	s := &Store{
		nc: l.Conn(), js: js, node: self, prefix: l.Prefix(), ttl: o.ResultTTL, external: o.External,
		log: log.With("component", "store", "node_id", l.NodeID(), "owner", self), stop: make(chan struct{}),
		bucket: jetstream.KeyValueConfig{
			Bucket:      strings.ReplaceAll(l.Prefix(), ".", "_") + "_requests",
			Description: "signrelay request resources",
			History:     1,
			// A record is written when its request is made and when it
			// ends; the end is kept for ResultTTL. Every entry is read
			// with its own expiry, so the bucket's age only has to
			// outlast the longest life.
			TTL:      o.MaxLife + o.ResultTTL + time.Minute,
			MaxBytes: o.MaxBytes,
			Storage:  jetstream.MemoryStorage,
			Replicas: max(1, o.Replicas),
		},
	}
	if o.External {
		ctx, cancel := context.WithTimeout(context.Background(), storeOp)
		defer cancel()
		if _, err := js.AccountInfo(ctx); err != nil {
			if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
				return nil, ErrNoJetStream
			}
			return nil, fmt.Errorf("cluster: JetStream: %w", err)
		}
		if err := s.open(ctx); err != nil {
			return nil, fmt.Errorf("cluster: JetStream bucket %s (memory, %d bytes = sign.max_results_bytes + sign.max_pending_bytes, %d replicas): %w; the NATS server's jetstream max_memory_store must allow it",
				s.bucket.Bucket, s.bucket.MaxBytes, s.bucket.Replicas, err)
		}
	}
	return s, nil
}

func (s *Store) open(ctx context.Context) error {
	// Every read must see the writes before it: a compare-and-set reads
	// the revision it writes over, and a replay right after an end must
	// find the end. A bucket's "direct get" may be answered by a replica
	// that is behind, so the bucket's stream is read through its leader:
	// the first node makes the bucket and turns direct gets off, and
	// every node opens it only once they are off, so that its client
	// never reads directly.
	name := "KV_" + s.bucket.Bucket
	for attempt := 0; attempt < 5; attempt++ {
		st, err := s.js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			if _, err := s.js.CreateKeyValue(ctx, s.bucket); err != nil && !errors.Is(err, jetstream.ErrBucketExists) {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if cfg := st.CachedInfo().Config; cfg.AllowDirect {
			cfg.AllowDirect = false
			if _, err := s.js.UpdateStream(ctx, cfg); err != nil {
				return err
			}
			continue
		}
		kv, err := s.js.KeyValue(ctx, s.bucket.Bucket)
		if err != nil {
			return err
		}
		// A compare-and-set before any other write: nats-server 2.15.3
		// sets up its in-flight compare-and-set table on a stream
		// leader's first one without a lock that a concurrent apply of
		// a plain write reads (the race detector sees it). This write is
		// that first one while nothing else writes yet.
		if _, err := (bucket{kv}).Create(ctx, "w."+s.node, nil); err != nil && !conflict(err) {
			return err
		}
		s.kv.Store(&kv)
		s.log.Debug("request bucket open", "bucket", s.bucket.Bucket, "replicas", s.bucket.Replicas)
		return nil
	}
	return errors.New("the request bucket's stream keeps changing")
}

// Start serves the other nodes' cancels and pings, opens the bucket if
// not yet open, and starts adopting the resources of nodes that die.
func (s *Store) Start(svc *signing.Service) error {
	s.svc = svc
	for what, h := range map[string]nats.MsgHandler{"alive": s.onAlive, "cancel": s.onCancel} {
		sub, err := s.nc.Subscribe(s.subject(s.node, what), h)
		if err != nil {
			return err
		}
		s.subs = append(s.subs, sub)
	}
	s.done.Add(1)
	go s.run()
	return nil
}

// Close stops the store's loops and subscriptions; harmless twice.
func (s *Store) Close() {
	s.closeOnce.Do(func() {
		close(s.stop)
		for _, sub := range s.subs {
			_ = sub.Unsubscribe()
		}
		s.done.Wait()
	})
}

// Ready reports whether the bucket is open.
func (s *Store) Ready() bool { return s.kv.Load() != nil }

func (s *Store) subject(node, what string) string { return s.prefix + ".node." + node + "." + what }

func (s *Store) run() {
	defer s.done.Done()
	// Every wait of the loop ends when the store closes.
	stopped, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		<-s.stop
		stop()
	}()
	deadline := time.Now().Add(openRetry)
	for s.kv.Load() == nil {
		ctx, cancel := context.WithTimeout(stopped, storeOp)
		err := s.open(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			s.log.Error("cannot open the request bucket; asynchronous and idempotent requests will be refused", "err", err)
			deadline = time.Now().Add(openRetry)
		}
		select {
		case <-s.stop:
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
	t := time.NewTicker(takeoverEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.reopen(stopped)
			s.takeover(stopped)
		}
	}
}

func (s *Store) store() (jetstream.KeyValue, error) {
	kv := s.kv.Load()
	if kv == nil {
		return nil, signing.ErrClusterUnreachable
	}
	return bucket{*kv}, nil
}

func recordKey(id string) string { return "r." + id }
func pendingKey(node, id string) string {
	return "p." + node + "." + id
}
func idemKeyOf(owner, key string) string {
	sum := sha256.Sum256([]byte("signrelay/v1/idempotency:" + key))
	return "i." + owner + "." + hex.EncodeToString(sum[:16])
}

func opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx == nil {
		ctx = context.Background()
	}
	return context.WithTimeout(ctx, storeOp)
}

// Claim implements signing.Shared.
func (s *Store) Claim(ctx context.Context, rec *signing.Record) (*signing.Record, error) {
	kv, err := s.store()
	if err != nil {
		return nil, err
	}
	ctx, cancel := opCtx(ctx)
	defer cancel()
	b, _ := json.Marshal(toStored(rec, s.node))
	// The index first, so that a record left behind by a failure is found
	// and ended by a takeover; then the record, then the key: whoever
	// finds the key finds the record it names.
	if _, err := kv.Put(ctx, pendingKey(s.node, rec.ID), nil); err != nil {
		return nil, err
	}
	if _, err := kv.Create(ctx, recordKey(rec.ID), b); err != nil {
		s.Release(rec)
		return nil, err
	}
	if rec.IdemKey != "" {
		held, err := s.claimKey(ctx, kv, rec)
		if err != nil || held != nil {
			s.Release(rec)
			if err != nil {
				return nil, err
			}
			return held, signing.ErrClaimed
		}
	}
	return nil, nil
}

// claimKey creates rec's idempotency key, or returns the live record that
// holds it. A key whose record is gone (released, or past its TTL) is
// taken over with a compare-and-set.
func (s *Store) claimKey(ctx context.Context, kv jetstream.KeyValue, rec *signing.Record) (*signing.Record, error) {
	key := idemKeyOf(rec.Owner, rec.IdemKey)
	val, _ := json.Marshal(idemEntry{ID: rec.ID})
	for {
		_, err := kv.Create(ctx, key, val)
		if err == nil {
			return nil, nil
		}
		if !conflict(err) {
			return nil, err
		}
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			// Another claim's write is still being replicated: a
			// replicated stream refuses a compare-and-set on a subject
			// with a write in flight, which has not landed yet. It
			// lands in a moment (or fails, and the key is free).
			if !pause(ctx) {
				break
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		var ie idemEntry
		_ = json.Unmarshal(e.Value(), &ie)
		if ie.ID == rec.ID {
			// A try of ours that went unanswered had written it.
			return nil, nil
		}
		held, _, err := s.get(ctx, kv, rec.Owner, ie.ID)
		if err == nil && held != nil && held.IdemKey == rec.IdemKey {
			return held, nil
		}
		if err != nil && !errors.Is(err, signing.ErrNotFound) {
			return nil, err
		}
		// Its record is gone: the key is free again.
		_, err = kv.Update(ctx, key, val, e.Revision())
		if err == nil {
			return nil, nil
		}
		if !conflict(err) {
			return nil, err
		}
		if !pause(ctx) {
			break
		}
	}
	return nil, fmt.Errorf("%w (the idempotency key kept changing)", signing.ErrClusterUnreachable)
}

// Release implements signing.Shared.
func (s *Store) Release(rec *signing.Record) {
	kv, err := s.store()
	if err != nil {
		return
	}
	ctx, cancel := opCtx(nil)
	defer cancel()
	if rec.IdemKey != "" {
		key := idemKeyOf(rec.Owner, rec.IdemKey)
		if e, err := kv.Get(ctx, key); err == nil {
			var ie idemEntry
			if json.Unmarshal(e.Value(), &ie) == nil && ie.ID == rec.ID {
				_ = kv.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
			}
		}
	}
	_ = kv.Delete(ctx, recordKey(rec.ID))
	_ = kv.Purge(ctx, pendingKey(s.node, rec.ID))
}

// Save implements signing.Shared.
func (s *Store) Save(rec *signing.Record) {
	kv, err := s.store()
	if err != nil {
		s.log.Warn("request end not recorded: no bucket", "request_id", rec.ID)
		return
	}
	ctx, cancel := opCtx(nil)
	defer cancel()
	defer func() {
		// With a context of its own: the writes below may have used
		// up theirs.
		ctx, cancel := opCtx(nil)
		defer cancel()
		_ = kv.Purge(ctx, pendingKey(s.node, rec.ID))
	}()
	b, _ := json.Marshal(toStored(rec, s.node))
	// Only the owner writes the end: a node that was taken for dead (cut
	// off from NATS for a while) and whose request another node adopted
	// does not overwrite the adopter's outcome.
	for {
		e, err := kv.Get(ctx, recordKey(rec.ID))
		if err != nil {
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				_, err = kv.Create(ctx, recordKey(rec.ID), b)
				if conflict(err) && pause(ctx) {
					continue // written meanwhile: read it again
				}
			}
			if err != nil {
				s.log.Warn("request end not recorded", "request_id", rec.ID, "err", err)
			}
			return
		}
		if st, err := decodeStored(e.Value()); err == nil && st.Node != s.node {
			s.log.Warn("request end not recorded: another node took the request over", "request_id", rec.ID, "owner", st.Node)
			return
		}
		_, err = kv.Update(ctx, recordKey(rec.ID), b, e.Revision())
		if err == nil {
			return
		}
		if !conflict(err) {
			s.log.Warn("request end not recorded", "request_id", rec.ID, "err", err)
			return
		}
		if !pause(ctx) {
			break
		}
	}
	s.log.Warn("request end not recorded: the record kept changing", "request_id", rec.ID)
}

// get reads owner's record id and the node that runs it; ErrNotFound
// when absent, foreign or past its TTL.
func (s *Store) get(ctx context.Context, kv jetstream.KeyValue, owner, id string) (*signing.Record, string, error) {
	e, err := kv.Get(ctx, recordKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, "", signing.ErrNotFound
	}
	if err != nil {
		return nil, "", fmt.Errorf("%w (%v)", signing.ErrClusterUnreachable, err)
	}
	return s.visible(e.Value(), owner)
}

func (s *Store) visible(b []byte, owner string) (*signing.Record, string, error) {
	st, err := decodeStored(b)
	if err != nil || st.Owner != owner {
		return nil, "", signing.ErrNotFound
	}
	rec, err := st.record()
	if err != nil {
		return nil, "", signing.ErrNotFound
	}
	if rec.Status == signing.StatusPending && time.Since(rec.Expires) > staleAfter {
		// Past its deadline and still pending: nobody runs it any more
		// (its node died before a takeover could end it).
		rec.Status, rec.Completed = signing.StatusTimeout, rec.Expires
	}
	if rec.Status != signing.StatusPending && time.Since(rec.Completed) > s.ttl {
		return nil, "", signing.ErrNotFound
	}
	return rec, st.Node, nil
}

// staleAfter: a record still pending this long past its deadline is read
// as timed out.
const staleAfter = 10 * time.Second

// Get implements signing.Shared.
func (s *Store) Get(ctx context.Context, owner, id string) (*signing.Record, error) {
	kv, err := s.store()
	if err != nil {
		return nil, err
	}
	ctx, cancel := opCtx(ctx)
	defer cancel()
	rec, _, err := s.get(ctx, kv, owner, id)
	return rec, err
}

// Wait implements signing.Shared: it watches the record's key.
func (s *Store) Wait(ctx context.Context, owner, id string) (*signing.Record, error) {
	kv, err := s.store()
	if err != nil {
		return nil, err
	}
	w, err := kv.Watch(context.Background(), recordKey(id))
	if err != nil {
		return nil, signing.ErrClusterUnreachable
	}
	defer func() { _ = w.Stop() }()
	var last *signing.Record
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				if last != nil {
					return last, nil
				}
				return nil, signing.ErrClusterUnreachable
			}
			if e == nil { // the current value has been delivered
				if last == nil {
					return nil, signing.ErrNotFound
				}
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				return nil, signing.ErrNotFound // released: never made
			}
			rec, _, err := s.visible(e.Value(), owner)
			if err != nil {
				return nil, err
			}
			if rec.Status != signing.StatusPending {
				return rec, nil
			}
			last = rec
		case <-ctx.Done():
			if last == nil {
				return s.Get(context.Background(), owner, id)
			}
			return last, nil
		}
	}
}

// cancelMsg asks a node to cancel a request it runs; cancelReply is its
// answer.
type cancelMsg struct {
	Owner string `json:"owner"`
	ID    string `json:"id"`
}

type cancelReply struct {
	Record json.RawMessage `json:"record,omitempty"`
	Err    string          `json:"err,omitempty"` // not_found, not_pending
}

// Cancel implements signing.Shared: the node that runs the request
// cancels it; when that node is gone, this one adopts it first.
func (s *Store) Cancel(ctx context.Context, owner, id string) (*signing.Record, error) {
	kv, err := s.store()
	if err != nil {
		return nil, err
	}
	gctx, gcancel := opCtx(ctx)
	rec, node, err := s.get(gctx, kv, owner, id)
	gcancel()
	if err != nil {
		return nil, err
	}
	if rec.Status != signing.StatusPending {
		if rec.Status == signing.StatusCancelled {
			return rec, nil
		}
		return rec, signing.ErrNotPending
	}
	if node == s.node {
		// Ours, but not running here (this process is shutting down and
		// left it): only the node that takes it over can cancel it.
		rec, err := s.svc.CancelHere(owner, id)
		if errors.Is(err, signing.ErrNotFound) {
			return nil, signing.ErrClusterUnreachable
		}
		return rec, err
	}
	req, _ := json.Marshal(cancelMsg{Owner: owner, ID: id})
	cctx, cancel := opCtx(ctx)
	defer cancel()
	m, err := s.nc.RequestWithContext(cctx, s.subject(node, "cancel"), req)
	if errors.Is(err, nats.ErrNoResponders) {
		// Its node is gone: take the request over, then cancel it here.
		if s.adopt(ctx, id, node) {
			return s.svc.CancelHere(owner, id)
		}
		// Another node was first, or it ended meanwhile: say what the
		// record says now, once.
		rec, err := s.Get(ctx, owner, id)
		switch {
		case err != nil:
			return nil, err
		case rec.Status == signing.StatusCancelled:
			return rec, nil
		case rec.Status != signing.StatusPending:
			return rec, signing.ErrNotPending
		}
		return nil, signing.ErrClusterUnreachable
	}
	if err != nil {
		return nil, signing.ErrClusterUnreachable
	}
	var rep cancelReply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		return nil, signing.ErrClusterUnreachable
	}
	var out *signing.Record
	if len(rep.Record) > 0 {
		st, err := decodeStored(rep.Record)
		if err != nil {
			return nil, signing.ErrClusterUnreachable
		}
		if out, err = st.record(); err != nil {
			return nil, signing.ErrClusterUnreachable
		}
	}
	switch rep.Err {
	case "":
		return out, nil
	case "not_pending":
		return out, signing.ErrNotPending
	case "unavailable":
		return nil, signing.ErrClusterUnreachable
	}
	return nil, signing.ErrNotFound
}

func (s *Store) onCancel(m *nats.Msg) {
	var req cancelMsg
	if json.Unmarshal(m.Data, &req) != nil || s.svc == nil {
		return
	}
	rec, err := s.svc.CancelHere(req.Owner, req.ID)
	var rep cancelReply
	if rec != nil {
		rep.Record, _ = json.Marshal(toStored(rec, s.node))
	}
	switch {
	case errors.Is(err, signing.ErrNotPending):
		rep.Err = "not_pending"
	case errors.Is(err, signing.ErrNotFound):
		// The caller found it pending here in the store: this process
		// no longer runs it (it is shutting down).
		rep.Err = "unavailable"
	case err != nil:
		rep.Err = "not_found"
	}
	b, _ := json.Marshal(rep)
	_ = m.Respond(b)
}

func (s *Store) onAlive(m *nats.Msg) { _ = m.Respond(nil) }

// reopen makes the bucket again when it is gone (a NATS server without
// persistence restarted): what it held is lost, but the requests this node
// runs go on and new ones are kept again.
func (s *Store) reopen(ctx context.Context) {
	kv, err := s.store()
	if err != nil || !s.nc.IsConnected() {
		return
	}
	ctx, cancel := opCtx(ctx)
	defer cancel()
	if _, err := kv.Status(ctx); errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		s.log.Warn("the request bucket is gone; making it again")
		_ = s.open(ctx)
	}
}

// takeover adopts the pending resources of nodes that no longer answer.
func (s *Store) takeover(ctx context.Context) {
	kv, err := s.store()
	if err != nil || !s.nc.IsConnected() {
		return
	}
	listCtx, cancel := context.WithTimeout(ctx, takeoverEvery)
	defer cancel()
	// Listing makes a JetStream consumer, which needs the stream's
	// leader and the meta leader: when the node that died held one of
	// them, listing fails until a new one is elected (4-9 s). The
	// alive checks go on meanwhile for what the last listing named, so
	// that the node is known gone by then, and its requests are
	// adopted as soon as the record can be read and written again
	// (adopt itself needs only the stream's leader, and checks the
	// record first).
	byNode := s.lastPending
	if lister, err := kv.ListKeysFiltered(listCtx, "p.>"); err == nil {
		byNode = map[string][]string{}
		for k := range lister.Keys() {
			parts := strings.SplitN(k, ".", 3)
			if len(parts) == 3 && parts[1] != s.node {
				byNode[parts[1]] = append(byNode[parts[1]], parts[2])
			}
		}
		_ = lister.Stop()
		s.lastPending = byNode
	}
	for node, ids := range byNode {
		if ctx.Err() != nil || !s.gone(ctx, node) {
			continue
		}
		for _, id := range ids {
			s.adopt(ctx, id, node) // which bounds each operation itself
		}
	}
}

// gone reports whether node gave "no responders" takeoverMisses times in a
// row, missRecheck apart: once could be a node a moment late after a NATS
// restart, whose interest is not back yet.
func (s *Store) gone(ctx context.Context, node string) bool {
	for i := 0; i < takeoverMisses; i++ {
		if i > 0 && !sleep(ctx, missRecheck) {
			return false
		}
		if s.alive(node) {
			return false
		}
	}
	return true
}

// alive reports whether node answers; only "no responders" counts as gone.
func (s *Store) alive(node string) bool {
	_, err := s.nc.Request(s.subject(node, "alive"), nil, aliveTimeout)
	return !errors.Is(err, nats.ErrNoResponders)
}

// adopt takes over the pending request id of dead, the first node to
// swap the record's node winning, and reports whether this node did.
func (s *Store) adopt(ctx context.Context, id, dead string) bool {
	kv, err := s.store()
	if err != nil {
		return false
	}
	ctx, cancel := opCtx(ctx)
	defer cancel()
	e, err := kv.Get(ctx, recordKey(id))
	if err != nil {
		_ = kv.Purge(ctx, pendingKey(dead, id))
		return false
	}
	st, err := decodeStored(e.Value())
	if err != nil || st.Node != dead || st.Status != string(signing.StatusPending) {
		_ = kv.Purge(ctx, pendingKey(dead, id))
		return false
	}
	st.Node = s.node
	rec, err := st.record()
	if err != nil {
		return false
	}
	if !time.Now().Before(rec.Expires) {
		// Over already: record its end for the readers.
		rec.Status, rec.Completed = signing.StatusTimeout, rec.Expires
		st = toStored(rec, s.node)
	}
	b, _ := json.Marshal(st)
	if _, err := kv.Update(ctx, recordKey(id), b, e.Revision()); err != nil {
		return false // another node was first
	}
	_ = kv.Purge(ctx, pendingKey(dead, id))
	if rec.Status != signing.StatusPending {
		s.svc.Journaled(rec, signing.ErrTimeout)
		return false
	}
	if _, err := kv.Put(ctx, pendingKey(s.node, id), nil); err != nil {
		return false
	}
	s.log.Info("adopting a request of a node that is gone", "request_id", id, "from", dead)
	if !s.svc.Adopt(rec) {
		rec.Status, rec.Completed = signing.StatusUnavailable, time.Now()
		s.svc.Journaled(rec, signing.ErrShuttingDown)
		s.Save(rec)
		return false
	}
	return true
}
