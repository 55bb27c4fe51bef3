package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/signrelay/signrelay/metrics"
	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/registry"
	"github.com/signrelay/signrelay/signing"
)

// Timing of the bus. The contract's promises: a connection that closes
// stops counting everywhere within 1 s (a clean close sends a message at
// once; a dead node is noticed by ownerCheck), and holders of a dead
// owner's requests hear requester_gone within 10 s (holderCheck).
const (
	// settle is how long a request for a key nobody seems to hold waits
	// before asking once more: interest in a subject reaches the other
	// servers of a NATS cluster asynchronously (about a millisecond here).
	settle = 20 * time.Millisecond
	// ownerCheck is how often an owner pings the nodes whose connections
	// hold its requests; holderCheck how often a node that holds requests
	// of other nodes asks their owners about them.
	ownerCheck  = time.Second
	holderCheck = 2 * time.Second
	pingTimeout = time.Second
	// A node is taken for gone after this many checks in a row got "no
	// responders": after a NATS restart the nodes come back one by one,
	// and one that is a moment late is not dead. An owner's holders hear
	// requester_gone within ownerMisses × holderCheck (+ a ping) of its
	// death.
	ownerMisses     = 2
	recipientMisses = 3
	// attachDelay is how long a node that was handed a request waits
	// before it tells the owner which connections have it, so that a key
	// holder that answers within it sends one message (the answer, with
	// the recipients) instead of two; those that do not are reported
	// together, one message per owner. It is well under signing's
	// exhaustGrace (200 ms), the time an owner gives recipients on other
	// nodes to become known before it ends a request whose every known
	// recipient answered invalidly.
	attachDelay = 20 * time.Millisecond
	// attachBatch bounds the size of one attached message (bytes of
	// request ids, keys and sessions): far under any max_payload.
	attachBatch = 4096
	// helloAgain repeats an attach announcement, for owners that had not
	// yet learned of this node's interest when it was first sent.
	helloAgain = 50 * time.Millisecond
	// inboxSize bounds the messages waiting for the key worker.
	inboxSize = 65536
	// maxLife is longer than any request lives (sign.max_timeout is at
	// most 60 s): how long an ended id is remembered when its own deadline
	// is not known.
	maxLife = 70 * time.Second
	// tombMargin keeps an ended id this long past its deadline.
	tombMargin = 10 * time.Second
	// checkers bounds the checks of other nodes that run at once.
	checkers = 16
)

// remote is a connection on another node as the service sees it. It is a
// comparable value: two messages naming the same node and session name the
// same recipient.
type remote struct {
	node, session string
	key           protocol.PublicKey
}

func (r remote) Key() protocol.PublicKey { return r.key }
func (r remote) SessionID() string       { return r.session }
func (r remote) Send([]byte) bool        { return true }
func (r remote) Node() string            { return r.node }

// held is a request of another node delivered to connections here.
type held struct {
	id, owner  string
	key        protocol.PublicKey
	frame      []byte
	message    []byte
	expires    time.Time
	recipients map[registry.Holder]struct{}
	// answered: recipients that gave an answer or a reject; the owner
	// verifies a signature, so a recipient answers once, as on one node.
	// failed: those whose answer is known to be invalid.
	answered map[registry.Holder]struct{}
	failed   map[registry.Holder]struct{}
	// sent: the answers and rejects forwarded to the owner that it has not
	// refused, in order, at most one per recipient: sent again when the
	// owner may have missed them, and handed over with the request.
	sent []*envelope
	// resource: the request outlives its owner; when the owner is gone
	// it is kept for the node that takes it over, not ended.
	resource bool
	// reported: the owner has been told the recipients here, in an
	// attached message or with the first answer; until then the request
	// waits in Bus.attachQ until due.
	reported bool
	due      time.Time
}

// dropSentLocked forgets what session forwarded, and reports whether
// there was anything: a refused answer is not sent again, nor an answer
// of a closed connection (the owner, hearing it late, would count the
// connection as a recipient again).
func (h *held) dropSentLocked(session string) bool {
	kept := h.sent[:0]
	for _, e := range h.sent {
		if e.Session != session {
			kept = append(kept, e)
		}
	}
	dropped := len(kept) < len(h.sent)
	clear(h.sent[len(kept):])
	h.sent = kept
	return dropped
}

// failLocked records that c's answer is invalid.
func (h *held) failLocked(c registry.Holder) {
	if h.failed == nil {
		h.failed = make(map[registry.Holder]struct{}, 1)
	}
	h.failed[c] = struct{}{}
}

// sessionsLocked lists the sessions of h's recipients here.
func (h *held) sessionsLocked() []string {
	ss := make([]string, 0, len(h.recipients))
	for c := range h.recipients {
		ss = append(ss, c.SessionID())
	}
	return ss
}

