package signing

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/registry"
)

// benchSigner is a key holder that approves at once: it answers each
// sign_request by calling Service.Respond with a signature made in advance
// (the benchmark always asks for the same message), so the round trip
// measured is the service's: pending map, fan-out, one ed25519.Verify,
// waking the caller. Frames containing "park" are not answered.
type benchSigner struct {
	svc   *Service
	key   protocol.PublicKey
	id    string
	msg   []byte
	sig   []byte
	async chan []byte // nil: answer inside Send, on the caller's goroutine
}

func (h *benchSigner) Key() protocol.PublicKey { return h.key }
func (h *benchSigner) SessionID() string       { return h.id }

func (h *benchSigner) Send(frame []byte) bool {
	if h.async != nil {
		h.async <- frame
		return true
	}
	h.answer(frame)
	return true
}

var requestIDField = []byte(`"request_id":"`)

func (h *benchSigner) answer(frame []byte) {
	if !bytes.Contains(frame, []byte(`"type":"sign_request"`)) || bytes.Contains(frame, []byte(`"description":"park"`)) {
		return
	}
	i := bytes.Index(frame, requestIDField) + len(requestIDField)
	id := string(frame[i : i+36])
	if ferr := h.svc.Respond(h, &protocol.SignResponse{Type: protocol.TypeSignResponse, RequestID: id, Message: h.msg, Signature: h.sig}); ferr != nil {
		panic("benchmark holder refused: " + ferr.Error())
	}
}

// serve answers from its own goroutine, as a connection's reader does.
func (h *benchSigner) serve(wg *sync.WaitGroup) {
	defer wg.Done()
	for f := range h.async {
		h.answer(f)
	}
}

func newBenchSigner(b *testing.B, svc *Service, i int, async bool) *benchSigner {
	b.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, 32)
	_, _ = rand.Read(msg)
	k, _ := protocol.PublicKeyFromBytes(pub)
	h := &benchSigner{svc: svc, key: k, id: "bench-" + strconv.Itoa(i), msg: msg, sig: ed25519.Sign(priv, msg)}
	if async {
		h.async = make(chan []byte, 256)
	}
	return h
}

// benchService starts a service with n holders and stops what it started
// when the benchmark ends.
func benchService(b *testing.B, n int, async bool) (*Service, []*benchSigner) {
	b.Helper()
	svc := New(registry.New(0), Options{MaxPendingPerKey: 1024})
	hs := make([]*benchSigner, n)
	var wg sync.WaitGroup
	for i := range hs {
		hs[i] = newBenchSigner(b, svc, i, async)
		svc.Attach(hs[i])
		if async {
			wg.Add(1)
			go hs[i].serve(&wg)
		}
	}
	b.Cleanup(func() {
		svc.Close()
		for _, h := range hs {
			svc.Detach(h)
			if h.async != nil {
				close(h.async)
			}
		}
		wg.Wait()
	})
	return svc, hs
}

func signOnce(b *testing.B, svc *Service, h *benchSigner) {
	res, err := svc.Sign(context.Background(), Request{Key: h.key, Message: h.msg, Timeout: 10 * time.Second})
	if err != nil {
		b.Error(err)
		return
	}
	if len(res.Signature) != ed25519.SignatureSize {
		b.Error("bad signature length")
	}
}

// BenchmarkSignRoundTrip is one in-process round trip: Sign, the holder
// answers inside Send, Respond verifies and wakes the caller. It includes
// one ed25519.Verify: compare with BenchmarkEd25519Verify.
func BenchmarkSignRoundTrip(b *testing.B) {
	svc, hs := benchService(b, 1, false)
	b.ReportAllocs()
	for b.Loop() {
		signOnce(b, svc, hs[0])
	}
}

// BenchmarkSignRoundTripAsync answers from the holder's own goroutine, as
// a WebSocket reader does: adds a channel hand-off and two wake-ups.
func BenchmarkSignRoundTripAsync(b *testing.B) {
	svc, hs := benchService(b, 1, true)
	b.ReportAllocs()
	for b.Loop() {
		signOnce(b, svc, hs[0])
	}
}

// BenchmarkSignRoundTripParallel runs round trips from every P against 100
// holders, answered from their own goroutines.
func BenchmarkSignRoundTripParallel(b *testing.B) {
	svc, hs := benchService(b, 100, true)
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			signOnce(b, svc, hs[int(next.Add(1))%len(hs)])
		}
	})
}

// BenchmarkSignRoundTripBusyKey is a round trip on a key that already has
// 63 requests pending (the default limit is 64): the pending-request list
// of the key is scanned on every answer.
func BenchmarkSignRoundTripBusyKey(b *testing.B) {
	svc, hs := benchService(b, 1, false)
	ctx, cancel := context.WithCancel(context.Background())
	var parked sync.WaitGroup
	for range 63 {
		parked.Add(1)
		go func() {
			defer parked.Done()
			_, _ = svc.Sign(ctx, Request{Key: hs[0].key, Message: hs[0].msg, Description: "park", Timeout: time.Minute})
		}()
	}
	for svc.Pending() < 63 {
		time.Sleep(time.Millisecond)
	}
	b.Cleanup(func() { cancel(); parked.Wait() })
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		signOnce(b, svc, hs[0])
	}
}

// BenchmarkEd25519Verify is the yardstick, repeated here so that this
// package's run carries its own.
func BenchmarkEd25519Verify(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 32)
	_, _ = rand.Read(msg)
	sig := ed25519.Sign(priv, msg)
	b.ReportAllocs()
	for b.Loop() {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("valid signature refused")
		}
	}
}
