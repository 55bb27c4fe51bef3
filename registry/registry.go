// Package registry maps Ed25519 public keys to the live connections that
// hold them. It knows nothing of WebSockets: a connection is anything that
// implements Holder, so a later transport can register key holders that are
// connected to another node.
package registry

import (
	"encoding/binary"
	"sync"

	"github.com/signrelay/signrelay/protocol"
)

// Holder is one live, introduced connection of a key.
type Holder interface {
	// Key is the public key the connection proved it holds.
	Key() protocol.PublicKey
	// SessionID names the connection in logs and in the introduced frame.
	SessionID() string
	// Send queues one encoded frame for the holder without blocking. It
	// returns false when the frame cannot be delivered (the connection is
	// closed, or too slow and being closed); the frame must not be modified
	// afterwards, as it may be shared between holders.
	Send(frame []byte) bool
}

// Same key connected twice: both connections stay registered and both receive
// every request (several tabs or devices). A holder is removed only by Remove,
// which its connection calls when it closes.

const shardCount = 64

// Registry is safe for concurrent use. Its locks are held only while maps
// change, never while a frame is sent.
type Registry struct {
	shards [shardCount]shard
}

type shard struct {
	mu sync.RWMutex
	// guards the following fields
	byKey map[protocol.PublicKey][]Holder
	count int
}

// New returns an empty registry.
func New() *Registry {
	r := &Registry{}
	for i := range r.shards {
		r.shards[i].byKey = make(map[protocol.PublicKey][]Holder)
	}
	return r
}

func (r *Registry) shardOf(k protocol.PublicKey) *shard {
	b := k.Array()
	return &r.shards[binary.LittleEndian.Uint64(b[:8])%shardCount]
}

// Add registers h under its key. Adding the same holder twice is harmless.
func (r *Registry) Add(h Holder) {
	s := r.shardOf(h.Key())
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.byKey[h.Key()]
	for _, x := range list {
		if x == h {
			return
		}
	}
	s.byKey[h.Key()] = append(list, h)
	s.count++
}

// Remove unregisters h and reports whether it was registered. Removing twice
// is harmless.
func (r *Registry) Remove(h Holder) bool {
	s := r.shardOf(h.Key())
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.byKey[h.Key()]
	for i, x := range list {
		if x != h {
			continue
		}
		if len(list) == 1 {
			delete(s.byKey, h.Key())
		} else {
			// Copy rather than shift in place: snapshots handed out by
			// Holders share the old backing array.
			next := make([]Holder, 0, len(list)-1)
			next = append(next, list[:i]...)
			s.byKey[h.Key()] = append(next, list[i+1:]...)
		}
		s.count--
		return true
	}
	return false
}

// Holders returns the live holders of k. The slice is a snapshot that the
// caller may keep and read, but must not modify.
func (r *Registry) Holders(k protocol.PublicKey) []Holder {
	s := r.shardOf(k)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.byKey[k]
}

// Len returns the number of registered holders.
func (r *Registry) Len() int {
	n := 0
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.RLock()
		n += s.count
		s.mu.RUnlock()
	}
	return n
}