// Bus is signing.Bus over NATS. The node that takes a POST /sign owns the
// request: it keeps it pending, verifies every answer and decides the end.
// The subscriptions are the directory: a node with a connection of key K
// listens on K's subject, so a request published there reaches every node
// that holds K, and NATS's "no responders" for it means no node does.
//
// Lock order: b.mu is a leaf. Nothing is sent to a connection or the
// service called while it is held.
type Bus struct {
	nc     *nats.Conn
	node   string
	prefix string
	ready  func() bool
	reg    *registry.Registry
	log    *slog.Logger
	// metrics counts the messages; set by SetMetrics before Start.
	metrics *metrics.Metrics

	// Set by Start, then read-only.
	svc   *signing.Service
	inbox chan *nats.Msg
	node0 *nats.Subscription
	kick  chan struct{} // the attacher: attachQ was empty and is not

	stop chan struct{}
	done sync.WaitGroup

	mu sync.Mutex
	// guards the following fields
	keySubs  map[protocol.PublicKey]*nats.Subscription // keys with a local connection
	waitSubs map[protocol.PublicKey]*waitSub           // keys with requests owned here
	heldByID map[string]*held
	heldKeys map[protocol.PublicKey]map[string]*held
	tombs    map[string]time.Time           // holder side: ended ids, until when kept
	ended    map[string]endNote             // owner side: ended ids and their reasons
	remotes  map[string]map[remote]struct{} // owner side: remote recipients by request id
	nodeRefs map[string]int                 // owner side: how many of them each node has
	probes   map[string]*probe              // owner side: requests asking whether any node holds their key
	missed   map[string]int                 // nodes that met "no responders" in the last checks, and how often
	attachQ  []*held                        // holder side: delivered, recipients not reported yet, by due
	closed   bool
	// epoch counts the link's reconnects: a "no responders" for a probe
	// of an earlier epoch says nothing (the others may not be back yet).
	epoch int
}

type probe struct {
	offer  signing.Offer
	silent int // "no responders" answers seen
	epoch  int // the link's epoch when it was offered
}

type waitSub struct {
	sub  *nats.Subscription
	keyS string              // the key's subject
	ids  map[string]struct{} // requests owned here offered for the key
	idle time.Time           // when ids last became empty
}

// waitLinger keeps a key's wait subscription this long after its last
// request ended: a key asked often would otherwise subscribe and
// unsubscribe (two messages for every server of the cluster) per request.
const waitLinger = 30 * time.Second

type endNote struct {
	endInfo
	until time.Time
}

// NewBus returns a bus on the link's connection for the connections in
// reg. Start it with the service before serving.
func NewBus(l *Link, reg *registry.Registry, log *slog.Logger) *Bus {
	return newBus(l.Conn(), l.NodeID(), l.Prefix(), l.Ready, reg, log)
}

func newBus(nc *nats.Conn, node, prefix string, ready func() bool, reg *registry.Registry, log *slog.Logger) *Bus {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Bus{
		nc: nc, node: node, prefix: prefix, ready: ready, reg: reg, log: log.With("node", node),
		stop:     make(chan struct{}),
		kick:     make(chan struct{}, 1),
		keySubs:  make(map[protocol.PublicKey]*nats.Subscription),
		waitSubs: make(map[protocol.PublicKey]*waitSub),
		heldByID: make(map[string]*held),
		heldKeys: make(map[protocol.PublicKey]map[string]*held),
		tombs:    make(map[string]time.Time),
		ended:    make(map[string]endNote),
		remotes:  make(map[string]map[remote]struct{}),
		nodeRefs: make(map[string]int),
		probes:   make(map[string]*probe),
		missed:   make(map[string]int),
	}
}

// keyHash names a key in subjects: 16 bytes of a domain-separated SHA-256,
// so that subjects neither carry keys nor collide in practice.
func keyHash(k protocol.PublicKey) string {
	a := k.Array()
	h := sha256.Sum256(append([]byte("signrelay/v1/subject:"), a[:]...))
	return hex.EncodeToString(h[:16])
}

func (b *Bus) keySubject(k protocol.PublicKey) string  { return b.prefix + ".key." + keyHash(k) }
func (b *Bus) waitSubject(k protocol.PublicKey) string { return b.prefix + ".wait." + keyHash(k) }
func (b *Bus) nodeSubject(node, what string) string    { return b.prefix + ".node." + node + "." + what }

// Start subscribes to this node's own subjects and starts the workers.
func (b *Bus) Start(svc *signing.Service) error {
	b.svc = svc
	b.inbox = make(chan *nats.Msg, inboxSize)
	sub, err := b.nc.Subscribe(b.nodeSubject(b.node, ">"), b.onNodeMsg)
	if err != nil {
		return err
	}
	_ = sub.SetPendingLimits(inboxSize, 256<<20)
	b.node0 = sub
	if err := b.nc.Flush(); err != nil {
		return err
	}
	b.done.Add(3)
	go b.keyWorker()
	go b.maintain()
	go b.attacher()
	return nil
}

// Close stops the workers and every subscription. Harmless twice.
func (b *Bus) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	subs := make([]*nats.Subscription, 0, len(b.keySubs)+len(b.waitSubs)+1)
	for _, s := range b.keySubs {
		subs = append(subs, s)
	}
	for _, w := range b.waitSubs {
		subs = append(subs, w.sub)
	}
	b.mu.Unlock()
	if b.node0 != nil {
		subs = append(subs, b.node0)
	}
	for _, s := range subs {
		_ = s.Unsubscribe()
	}
	_ = b.nc.FlushTimeout(time.Second)
	close(b.stop)
	b.done.Wait()
}

// emptyPing asks a node only whether it is there.
var emptyPing = appendEnvelope(nil, &envelope{T: msgPing})

// Ready implements signing.Bus.
func (b *Bus) Ready() bool { return b.ready() }

// decode decodes an inbound message, counting it.
func (b *Bus) decode(data []byte, e *envelope) error {
	b.metrics.BusIn()
	return decodeEnvelope(data, e)
}

// SetMetrics makes the bus count its messages into m; call it before Start.
func (b *Bus) SetMetrics(m *metrics.Metrics) { b.metrics = m }

