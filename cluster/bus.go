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

// Message types on the bus.
const (
	msgDeliver  = "deliver"  // owner → key holders' nodes: a request
	msgAttached = "attached" // holder node → owner: connections that received it
	msgAnswer   = "answer"   // holder node → owner: a sign_response (sig nil: did not verify there)
	msgReject   = "reject"   // holder node → owner: a sign_reject
	msgDetached = "detached" // holder node → owner: a recipient closed
	msgEnd      = "end"      // owner → key holders' nodes: the request ended
	msgHello    = "hello"    // holder node → owners: a connection of the key was introduced
)

// envelope is every message of the bus, as JSON. Keys travel whole; the
// subjects carry only their hash.
type envelope struct {
	T        string             `json:"t"`
	ID       string             `json:"id,omitempty"`
	Key      []byte             `json:"key,omitempty"`
	Node     string             `json:"node,omitempty"` // the sender
	Session  string             `json:"session,omitempty"`
	Sessions []string           `json:"sessions,omitempty"`
	Frame    json.RawMessage    `json:"frame,omitempty"`
	Sig      []byte             `json:"sig,omitempty"`
	Reason   string             `json:"reason,omitempty"`
	Expires  int64              `json:"exp,omitempty"` // unix milliseconds
	WinNode  string             `json:"win_node,omitempty"`
	WinSess  string             `json:"win_session,omitempty"`
	Refs     map[string][]byte  `json:"refs,omitempty"` // request id → key, in pings
	Ended    map[string]endInfo `json:"ended,omitempty"`
}

// endInfo is how a request ended, as a ping's answer tells it: the reason
// for its recipients, and the winner, who must not hear it.
type endInfo struct {
	Reason  string `json:"reason"`
	WinNode string `json:"win_node,omitempty"`
	WinSess string `json:"win_session,omitempty"`
}

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
	failed     map[registry.Holder]struct{}
	sent       *envelope // a valid answer or a reject forwarded to the owner
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

	// Set by Start, then read-only.
	svc   *signing.Service
	inbox chan *nats.Msg
	node0 *nats.Subscription

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
	b.done.Add(2)
	go b.keyWorker()
	go b.maintain()
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

// Ready implements signing.Bus.
func (b *Bus) Ready() bool { return b.ready() }

func (b *Bus) publish(subject, reply string, e *envelope) {
	data, err := json.Marshal(e)
	if err != nil {
		b.log.Error("bus: encoding a message", "err", err)
		return
	}
	m := &nats.Msg{Subject: subject, Reply: reply, Data: data}
	if err := b.nc.PublishMsg(m); err != nil {
		b.log.Debug("bus: publish failed", "subject", subject, "err", err)
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
			w = &waitSub{sub: sub, ids: make(map[string]struct{})}
			b.waitSubs[o.Key] = w
		}
	}
	if w != nil {
		w.ids[o.ID] = struct{}{}
	}
	if o.Probe {
		b.probes[o.ID] = &probe{offer: o, epoch: b.epoch}
	}
	b.mu.Unlock()
	b.deliver(b.keySubject(o.Key), o)
}

