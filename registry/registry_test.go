package registry

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/signrelay/signrelay/protocol"
)

type fake struct {
	key protocol.PublicKey
	id  string
}

func (f *fake) Key() protocol.PublicKey { return f.key }
func (f *fake) SessionID() string       { return f.id }
func (f *fake) Send([]byte) bool        { return true }

func key(b byte) protocol.PublicKey {
	raw := make([]byte, 32)
	raw[0], raw[31] = b, b
	k, _ := protocol.PublicKeyFromBytes(raw)
	return k
}

func TestAddRemove(t *testing.T) {
	r := New(0)
	a1, a2, b := &fake{key(1), "a1"}, &fake{key(1), "a2"}, &fake{key(2), "b"}
	steps := []struct {
		name         string
		do           func()
		wantA, wantB int
		wantLen      int
	}{
		{"empty", func() {}, 0, 0, 0},
		{"add a1", func() { r.Add(a1) }, 1, 0, 1},
		{"same key twice", func() { r.Add(a2) }, 2, 0, 2},
		{"same holder again is harmless", func() { r.Add(a1) }, 2, 0, 2},
		{"other key", func() { r.Add(b) }, 2, 1, 3},
		{"remove a1", func() { r.Remove(a1) }, 1, 1, 2},
		{"remove a1 again is harmless", func() { r.Remove(a1) }, 1, 1, 2},
		{"remove the rest", func() { r.Remove(a2); r.Remove(b) }, 0, 0, 0},
	}
	for _, s := range steps {
		s.do()
		if got := len(r.Holders(key(1))); got != s.wantA {
			t.Fatalf("%s: key 1 has %d holders, want %d", s.name, got, s.wantA)
		}
		if got := len(r.Holders(key(2))); got != s.wantB {
			t.Fatalf("%s: key 2 has %d holders, want %d", s.name, got, s.wantB)
		}
		if r.Len() != s.wantLen {
			t.Fatalf("%s: Len %d, want %d", s.name, r.Len(), s.wantLen)
		}
	}
}

// A snapshot handed out before a Remove is not changed by it.
func TestSnapshotIsStable(t *testing.T) {
	r := New(0)
	hs := []*fake{{key(1), "0"}, {key(1), "1"}, {key(1), "2"}}
	for _, h := range hs {
		r.Add(h)
	}
	snap := r.Holders(key(1))
	r.Remove(hs[0])
	r.Add(&fake{key(1), "3"})
	for i, h := range snap {
		if h.SessionID() != fmt.Sprint(i) {
			t.Fatalf("snapshot changed: %d is %s", i, h.SessionID())
		}
	}
}

func TestConcurrent(t *testing.T) {
	r := New(0)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				h := &fake{key(byte(i % 7)), fmt.Sprint(g, i)}
				r.Add(h)
				for _, x := range r.Holders(h.key) {
					_ = x.SessionID()
				}
				r.Remove(h)
			}
		}(g)
	}
	wg.Wait()
	if r.Len() != 0 {
		t.Fatalf("%d holders left", r.Len())
	}
}

// A key at its maximum refuses one more connection, without touching the
// ones it has or other keys; a slot freed by Remove can be taken again.
func TestMaxPerKey(t *testing.T) {
	r := New(2)
	a1, a2, a3 := &fake{key(1), "a1"}, &fake{key(1), "a2"}, &fake{key(1), "a3"}
	if r.Add(a1) != nil || r.Add(a2) != nil {
		t.Fatal("the first two connections were refused")
	}
	if err := r.Add(a3); err != ErrTooManyConnections {
		t.Fatalf("third connection: %v, want ErrTooManyConnections", err)
	}
	if err := r.Add(a1); err != nil {
		t.Fatalf("adding a registered holder again: %v", err)
	}
	if err := r.Add(&fake{key(2), "b"}); err != nil {
		t.Fatalf("another key was refused: %v", err)
	}
	if r.Count(key(1)) != 2 || r.Len() != 3 {
		t.Fatalf("count %d, len %d", r.Count(key(1)), r.Len())
	}
	r.Remove(a1)
	if err := r.Add(a3); err != nil {
		t.Fatalf("after a removal: %v", err)
	}
	got := map[string]bool{}
	for _, h := range r.Holders(key(1)) {
		got[h.SessionID()] = true
	}
	if !got["a2"] || !got["a3"] || len(got) != 2 {
		t.Fatalf("holders %v, want a2 and a3", got)
	}
}

// A key's set moves between its list-only form and its indexed one as it
// grows past indexAbove and shrinks again; membership, order-independent
// contents, duplicates and removal stay right throughout.
func TestManyHoldersOfOneKey(t *testing.T) {
	r := New(0)
	k := key(7)
	const n = 3 * indexAbove
	hs := make([]*fake, n)
	for i := range hs {
		hs[i] = &fake{key: k, id: string(rune('a' + i))}
		if err := r.Add(hs[i]); err != nil {
			t.Fatal(err)
		}
		if err := r.Add(hs[i]); err != nil { // twice is harmless
			t.Fatal(err)
		}
		if got := r.Count(k); got != i+1 {
			t.Fatalf("after %d adds: count %d", i+1, got)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	order := rng.Perm(n)
	live := map[Holder]bool{}
	for _, h := range hs {
		live[h] = true
	}
	for j, i := range order {
		if !r.Remove(hs[i]) || r.Remove(hs[i]) {
			t.Fatalf("remove %d: first must succeed, second must not", i)
		}
		delete(live, hs[i])
		got := r.Holders(k)
		if len(got) != n-j-1 || r.Len() != n-j-1 {
			t.Fatalf("after %d removals: %d holders, Len %d", j+1, len(got), r.Len())
		}
		for _, h := range got {
			if !live[h] {
				t.Fatalf("after %d removals: %v is listed but was removed", j+1, h)
			}
		}
		if j == n/2 { // grow again from the middle
			if err := r.Add(hs[i]); err != nil {
				t.Fatal(err)
			}
			live[hs[i]] = true
			if !r.Remove(hs[i]) {
				t.Fatal("re-added holder not found")
			}
			delete(live, hs[i])
		}
	}
}