func (b *Bus) publish(subject, reply string, e *envelope) {
	bp := wireBufs.Get().(*[]byte)
	data := appendEnvelope((*bp)[:0], e)
	// nats.go copies the message into its write buffer before it returns.
	var err error
	if reply == "" {
		err = b.nc.Publish(subject, data)
	} else {
		err = b.nc.PublishRequest(subject, reply, data)
	}
	if err != nil {
		b.log.Debug("bus: publish failed", "subject", subject, "err", err)
	} else {
		b.metrics.BusOut()
	}
	if cap(data) <= 64<<10 {
		*bp = data
		wireBufs.Put(bp)
	}
}

// --- owner side -----------------------------------------------------------

// Offer implements signing.Bus: the request goes to every node that holds
// its key. Answers about it come back on this node's subject.
func (b *Bus) Offer(o signing.Offer) {
	b.mu.Lock()
	if _, over := b.ended[o.ID]; over || b.closed {
		// Answered by a local connection before it could be offered.
		b.mu.Unlock()
		return
	}
	w := b.waitSubs[o.Key]
	if w == nil && !b.closed {
		sub, err := b.nc.ChanSubscribe(b.waitSubject(o.Key), b.inbox)
		if err == nil {
			w = &waitSub{sub: sub, keyS: b.keySubject(o.Key), ids: make(map[string]struct{})}
			b.waitSubs[o.Key] = w
		}
	}
	subject := ""
	if w != nil {
		w.ids[o.ID] = struct{}{}
		subject = w.keyS
	}
	if o.Probe {
		b.probes[o.ID] = &probe{offer: o, epoch: b.epoch}
	}
	b.mu.Unlock()
	if subject == "" {
		subject = b.keySubject(o.Key)
	}
	b.deliver(subject, o)
}

func (b *Bus) deliver(subject string, o signing.Offer) {
	b.publish(subject, b.nodeSubject(b.node, "r."+o.ID), &envelope{
		T: msgDeliver, ID: o.ID, Key: keyBytes(o.Key), Node: b.node,
		Frame: o.Frame, Expires: o.Expires.UnixMilli(), Resource: o.Resource,
	})
}

func keyBytes(k protocol.PublicKey) []byte {
	a := k.Array()
	return a[:]
}

// End implements signing.Bus: every node holding the key hears that the
// request ended, and cancels it for its recipients but the winner.
func (b *Bus) End(id string, key protocol.PublicKey, reason string, except registry.Holder) {
	if reason == "" {
		// Not connected anywhere (404): a node that was handed it late
		// must still take its card down.
		reason = protocol.CancelTimeout
	}
	b.mu.Lock()
	delete(b.probes, id)
	note := endNote{endInfo: endInfo{Reason: reason}, until: time.Now().Add(maxLife)}
	if r, ok := except.(remote); ok {
		note.WinNode, note.WinSess = r.node, r.session
	}
	// Kept even with no remote recipient known: one's news may still be on
	// its way, and is then answered with how the request really ended.
	b.ended[id] = note
	b.forgetRemotesLocked(id)
	subject := ""
	if w := b.waitSubs[key]; w != nil {
		delete(w.ids, id)
		if len(w.ids) == 0 {
			w.idle = time.Now()
		}
		subject = w.keyS
	}
	b.mu.Unlock()
	if subject == "" {
		subject = b.keySubject(key)
	}
	e := &envelope{T: msgEnd, ID: id, Key: keyBytes(key), Node: b.node, Reason: reason}
	if r, ok := except.(remote); ok {
		e.WinNode, e.WinSess = r.node, r.session
	}
	b.publish(subject, "", e)
}

// onNodeMsg handles what comes to this node's own subjects, in order.
func (b *Bus) onNodeMsg(m *nats.Msg) {
	rest := m.Subject[len(b.nodeSubject(b.node, "")):]
	switch {
	case rest == "ping":
		b.answerPing(m)
		return
	case len(rest) > 2 && rest[:2] == "r.":
		if m.Header.Get("Status") == "503" { // NATS: no responders
			b.noResponders(rest[2:])
			return
		}
	}
	var e envelope
	if b.decode(m.Data, &e) != nil {
		return
	}
	if e.T == msgAttached {
		for _, a := range e.Att {
			b.attached(e.Node, a)
		}
		return
	}
	key, err := protocol.PublicKeyFromBytes(e.Key)
	if err != nil {
		return
	}
	switch e.T {
	case msgAnswer:
		// The recipients there ride with the first answer when it came
		// before they were reported.
		if len(e.Sessions) > 0 && !b.attached(e.Node, attachment{ID: e.ID, Key: e.Key, Sessions: e.Sessions}) {
			return
		}
		r := remote{node: e.Node, session: e.Session, key: key}
		b.noteRemote(e.ID, r)
		if ferr := b.svc.RemoteAnswer(e.ID, r, e.Sig); ferr != nil {
			b.publish(b.nodeSubject(e.Node, "in"), "", &envelope{T: msgRefused, ID: e.ID, Key: e.Key, Node: b.node, Session: e.Session, Reason: ferr.Code})
		}
	case msgReject:
		if len(e.Sessions) > 0 && !b.attached(e.Node, attachment{ID: e.ID, Key: e.Key, Sessions: e.Sessions}) {
			return
		}
		r := remote{node: e.Node, session: e.Session, key: key}
		b.noteRemote(e.ID, r)
		b.svc.RemoteReject(e.ID, r, e.Reason)
	case msgDetached:
		r := remote{node: e.Node, session: e.Session, key: key}
		b.mu.Lock()
		if set := b.remotes[e.ID]; set != nil {
			if _, ok := set[r]; ok {
				delete(set, r)
				b.dropNodeRefLocked(r.node)
			}
		}
		b.mu.Unlock()
		b.svc.RemoveRemote(r)
	case msgDeliver: // a redelivery sent to this node directly
		b.delivered(e, key, m.Reply)
	case msgEnd: // an end sent to this node directly
		b.endHeld(e)
	case msgRefused:
		b.refused(e, key)
	}
}