func (b *Bus) deliver(subject string, o signing.Offer) {
	b.publish(subject, b.nodeSubject(b.node, "r."+o.ID), &envelope{
		T: msgDeliver, ID: o.ID, Key: keyBytes(o.Key), Node: b.node,
		Frame: o.Frame, Expires: o.Expires.UnixMilli(),
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
	if w := b.waitSubs[key]; w != nil {
		delete(w.ids, id)
		if len(w.ids) == 0 {
			w.idle = time.Now()
		}
	}
	b.mu.Unlock()
	e := &envelope{T: msgEnd, ID: id, Key: keyBytes(key), Node: b.node, Reason: reason}
	if r, ok := except.(remote); ok {
		e.WinNode, e.WinSess = r.node, r.session
	}
	b.publish(b.keySubject(key), "", e)
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
	if json.Unmarshal(m.Data, &e) != nil {
		return
	}
	key, err := protocol.PublicKeyFromBytes(e.Key)
	if err != nil {
		return
	}
	switch e.T {
	case msgAttached:
		b.attached(e, key)
	case msgAnswer:
		r := remote{node: e.Node, session: e.Session, key: key}
		b.noteRemote(e.ID, r)
		b.svc.RemoteAnswer(e.ID, r, e.Sig)
	case msgReject:
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
	}
}

// attached records remote recipients of a request made here. One that is
// over by now is told so, so that its node does not show it.
func (b *Bus) attached(e envelope, key protocol.PublicKey) {
	b.mu.Lock()
	delete(b.probes, e.ID)
	b.mu.Unlock()
	for _, s := range e.Sessions {
		r := remote{node: e.Node, session: s, key: key}
		if b.svc.AddRemote(e.ID, r) {
			b.noteRemote(e.ID, r)
		} else {
			end := b.endOf(e.ID)
			b.publish(b.nodeSubject(e.Node, "in"), "", &envelope{T: msgEnd, ID: e.ID, Key: e.Key, Node: b.node, Reason: end.Reason, WinNode: end.WinNode, WinSess: end.WinSess})
			return
		}
	}
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
func (b *Bus) endOf(id string) endInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n, ok := b.ended[id]; ok {
		return n.endInfo
	}
	return endInfo{Reason: protocol.CancelTimeout}
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
	_ = json.Unmarshal(m.Data, &e)
	out := envelope{T: "pong", Node: b.node}
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
	data, _ := json.Marshal(&out)
	_ = m.Respond(data)
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
			if json.Unmarshal(m.Data, &e) != nil {
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
	if h == nil {
		h = &held{
			id: e.ID, owner: e.Node, key: key, frame: []byte(e.Frame), message: req.Message,
			expires: time.UnixMilli(e.Expires), recipients: make(map[registry.Holder]struct{}),
		}
		b.heldByID[e.ID] = h
		if b.heldKeys[key] == nil {
			b.heldKeys[key] = make(map[string]*held)
		}
		b.heldKeys[key][e.ID] = h
	}
	var fresh []registry.Holder
	sessions := make([]string, 0, len(local))
	for _, c := range local {
		if _, ok := h.recipients[c]; !ok {
			h.recipients[c] = struct{}{}
			fresh = append(fresh, c)
		}
		sessions = append(sessions, c.SessionID())
	}
	frame := h.frame
	b.mu.Unlock()
	for _, c := range fresh {
		c.Send(frame)
	}
	if reply == "" {
		reply = b.nodeSubject(e.Node, "in")
	}
	b.publish(reply, "", &envelope{T: msgAttached, ID: e.ID, Key: e.Key, Node: b.node, Sessions: sessions})
}

// endHeld ends a request of another node here: its recipients but the
// winner get sign_cancel, and its id is kept so that a late delivery
// cannot bring it back.
func (b *Bus) endHeld(e envelope) { b.endHeldTomb(e, true) }

// endHeldTomb is endHeld; without tomb the id may be delivered again (its
// owner was only presumed gone, and a delivery from it proves otherwise).
func (b *Bus) endHeldTomb(e envelope, tomb bool) {
	b.mu.Lock()
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
	cancel := protocol.EncodeSignCancel(e.ID, e.Reason)
	for c := range h.recipients {
		if e.WinNode == b.node && c.SessionID() == e.WinSess {
			continue
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
		b.publish(b.nodeSubject(g.owner, "in"), "", &envelope{T: msgAttached, ID: g.id, Key: keyBytes(key), Node: b.node, Sessions: []string{c.SessionID()}})
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
			delete(h.failed, c)
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
	if _, bad := h.failed[c]; bad {
		return nil
	}
	return h
}

// Respond implements signing.Bus. The answer is checked here, so that the
// key holder hears about a bad signature at once; the owner checks it
// again and decides.
func (b *Bus) Respond(c registry.Holder, f *protocol.SignResponse) *protocol.FrameError {
	h := b.heldFor(c, f.RequestID)
	if h == nil {
		return protocol.UnknownRequest(f.RequestID)
	}
	e := &envelope{T: msgAnswer, ID: h.id, Key: keyBytes(h.key), Node: b.node, Session: c.SessionID()}
	ferr := protocol.CheckAnswer(h.key, h.message, f)
	if ferr == nil {
		e.Sig = f.Signature
	}
	b.mu.Lock()
	if ferr != nil {
		if h.failed == nil {
			h.failed = make(map[registry.Holder]struct{})
		}
		h.failed[c] = struct{}{}
	} else if h.sent == nil {
		h.sent = e
	}
	b.mu.Unlock()
	b.publish(b.nodeSubject(h.owner, "in"), "", e)
	return ferr
}

// Reject implements signing.Bus.
func (b *Bus) Reject(c registry.Holder, f *protocol.SignReject) *protocol.FrameError {
	h := b.heldFor(c, f.RequestID)
	if h == nil {
		return protocol.UnknownRequest(f.RequestID)
	}
	e := &envelope{T: msgReject, ID: h.id, Key: keyBytes(h.key), Node: b.node, Session: c.SessionID(), Reason: f.Reason}
	b.mu.Lock()
	if h.sent == nil {
		h.sent = e
	}
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
		_, err := b.nc.Request(b.nodeSubject(n, "ping"), []byte(`{}`), pingTimeout)
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
	req, _ := json.Marshal(&envelope{T: "ping", Node: b.node, Refs: refs})
	m, err := b.nc.Request(b.nodeSubject(owner, "ping"), req, pingTimeout)
	switch {
	case b.gone("owner:"+owner, err, ownerMisses):
		b.log.Info("bus: owner gone; ending its requests", "gone", owner, "requests", len(refs))
		for id := range refs {
			// Presumed, not known: a delivery from the owner may still
			// bring the request back here.
			b.endHeldTomb(envelope{ID: id, Reason: protocol.CancelRequesterGone}, false)
		}
	case err == nil:
		var e envelope
		if json.Unmarshal(m.Data, &e) != nil {
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
			if h := b.heldByID[id]; h != nil && h.sent != nil {
				again = append(again, h.sent)
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
