package registry

import (
	"encoding/binary"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/signrelay/signrelay/protocol"
)

// benchHolders makes n holders with distinct, well-spread keys.
func benchHolders(n int) []*fake {
	hs := make([]*fake, n)
	for i := range hs {
		var b [32]byte
		binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
		binary.LittleEndian.PutUint64(b[8:16], uint64(i))
		k, _ := protocol.PublicKeyFromBytes(b[:])
		hs[i] = &fake{key: k, id: strconv.Itoa(i)}
	}
	return hs
}

// BenchmarkHolders looks up random keys of 19,000 registered holders from
// every P, as POST /sign does once per request.
func BenchmarkHolders(b *testing.B) {
	hs := benchHolders(19000)
	r := New(0)
	for _, h := range hs {
		r.Add(h)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
		for pb.Next() {
			if len(r.Holders(hs[rng.IntN(len(hs))].key)) != 1 {
				b.Error("holder missing")
				return
			}
		}
	})
}

// BenchmarkAddRemove registers and unregisters holders from every P, as
// connections that come and go do.
func BenchmarkAddRemove(b *testing.B) {
	hs := benchHolders(1 << 14)
	r := New(0)
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h := hs[int(next.Add(1))&(len(hs)-1)]
			r.Add(h)
			r.Remove(h)
		}
	})
}

// BenchmarkHoldersUnderChurn looks up keys while 1 in 16 operations adds or
// removes a holder: lookups and registrations contend for the shards.
func BenchmarkHoldersUnderChurn(b *testing.B) {
	hs := benchHolders(19000)
	churn := benchHolders(1 << 12)
	r := New(0)
	for _, h := range hs {
		r.Add(h)
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
		for i := 0; pb.Next(); i++ {
			if i%16 == 0 {
				h := churn[int(next.Add(1))&(len(churn)-1)]
				if i%32 == 0 {
					r.Add(h)
				} else {
					r.Remove(h)
				}
				continue
			}
			_ = r.Holders(hs[rng.IntN(len(hs))].key)
		}
	})
}

// BenchmarkSameKeyAddRemove adds and removes one connection of a key that
// already has eight (eight tabs of one user): the list is copied on remove.
func BenchmarkSameKeyAddRemove(b *testing.B) {
	base := benchHolders(1)[0]
	r := New(0)
	for i := range 8 {
		r.Add(&fake{key: base.key, id: strconv.Itoa(i)})
	}
	extra := &fake{key: base.key, id: "extra"}
	b.ReportAllocs()
	for b.Loop() {
		r.Add(extra)
		r.Remove(extra)
	}
}