// attached records remote recipients on node of a request made here, and
// reports whether it is still pending. A node that holds one over by now
// is told so, so that it does not show it.
func (b *Bus) attached(node string, a attachment) bool {
	key, err := protocol.PublicKeyFromBytes(a.Key)
	if err != nil {
		return false
	}
	b.mu.Lock()
	delete(b.probes, a.ID)
	b.mu.Unlock()
	for _, s := range a.Sessions {
		r := remote{node: node, session: s, key: key}
		if b.svc.AddRemote(a.ID, r) {
			b.noteRemote(a.ID, r)
		} else {
			end := b.endOf(a.ID)
			b.publish(b.nodeSubject(node, "in"), "", &envelope{T: msgEnd, ID: a.ID, Key: a.Key, Node: b.node, Reason: end.Reason, WinNode: end.WinNode, WinSess: end.WinSess})
			return false
		}
	}
	return true
}

// noteRemote records r as a recipient of the request id made here, for the
// checks of its node.
func (b *Bus) noteRemote(id string, r remote) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, over := b.ended[id]; over {
		return
	}
	set := b.remotes[id]
	if set == nil {
		set = make(map[remote]struct{}, 1)
		b.remotes[id] = set
	}
	if _, ok := set[r]; !ok {
		set[r] = struct{}{}
		b.nodeRefs[r.node]++
	}
}

func (b *Bus) forgetRemotesLocked(id string) {
	for r := range b.remotes[id] {
		b.dropNodeRefLocked(r.node)
	}
	delete(b.remotes, id)
}

func (b *Bus) dropNodeRefLocked(node string) {
	if b.nodeRefs[node]--; b.nodeRefs[node] <= 0 {
		delete(b.nodeRefs, node)
	}
}

// endOf is how the request id made here ended, as far as this node still
// remembers (an id it does not know ended long ago: timeout).
// reasonUnknown answers a ping about a request this node neither runs
// nor remembers ending: it restarted, or it shut down and left the
// request for another node. A holder's node ends a blocking request then
// (as timed out), and keeps a resource for the node that takes it over.
const reasonUnknown = "unknown"

func (b *Bus) endOf(id string) endInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n, ok := b.ended[id]; ok {
		return n.endInfo
	}
	return endInfo{Reason: reasonUnknown}
}

// noResponders: no node listens on the key of a probing request. Interest
// travels between NATS servers asynchronously, so the first silence gets
// one more try after a short settle; the second says no node holds it.
func (b *Bus) noResponders(id string) {
	b.mu.Lock()
	p := b.probes[id]
	silent := 0
	if p != nil && p.epoch == b.epoch {
		p.silent++
		silent = p.silent
	}
	b.mu.Unlock()
	switch {
	case p == nil: // answered, or over
	case silent == 0:
		// Offered before the link last came back: the nodes that hold
		// the key announce themselves as they return, and are handed it
		// then; until then it waits, as for a key that went away.
	case silent == 1:
		time.AfterFunc(settle, func() {
			b.mu.Lock()
			still := b.probes[id] == p
			b.mu.Unlock()
			if still {
				b.deliver(b.keySubject(p.offer.Key), p.offer)
			}
		})
	default:
		b.mu.Lock()
		delete(b.probes, id)
		b.mu.Unlock()
		b.svc.NotHeld(id, p.offer.Key)
	}
}

// hello: a connection of key was introduced on e.Node; it is handed every
// request made here that is pending for the key.
func (b *Bus) hello(e envelope, key protocol.PublicKey) {
	for _, o := range b.svc.PendingOffers(key) {
		b.deliver(b.nodeSubject(e.Node, "in"), o)
	}
}

// answerPing tells a node that asks about requests made here which have
// ended (and why); an empty ping only proves this node is alive.
func (b *Bus) answerPing(m *nats.Msg) {
	var e envelope
	_ = b.decode(m.Data, &e) // an empty ping (or none) proves this node is alive
	out := envelope{T: msgPong, Node: b.node}
	for id, kb := range e.Refs {
		key, err := protocol.PublicKeyFromBytes(kb)
		if err != nil || b.svc.IsPending(id, key) {
			continue
		}
		if out.Ended == nil {
			out.Ended = make(map[string]endInfo)
		}
		out.Ended[id] = b.endOf(id)
	}
	_ = m.Respond(appendEnvelope(nil, &out))
}

// --- holder side ------------------------------------------------------------

// keyWorker handles the messages of key and wait subjects, one at a time,
// so that a request's delivery and end are handled in the order they came.
func (b *Bus) keyWorker() {
	defer b.done.Done()
	for {
		select {
		case <-b.stop:
			return
		case m := <-b.inbox:
			var e envelope
			if b.decode(m.Data, &e) != nil {
				continue
			}
			key, err := protocol.PublicKeyFromBytes(e.Key)
			if err != nil {
				continue
			}
			switch e.T {
			case msgDeliver:
				b.delivered(e, key, m.Reply)
			case msgEnd:
				b.endHeld(e)
			case msgHello:
				b.hello(e, key)
			}
		}
	}
}

