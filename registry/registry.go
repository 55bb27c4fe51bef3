// Package registry maps Ed25519 public keys to the live connections that
// hold them. It knows nothing of WebSockets: a connection is anything that
// implements Holder, so a later transport can register key holders that are
// connected to another node.
package registry

import (
	"encoding/binary"
	"errors"
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

// ErrTooManyConnections refuses a holder whose key already has the
// registry's maximum of live connections.
var ErrTooManyConnections = errors.New("this key has too many live connections")

// Same key connected twice: both connections stay registered and both receive
// every request (several tabs or devices), up to the registry's maximum per
// key. A holder is removed only by Remove, which its connection calls when it
// closes. Every operation costs O(1) but Holders, which is O(holders of the
// key), so that no key's connections can slow another key down.

const shardCount = 64

// Registry is safe for concurrent use. Its locks are held only while maps
// change, never while a frame is sent.
type Registry struct {
	maxPerKey int
	shards    [shardCount]shard
}

type shard struct {
	mu sync.RWMutex
	// guards the following fields
	byKey map[protocol.PublicKey]*holders
	count int
}

// holders is a set with an order: list for iteration, index for O(1)
// membership and removal (a removed holder's slot takes the last one).
// Most keys have one to a few connections, where scanning list is as
// fast as a map and a map costs about 250 bytes per key: index exists only
// while the key has more than indexAbove holders.
type holders struct {
	list  []Holder
	index map[Holder]int
}

const indexAbove = 8

// find returns h's position in list, or -1.
func (hs *holders) find(h Holder) int {
	if hs.index != nil {
		if i, ok := hs.index[h]; ok {
			return i
		}
		return -1
	}
	for i, x := range hs.list {
		if x == h {
			return i
		}
	}
	return -1
}

func (hs *holders) add(h Holder) {
	hs.list = append(hs.list, h)
	switch {
	case hs.index != nil:
		hs.index[h] = len(hs.list) - 1
	case len(hs.list) > indexAbove:
		hs.index = make(map[Holder]int, len(hs.list))
		for i, x := range hs.list {
			hs.index[x] = i
		}
	}
}

// remove takes out the holder at i, which the last one replaces.
func (hs *holders) remove(i int) {
	h, last := hs.list[i], len(hs.list)-1
	if i != last {
		hs.list[i] = hs.list[last]
		if hs.index != nil {
			hs.index[hs.list[i]] = i
		}
	}
	hs.list[last] = nil
	hs.list = hs.list[:last]
	if hs.index != nil {
		delete(hs.index, h)
		if len(hs.list) <= indexAbove/2 {
			hs.index = nil
		}
	}
}

// New returns an empty registry that admits at most maxPerKey live
// connections per key; 0 means no limit.
func New(maxPerKey int) *Registry {
	r := &Registry{maxPerKey: maxPerKey}
	for i := range r.shards {
		r.shards[i].byKey = make(map[protocol.PublicKey]*holders)
	}
	return r
}

func (r *Registry) shardOf(k protocol.PublicKey) *shard {
	b := k.Array()
	return &r.shards[binary.LittleEndian.Uint64(b[:8])%shardCount]
}

// Add registers h under its key, or returns ErrTooManyConnections when the
// key is at its maximum. Adding the same holder twice is harmless.
func (r *Registry) Add(h Holder) error {
	s := r.shardOf(h.Key())
	s.mu.Lock()
	defer s.mu.Unlock()
	hs := s.byKey[h.Key()]
	if hs == nil {
		hs = &holders{}
		s.byKey[h.Key()] = hs
	}
	if hs.find(h) >= 0 {
		return nil
	}
	if r.maxPerKey > 0 && len(hs.list) >= r.maxPerKey {
		return ErrTooManyConnections
	}
	hs.add(h)
	s.count++
	return nil
}

// Remove unregisters h and reports whether it was registered. Removing twice
// is harmless.
func (r *Registry) Remove(h Holder) bool {
	s := r.shardOf(h.Key())
	s.mu.Lock()
	defer s.mu.Unlock()
	hs := s.byKey[h.Key()]
	if hs == nil {
		return false
	}
	i := hs.find(h)
	if i < 0 {
		return false
	}
	hs.remove(i)
	if len(hs.list) == 0 {
		delete(s.byKey, h.Key())
	}
	s.count--
	return true
}

// Holders returns a copy of the live holders of k, which the caller owns.
func (r *Registry) Holders(k protocol.PublicKey) []Holder {
	s := r.shardOf(k)
	s.mu.RLock()
	defer s.mu.RUnlock()
	hs := s.byKey[k]
	if hs == nil {
		return nil
	}
	return append(make([]Holder, 0, len(hs.list)), hs.list...)
}

// Count returns how many live holders k has.
func (r *Registry) Count(k protocol.PublicKey) int {
	s := r.shardOf(k)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if hs := s.byKey[k]; hs != nil {
		return len(hs.list)
	}
	return 0
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
