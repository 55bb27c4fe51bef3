package httpapi

import (
	"sync"

	"github.com/signrelay/signrelay/protocol"
)

// checkedKeysSize bounds the keys remembered as checked: 32 bytes and a map
// entry each, about 300 KiB.
const checkedKeysSize = 4096

// keySet is a bounded set of public keys; when full, the oldest key added
// makes room. It holds only keys that passed a check, so forgetting one
// costs a check again, never a wrong answer.
type keySet struct {
	mu sync.Mutex
	// guards the following fields
	in   map[protocol.PublicKey]struct{}
	ring []protocol.PublicKey
	next int
}

func newKeySet(n int) *keySet {
	return &keySet{in: make(map[protocol.PublicKey]struct{}, n), ring: make([]protocol.PublicKey, 0, n)}
}

func (s *keySet) has(k protocol.PublicKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.in[k]
	return ok
}

func (s *keySet) add(k protocol.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.in[k]; ok {
		return
	}
	if len(s.ring) < cap(s.ring) {
		s.ring = append(s.ring, k)
	} else {
		delete(s.in, s.ring[s.next])
		s.ring[s.next] = k
		s.next = (s.next + 1) % len(s.ring)
	}
	s.in[k] = struct{}{}
}