// delivered hands a request of another node to the connections of its key
// here that do not have it yet, and tells the owner which have it now.
func (b *Bus) delivered(e envelope, key protocol.PublicKey, reply string) {
	local := b.reg.Holders(key)
	if len(local) == 0 || e.Node == "" || time.Now().After(time.UnixMilli(e.Expires)) {
		return
	}
	// The message travels once, inside the frame.
	var req struct {
		Message protocol.Bytes `json:"message"`
	}
	if json.Unmarshal(e.Frame, &req) != nil || req.Message == nil {
		return
	}
	b.mu.Lock()
	if _, over := b.tombs[e.ID]; over || b.closed {
		b.mu.Unlock()
		return
	}
	h := b.heldByID[e.ID]
	first := h == nil
	if first {
		h = &held{
			id: e.ID, owner: e.Node, key: key, frame: e.Frame, message: req.Message, resource: e.Resource,
			expires: time.UnixMilli(e.Expires), recipients: make(map[registry.Holder]struct{}, len(local)),
			due: time.Now().Add(attachDelay),
		}
		b.heldByID[e.ID] = h
		if b.heldKeys[key] == nil {
			b.heldKeys[key] = make(map[string]*held)
		}
		b.heldKeys[key][e.ID] = h
	}
	// The same request from another node: its owner died and that node
	// took it over. It is the owner from now on: it is told the
	// recipients here at once, and given the answer sent to the dead one.
	var resend []*envelope
	if !first && h.owner != e.Node {
		b.log.Info("bus: request taken over by another node", "request_id", e.ID, "from", h.owner, "to", e.Node)
		h.owner = e.Node
		h.reported = true
		resend = append(resend, h.sent...)
	}
	var fresh []registry.Holder
	for _, c := range local {
		if _, ok := h.recipients[c]; !ok {
			h.recipients[c] = struct{}{}
			fresh = append(fresh, c)
		}
	}
	// The first delivery is reported with the first answer, or after
	// attachDelay. One that comes again (a redelivery, a re-offer after an
	// outage) is answered at once: its owner may have forgotten them.
	kick := false
	var sessions []string
	if first {
		b.attachQ = append(b.attachQ, h)
		kick = len(b.attachQ) == 1
	} else if h.reported {
		sessions = h.sessionsLocked()
	}
	frame := h.frame
	b.mu.Unlock()
	for _, c := range fresh {
		c.Send(frame)
	}
	if kick {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
	if sessions != nil {
		if reply == "" {
			reply = b.nodeSubject(e.Node, "in")
		}
		b.publish(reply, "", &envelope{T: msgAttached, Node: b.node, Att: []attachment{{ID: e.ID, Key: e.Key, Sessions: sessions}}})
	}
	for _, a := range resend {
		b.publish(b.nodeSubject(e.Node, "in"), "", a)
	}
}

// attacher tells owners which connections here received their requests,
// once attachDelay has passed since a request came and no answer has
// told them already: one attached message per owner for all that are due.
func (b *Bus) attacher() {
	defer b.done.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	type batch struct {
		att  []attachment
		size int
	}
	for {
		now := time.Now()
		wait := time.Duration(-1)
		byOwner := make(map[string][]*batch)
		b.mu.Lock()
		n := 0
		for ; n < len(b.attachQ); n++ {
			h := b.attachQ[n]
			if h.due.After(now) {
				wait = h.due.Sub(now)
				break
			}
			if h.reported || b.heldByID[h.id] != h || len(h.recipients) == 0 {
				continue
			}
			h.reported = true
			a := attachment{ID: h.id, Key: keyBytes(h.key), Sessions: h.sessionsLocked()}
			size := len(a.ID) + len(a.Key) + 8
			for _, s := range a.Sessions {
				size += len(s) + 2
			}
			bs := byOwner[h.owner]
			if len(bs) == 0 || bs[len(bs)-1].size+size > attachBatch {
				bs = append(bs, &batch{})
				byOwner[h.owner] = bs
			}
			last := bs[len(bs)-1]
			last.att = append(last.att, a)
			last.size += size
		}
		clear(b.attachQ[:n])
		b.attachQ = append(b.attachQ[:0], b.attachQ[n:]...)
		b.mu.Unlock()
		for owner, bs := range byOwner {
			for _, bt := range bs {
				b.publish(b.nodeSubject(owner, "in"), "", &envelope{T: msgAttached, Node: b.node, Att: bt.att})
			}
		}
		var timer <-chan time.Time
		if wait >= 0 {
			t.Reset(wait)
			timer = t.C
		}
		select {
		case <-b.stop:
			return
		case <-b.kick:
		case <-timer:
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
	}
}

// endHeld ends a request of another node here: its recipients but the
// winner get sign_cancel, and its id is kept so that a late delivery
// cannot bring it back.
func (b *Bus) endHeld(e envelope) { b.endHeldTomb(e, true) }

// endHeldTomb is endHeld; without tomb the id may be delivered again (its
// owner was only presumed gone, and a delivery from it proves otherwise).
func (b *Bus) endHeldTomb(e envelope, tomb bool) {
	b.mu.Lock()
	if e.Reason == reasonUnknown {
		if h := b.heldByID[e.ID]; h != nil && h.resource {
			// Its owner does not know it any more: the node that takes
			// it over will offer it again.
			b.mu.Unlock()
			return
		}
		e.Reason = protocol.CancelTimeout
	}
	h := b.forgetHeldLocked(e.ID)
	if tomb {
		until := time.Now().Add(maxLife)
		if h != nil {
			until = h.expires.Add(tombMargin)
		}
		b.tombs[e.ID] = until
	}
	b.mu.Unlock()
	if h == nil || e.Reason == "" {
		return
	}
	var cancel []byte // often nobody but the winner is here
	for c := range h.recipients {
		if e.WinNode == b.node && c.SessionID() == e.WinSess {
			continue
		}
		if cancel == nil {
			cancel = protocol.EncodeSignCancel(e.ID, e.Reason)
		}
		c.Send(cancel)
	}
}

func (b *Bus) forgetHeldLocked(id string) *held {
	h := b.heldByID[id]
	if h == nil {
		return nil
	}
	delete(b.heldByID, id)
	if m := b.heldKeys[h.key]; m != nil {
		delete(m, id)
		if len(m) == 0 {
			delete(b.heldKeys, h.key)
		}
	}
	return h
}

// Attached implements signing.Bus: the node listens on the key's subject
// from its first connection on, hands the new connection what it already
// holds for the key, and announces it, so that owners hand it the rest.
func (b *Bus) Attached(c registry.Holder) {
	key := c.Key()
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	subscribed := false
	if b.keySubs[key] == nil {
		sub, err := b.nc.ChanSubscribe(b.keySubject(key), b.inbox)
		if err != nil {
			b.log.Warn("bus: subscribing to a key failed", "key", key.ShortString(), "err", err)
		} else {
			b.keySubs[key] = sub
			subscribed = true
		}
	}
	type give struct {
		id, owner string
		frame     []byte
	}
	var gives []give
	for _, h := range b.heldKeys[key] {
		if _, ok := h.recipients[c]; !ok {
			h.recipients[c] = struct{}{}
			gives = append(gives, give{h.id, h.owner, h.frame})
		}
	}
	b.mu.Unlock()
	if subscribed {
		// The local server knows the interest before "introduced" goes
		// out; its peers learn it within about a millisecond.
		_ = b.nc.FlushTimeout(time.Second)
	}
	for _, g := range gives {
		c.Send(g.frame)
		b.publish(b.nodeSubject(g.owner, "in"), "", &envelope{T: msgAttached, Node: b.node, Att: []attachment{{ID: g.id, Key: keyBytes(key), Sessions: []string{c.SessionID()}}}})
	}
	hello := &envelope{T: msgHello, Key: keyBytes(key), Node: b.node}
	b.publish(b.waitSubject(key), "", hello)
	time.AfterFunc(helloAgain, func() { b.publish(b.waitSubject(key), "", hello) })
}

// Detached implements signing.Bus: owners of requests the connection held
// forget it at once, and the node stops listening on the key with its last
// connection.
func (b *Bus) Detached(c registry.Holder) {
	key := c.Key()
	type tell struct{ id, owner string }
	var tells []tell
	var unsub *nats.Subscription
	b.mu.Lock()
	for _, h := range b.heldKeys[key] {
		if _, ok := h.recipients[c]; ok {
			delete(h.recipients, c)
			delete(h.answered, c)
			delete(h.failed, c)
			h.dropSentLocked(c.SessionID())
			tells = append(tells, tell{h.id, h.owner})
		}
	}
	if b.reg.Count(key) == 0 {
		unsub = b.keySubs[key]
		delete(b.keySubs, key)
		for id := range b.heldKeys[key] {
			b.forgetHeldLocked(id)
		}
	}
	b.mu.Unlock()
	if unsub != nil {
		_ = unsub.Unsubscribe()
	}
	for _, t := range tells {
		b.publish(b.nodeSubject(t.owner, "in"), "", &envelope{T: msgDetached, ID: t.id, Key: keyBytes(key), Node: b.node, Session: c.SessionID()})
	}
}

// heldFor finds the request of another node that c may still answer.
func (b *Bus) heldFor(c registry.Holder, id string) *held {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.heldByID[id]
	if h == nil {
		return nil
	}
	if _, ok := h.recipients[c]; !ok {
		return nil
	}
	if _, done := h.answered[c]; done {
		return nil
	}
	return h
}

// Respond implements signing.Bus. The owner verifies the signature, the
// one verification of a cross-node answer: the key holder hears here at
// once when the answer does not echo the message, and from the owner a
// bus round trip later when its signature does not verify (refused).
func (b *Bus) Respond(c registry.Holder, f *protocol.SignResponse) *protocol.FrameError {
	h := b.heldFor(c, f.RequestID)
	if h == nil {
		return protocol.UnknownRequest(f.RequestID)
	}
	e := &envelope{T: msgAnswer, ID: h.id, Key: keyBytes(h.key), Node: b.node, Session: c.SessionID()}
	ferr := protocol.CheckEcho(h.message, f)
	if ferr == nil {
		e.Sig = f.Signature
	}
	b.mu.Lock()
	if b.heldByID[h.id] != h {
		// Taken over here meanwhile (Adopt): the service has it now.
		b.mu.Unlock()
		return b.svc.Respond(c, f)
	}
	b.answeredLocked(h, c, e, ferr == nil)
	if ferr != nil {
		h.failLocked(c)
	}
	b.mu.Unlock()
	b.publish(b.nodeSubject(h.owner, "in"), "", e)
	return ferr
}

// answeredLocked records that c answered h with e; keep: e is worth
// sending again (not an answer known to be invalid).
func (b *Bus) answeredLocked(h *held, c registry.Holder, e *envelope, keep bool) {
	b.reportWithLocked(h, e)
	if h.answered == nil {
		h.answered = make(map[registry.Holder]struct{}, 1)
	}
	h.answered[c] = struct{}{}
	if keep {
		h.sent = append(h.sent, e)
	}
}

// refused: the owner did not take a recipient's answer, because its
// signature does not verify (invalid_signature) or because the request
// had ended when the answer came (unknown_request, as on one node). The
// key holder gets that error once: the first word on an answer it
// forwarded, or any word once the request has ended here (an invalid
// answer can end it: 502), when there is nothing left to tell by.
func (b *Bus) refused(e envelope, key protocol.PublicKey) {
	var ferr *protocol.FrameError
	switch e.Reason {
	case protocol.CodeInvalidSignature:
		ferr = protocol.BadSignature(e.ID)
	case protocol.CodeUnknownRequest:
		ferr = protocol.UnknownRequest(e.ID)
	default:
		return
	}
	var to registry.Holder
	for _, c := range b.reg.Holders(key) {
		if c.SessionID() == e.Session {
			to = c
			break
		}
	}
	if to == nil {
		return // it closed
	}
	b.mu.Lock()
	if h := b.heldByID[e.ID]; h != nil {
		if !h.dropSentLocked(e.Session) {
			b.mu.Unlock()
			return // a refusal of an answer sent again: the holder heard it
		}
		if ferr.Code == protocol.CodeInvalidSignature {
			h.failLocked(to)
		}
	}
	b.mu.Unlock()
	to.Send(ferr.Frame())
}

// reportWithLocked: the first answer (or reject) carries the recipients
// here when they have not been reported yet.
func (b *Bus) reportWithLocked(h *held, e *envelope) {
	if !h.reported {
		h.reported = true
		e.Sessions = h.sessionsLocked()
	}
}

// Adopt implements signing.Bus: this node takes over request id, which
// it held for a node that died. Its local recipients become the service's
// own (those whose answer was refused stay refused), and the answers and
// rejects they forwarded that the dead owner never refused are handed
// back to be counted, in the order they came.
func (b *Bus) Adopt(id string) signing.Handover {
	b.mu.Lock()
	h := b.forgetHeldLocked(id)
	if h == nil {
		b.mu.Unlock()
		return signing.Handover{}
	}
	var out signing.Handover
	by := make(map[string]registry.Holder, len(h.recipients))
	for c := range h.recipients {
		out.Have = append(out.Have, c)
		if _, bad := h.failed[c]; bad {
			out.Failed = append(out.Failed, c)
		}
		by[c.SessionID()] = c
	}
	sent := h.sent
	b.mu.Unlock()
	for _, e := range sent {
		c := by[e.Session]
		switch {
		case c == nil:
		case e.T == msgAnswer && e.Sig != nil:
			out.Answers = append(out.Answers, signing.Answer{By: c, Response: &protocol.SignResponse{Type: protocol.TypeSignResponse, RequestID: id, Message: h.message, Signature: e.Sig}})
		case e.T == msgReject:
			out.Answers = append(out.Answers, signing.Answer{By: c, Reject: &protocol.SignReject{Type: protocol.TypeSignReject, RequestID: id, Reason: e.Reason}})
		}
	}
	return out
}

// Reject implements signing.Bus.
func (b *Bus) Reject(c registry.Holder, f *protocol.SignReject) *protocol.FrameError {
	h := b.heldFor(c, f.RequestID)
	if h == nil {
		return protocol.UnknownRequest(f.RequestID)
	}
	e := &envelope{T: msgReject, ID: h.id, Key: keyBytes(h.key), Node: b.node, Session: c.SessionID(), Reason: f.Reason}
	b.mu.Lock()
	if b.heldByID[h.id] != h {
		b.mu.Unlock()
		return b.svc.Reject(c, f)
	}
	b.answeredLocked(h, c, e, true)
	b.mu.Unlock()
	b.publish(b.nodeSubject(h.owner, "in"), "", e)
	return nil
}

// --- checks -------------------------------------------------------------

// maintain runs the periodic checks that make up for what core NATS may
// lose (it delivers at most once) and for nodes that die without a word.
func (b *Bus) maintain() {
	defer b.done.Done()
	owners := time.NewTicker(ownerCheck)
	holders := time.NewTicker(holderCheck)
	defer owners.Stop()
	defer holders.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-owners.C:
			b.checkRecipientNodes()
			b.expire()
		case <-holders.C:
			b.checkOwners()
		}
	}
}

