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
// message is the requested one (sig is nil when it was not, or when the
// signature did not verify there); the signature is verified here again,
// since only the owner decides.
func (s *Service) RemoteAnswer(id string, h Remote, sig []byte) {
	p := s.remoteRecipient(id, h)
	if p == nil {
		return
	}
	if sig == nil {
		sig = []byte{}
	}
	s.Respond(h, &protocol.SignResponse{RequestID: id, Message: p.message, Signature: sig})
}

// RemoteReject handles a sign_reject that h, a connection on another node,
// gave to the request id made here.
func (s *Service) RemoteReject(id string, h Remote, reason string) {
	if s.remoteRecipient(id, h) != nil {
		s.Reject(h, &protocol.SignReject{RequestID: id, Reason: reason})
	}
}

// remoteRecipient finds the pending request id that h may answer. Only a
// node that was handed the request answers for one of its connections, so
// one forgotten meanwhile (its node seemed gone for a moment, say during a
// NATS restart) counts as a recipient again.
func (s *Service) remoteRecipient(id string, h Remote) *pending {
	uid, err := uuid.Parse(id)
	if err != nil {
		return nil
	}
	sh := s.shardOf(h.Key())
	sh.mu.Lock()
	defer sh.mu.Unlock()
	p := sh.byID[uid]
	if p == nil || p.key != h.Key() || p.finished {
		return nil
	}
	if _, failed := p.failed[h]; failed {
		return nil
	}
	p.recipients[h] = struct{}{}
	return p
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
