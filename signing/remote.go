package signing

import (
	"github.com/google/uuid"

	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/registry"
)

// Remote is a connection on another node, as a Bus presents it to the
// service: a Holder (its Send does nothing; the bus carries its frames)
// that names its node.
type Remote interface {
	registry.Holder
	Node() string
}

// IsRemote reports whether h is a connection on another node.
func IsRemote(h registry.Holder) bool {
	_, ok := h.(Remote)
	return ok
}

// AddRemote records that h, a connection on another node, received the
// request id made here. It reports false when id is not pending here, so
// that the bus can tell that node the request is over.
func (s *Service) AddRemote(id string, h Remote) bool {
	uid, err := uuid.Parse(id)
	if err != nil {
		return false
	}
	sh := s.shardOf(h.Key())
	sh.mu.Lock()
	p := sh.byID[uid]
	ok := p != nil && p.key == h.Key() && !p.finished
	if ok {
		p.recipients[h] = struct{}{}
	}
	sh.mu.Unlock()
	if ok && p.probe != nil {
		select {
		case p.probe <- true:
		default:
		}
	}
	return ok
}

// RemoteAnswer handles a sign_response that h, a connection on another
// node, gave to the request id made here. Its node has checked that the
// message is the requested one (sig is nil when it was not, and it told
// the key holder so); the signature is verified here, the only place it
// is, since the owner alone decides and the answer crossed the bus. The
// result is the error frame the key holder must get for an answer with a
// signature: invalid_signature when it does not verify, unknown_request
// when the request is over, as on one node; nil when it was taken, or
// when sig is nil.
func (s *Service) RemoteAnswer(id string, h Remote, sig []byte) *protocol.FrameError {
	p, failed := s.remoteRecipient(id, h)
	switch {
	case failed && sig != nil:
		// The same answer again: the error for it was lost on the way.
		return protocol.BadSignature(id)
	case p == nil && sig != nil:
		// Over before the answer came: as on one node.
		return protocol.UnknownRequest(id)
	case p == nil:
		return nil
	}
	told := sig == nil // its node told the key holder
	if told {
		sig = []byte{}
	}
	ferr := s.Respond(h, &protocol.SignResponse{RequestID: id, Message: p.message, Signature: sig})
	if told {
		return nil
	}
	return ferr
}

// RemoteReject handles a sign_reject that h, a connection on another node,
// gave to the request id made here.
func (s *Service) RemoteReject(id string, h Remote, reason string) {
	if p, _ := s.remoteRecipient(id, h); p != nil {
		s.Reject(h, &protocol.SignReject{RequestID: id, Reason: reason})
	}
}

// remoteRecipient finds the pending request id that h may answer. Only a
// node that was handed the request answers for one of its connections, so
// one forgotten meanwhile (its node seemed gone for a moment, say during a
// NATS restart) counts as a recipient again. failed: h answered it with
// a signature that did not verify, and may not answer again.
func (s *Service) remoteRecipient(id string, h Remote) (p *pending, failed bool) {
	uid, err := uuid.Parse(id)
	if err != nil {
		return nil, false
	}
	sh := s.shardOf(h.Key())
	sh.mu.Lock()
	defer sh.mu.Unlock()
	p = sh.byID[uid]
	if p == nil || p.key != h.Key() || p.finished {
		return nil, false
	}
	if _, failed := p.failed[h]; failed {
		return nil, true
	}
	p.recipients[h] = struct{}{}
	return p, false
}

// RemoveRemote forgets h, a connection on another node that closed or
// whose node is gone, as Detach forgets a local one.
func (s *Service) RemoveRemote(h Remote) {
	sh := s.shardOf(h.Key())
	sh.mu.Lock()
	s.forgetLocked(sh, h)
}

// NotHeld reports that no other node holds the key of the probing request
// id: unless a connection turned up meanwhile, it ends as not connected.
func (s *Service) NotHeld(id string, key protocol.PublicKey) {
	uid, err := uuid.Parse(id)
	if err != nil {
		return
	}
	sh := s.shardOf(key)
	sh.mu.Lock()
	p := sh.byID[uid]
	sh.mu.Unlock()
	if p != nil && p.probe != nil {
		select {
		case p.probe <- false:
		default:
		}
	}
}

// PendingOffers returns the requests made here that are pending for k, in
// the order they were made: what a connection of k introduced on another
// node must be handed.
func (s *Service) PendingOffers(k protocol.PublicKey) []Offer {
	sh := s.shardOf(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	kp := sh.byKey[k]
	if kp == nil {
		return nil
	}
	out := make([]Offer, 0, kp.n)
	for p := kp.head; p != nil; p = p.next {
		out = append(out, Offer{ID: p.idStr, Key: p.key, Frame: p.frame, Expires: p.expires, Resource: p.res != nil})
	}
	return out
}

// IsPending reports whether the request id, made here for key k, is still
// pending.
func (s *Service) IsPending(id string, k protocol.PublicKey) bool {
	uid, err := uuid.Parse(id)
	if err != nil {
		return false
	}
	sh := s.shardOf(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	p := sh.byID[uid]
	return p != nil && !p.finished
}