// checkRecipientNodes: an owner pings each node whose connections hold its
// requests; a node that no longer answers at all (NATS says no responders:
// its connection is gone) has its connections forgotten, so that its
// holders, reconnecting elsewhere, are what counts.
func (b *Bus) checkRecipientNodes() {
	if !b.ready() {
		return
	}
	b.mu.Lock()
	nodes := make([]string, 0, len(b.nodeRefs))
	for n := range b.nodeRefs {
		nodes = append(nodes, n)
	}
	b.mu.Unlock()
	for _, n := range nodes {
		_, err := b.nc.Request(b.nodeSubject(n, "ping"), emptyPing, pingTimeout)
		if !b.gone("recipients:"+n, err, recipientMisses) {
			continue
		}
		set := make(map[remote]struct{})
		b.mu.Lock()
		for id, rs := range b.remotes {
			for r := range rs {
				if r.node == n {
					set[r] = struct{}{}
					delete(rs, r)
				}
			}
			if len(rs) == 0 {
				delete(b.remotes, id)
			}
		}
		delete(b.nodeRefs, n)
		b.mu.Unlock()
		b.log.Info("bus: node gone; forgetting its connections", "gone", n, "connections", len(set))
		for r := range set {
			b.svc.RemoveRemote(r)
		}
	}
}

// gone counts a check of a node: true once it has met "no responders"
// (nobody listens on its subjects: its NATS connection is gone) misses
// times in a row. Any other answer, even a timeout, resets the count.
func (b *Bus) gone(what string, err error, misses int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !errors.Is(err, nats.ErrNoResponders) {
		delete(b.missed, what)
		return false
	}
	b.missed[what]++
	if b.missed[what] < misses {
		return false
	}
	delete(b.missed, what)
	return true
}

// checkOwners: a node asks each owner of requests it holds which of them
// have ended (an end may have been lost); an owner that is gone ends them
// all with requester_gone.
func (b *Bus) checkOwners() {
	if !b.ready() {
		return
	}
	byOwner := make(map[string]map[string][]byte)
	b.mu.Lock()
	for _, h := range b.heldByID {
		if byOwner[h.owner] == nil {
			byOwner[h.owner] = make(map[string][]byte)
		}
		byOwner[h.owner][h.id] = keyBytes(h.key)
	}
	b.mu.Unlock()
	// One ping per owner a round, several at once: an owner that does not
	// answer must not delay the checks of the others.
	var wg sync.WaitGroup
	slots := make(chan struct{}, checkers)
	for owner, refs := range byOwner {
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			b.checkOwner(owner, refs)
		}()
	}
	wg.Wait()
}

// checkOwner asks owner about the requests refs (id → key) held here.
func (b *Bus) checkOwner(owner string, refs map[string][]byte) {
	req := appendEnvelope(nil, &envelope{T: msgPing, Node: b.node, Refs: refs})
	m, err := b.nc.Request(b.nodeSubject(owner, "ping"), req, pingTimeout)
	switch {
	case b.gone("owner:"+owner, err, ownerMisses):
		b.log.Info("bus: owner gone; ending its blocking requests", "gone", owner, "requests", len(refs))
		for id := range refs {
			b.mu.Lock()
			h := b.heldByID[id]
			keep := h != nil && h.resource
			b.mu.Unlock()
			if keep {
				// Another node takes it over and offers it again; until
				// then, or its deadline, its card stays.
				continue
			}
			// Presumed, not known: a delivery from the owner may still
			// bring the request back here.
			b.endHeldTomb(envelope{ID: id, Reason: protocol.CancelRequesterGone}, false)
		}
	case err == nil:
		var e envelope
		if b.decode(m.Data, &e) != nil {
			return
		}
		for id, end := range e.Ended {
			b.endHeld(envelope{ID: id, Reason: end.Reason, WinNode: end.WinNode, WinSess: end.WinSess})
		}
		// Still pending although answered here: the answer may have
		// been lost; send it again.
		var again []*envelope
		b.mu.Lock()
		for id := range refs {
			if _, over := e.Ended[id]; over {
				continue
			}
			if h := b.heldByID[id]; h != nil {
				again = append(again, h.sent...)
			}
		}
		b.mu.Unlock()
		for _, a := range again {
			b.publish(b.nodeSubject(owner, "in"), "", a)
		}
	}
}

// expire ends held requests past their deadline (their end may have been
// lost) and drops old tombstones and end notes.
func (b *Bus) expire() {
	now := time.Now()
	var late []string
	b.mu.Lock()
	for id, h := range b.heldByID {
		if now.After(h.expires.Add(time.Second)) {
			late = append(late, id)
		}
	}
	for id, until := range b.tombs {
		if now.After(until) {
			delete(b.tombs, id)
		}
	}
	for id, n := range b.ended {
		if now.After(n.until) {
			delete(b.ended, id)
		}
	}
	var unsubs []*nats.Subscription
	for k, w := range b.waitSubs {
		if len(w.ids) == 0 && now.Sub(w.idle) > waitLinger {
			unsubs = append(unsubs, w.sub)
			delete(b.waitSubs, k)
		}
	}
	b.mu.Unlock()
	for _, sub := range unsubs {
		_ = sub.Unsubscribe()
	}
	for _, id := range late {
		b.endHeld(envelope{ID: id, Reason: protocol.CancelTimeout})
	}
}

// Resync announces every key held here again, after the link came back:
// owners hand over what was offered while it was away, and learn again
// which connections have their requests.
func (b *Bus) Resync() {
	b.mu.Lock()
	clear(b.missed) // the others are coming back too
	b.epoch++
	keys := make([]protocol.PublicKey, 0, len(b.keySubs))
	for k := range b.keySubs {
		keys = append(keys, k)
	}
	b.mu.Unlock()
	for _, k := range keys {
		b.publish(b.waitSubject(k), "", &envelope{T: msgHello, Key: keyBytes(k), Node: b.node})
	}
	b.mu.Lock()
	owned := make([]protocol.PublicKey, 0, len(b.waitSubs))
	for k := range b.waitSubs {
		owned = append(owned, k)
	}
	b.mu.Unlock()
	for _, k := range owned {
		for _, o := range b.svc.PendingOffers(k) {
			b.deliver(b.keySubject(k), o)
		}
	}
}
