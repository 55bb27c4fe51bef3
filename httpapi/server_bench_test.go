package httpapi

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

const benchAPIKey = "bench-api-key-0123456789abcdef"

// benchRelay is a real Server (the same New and Serve as the binary) on an
// in-memory or loopback listener, with rate limits off.
type benchRelay struct {
	srv  *Server
	dial func() (net.Conn, error)
	addr string
}

func startBenchRelay(b *testing.B, inMemory bool) *benchRelay {
	b.Helper()
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.APIKeys = config.BareKeys(benchAPIKey)
	cfg.RateLimits.Enabled = false
	cfg.ShutdownGrace = config.Duration(time.Second)
	cfg.LogLevel = "warn"
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	srv, err := New(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	r := &benchRelay{srv: srv}
	var ln net.Listener
	if inMemory {
		mem := fasthttputil.NewInmemoryListener()
		ln, r.dial, r.addr = mem, mem.Dial, "relay.bench"
	} else {
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			b.Fatal(err)
		}
		r.addr = ln.Addr().String()
		r.dial = func() (net.Conn, error) { return net.Dial("tcp", r.addr) }
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = ln.Close()
		<-served
	})
	return r
}

// benchKeyHolder is a key holder on a real WebSocket (fasthttp/websocket's
// client) that approves every request. The benchmark always asks it for the
// same message, so it answers with a signature made in advance: the
// holder's own cost stays small and the relay still verifies every answer.
type benchKeyHolder struct {
	pub64 string
	body  []byte // the POST /sign body for this holder
	conn  *websocket.Conn
	done  chan struct{}
}

func connectBenchHolder(b *testing.B, r *benchRelay) *benchKeyHolder {
	b.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 32)
	_, _ = rand.Read(msg)
	d := websocket.Dialer{NetDial: func(string, string) (net.Conn, error) { return r.dial() }, HandshakeTimeout: 10 * time.Second}
	conn, resp, err := d.Dial("ws://"+r.addr+"/ws", nil)
	if err != nil {
		b.Fatal(err)
	}
	_ = resp.Body.Close()
	var ch struct {
		Nonce protocol.Bytes `json:"nonce"`
	}
	if err := conn.ReadJSON(&ch); err != nil {
		b.Fatal(err)
	}
	intro, _ := json.Marshal(protocol.Introduction{
		Type: protocol.TypeIntroduction, PublicKey: protocol.Bytes(pub),
		Signature: ed25519.Sign(priv, protocol.IntroductionMessage(ch.Nonce)),
	})
	if err := conn.WriteMessage(websocket.TextMessage, intro); err != nil {
		b.Fatal(err)
	}
	if _, data, err := conn.ReadMessage(); err != nil || !bytes.Contains(data, []byte(`"introduced"`)) {
		b.Fatalf("introduction: %s %v", data, err)
	}
	h := &benchKeyHolder{pub64: base64.StdEncoding.EncodeToString(pub), conn: conn, done: make(chan struct{})}
	m64 := base64.StdEncoding.EncodeToString(msg)
	h.body = []byte(`{"public_key":"` + h.pub64 + `","message":"` + m64 + `","timeout_ms":10000}`)
	answer := []byte(`","message":"` + m64 + `","signature":"` + base64.StdEncoding.EncodeToString(ed25519.Sign(priv, msg)) + `"}`)
	go h.serve(answer)
	return h
}

var benchRequestID = []byte(`"request_id":"`)

func (h *benchKeyHolder) serve(answer []byte) {
	defer close(h.done)
	out := make([]byte, 0, 256)
	for {
		_, data, err := h.conn.ReadMessage()
		if err != nil {
			return
		}
		if !bytes.Contains(data, []byte(`"sign_request"`)) {
			continue
		}
		i := bytes.Index(data, benchRequestID) + len(benchRequestID)
		out = append(out[:0], `{"type":"sign_response","request_id":"`...)
		out = append(out, data[i:i+36]...)
		out = append(out, answer...)
		if err := h.conn.WriteMessage(websocket.TextMessage, out); err != nil {
			return
		}
	}
}

// benchRoundTrip drives POST /sign from 64 concurrent backends against
// holders answering over WebSocket. ns/op and allocs/op are for the whole
// process: relay, HTTP client and holders.
func benchRoundTrip(b *testing.B, inMemory bool, holders int) {
	r := startBenchRelay(b, inMemory)
	hs := make([]*benchKeyHolder, holders)
	for i := range hs {
		hs[i] = connectBenchHolder(b, r)
	}
	b.Cleanup(func() {
		for _, h := range hs {
			_ = h.conn.Close()
			<-h.done
		}
	})
	hc := &fasthttp.HostClient{
		Addr:     r.addr,
		Dial:     func(string) (net.Conn, error) { return r.dial() },
		MaxConns: 64,
	}
	defer hc.CloseIdleConnections()
	var next atomic.Int64
	var failed atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(32) // 64 backends on this 2-core machine
	b.ResetTimer()
	cpu0 := processCPU()
	defer func() { b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op") }()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://" + r.addr + "/sign")
		req.Header.SetMethod(fasthttp.MethodPost)
		req.Header.Set("Authorization", "Bearer "+benchAPIKey)
		for pb.Next() {
			h := hs[int(next.Add(1))%len(hs)]
			req.SetBodyRaw(h.body)
			if err := hc.DoTimeout(req, resp, 15*time.Second); err != nil || resp.StatusCode() != 200 {
				if failed.Add(1) == 1 {
					b.Errorf("POST /sign: %d %s %v", resp.StatusCode(), resp.Body(), err)
				}
			}
		}
	})
}

// processCPU is the CPU time (user + system) this process has used: with
// parallel benchmarks ns/op is wall time, cpu-ns/op is what an op costs.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRoundTripInMemory is the whole round trip without a network:
// HTTP request, routing, JSON, sign_request over WebSocket, the holder's
// sign_response, one ed25519.Verify, the HTTP answer.
func BenchmarkRoundTripInMemory(b *testing.B) { benchRoundTrip(b, true, 100) }

// BenchmarkRoundTripLoopback is the same over 127.0.0.1 TCP: adds the
// kernel's share and the relay's disconnect watch on real sockets.
func BenchmarkRoundTripLoopback(b *testing.B) { benchRoundTrip(b, false, 100) }

// BenchmarkIdleConn opens b.N introduced connections over loopback with a
// minimal client that keeps nothing but its socket, and reports the
// process's heap and goroutine-stack growth per connection (mostly the
// relay's: the client side holds about 0.5 KiB of socket state).
func BenchmarkIdleConn(b *testing.B) {
	r := startBenchRelay(b, false)
	var conns []net.Conn
	b.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	seed := priv.Seed()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		binary.LittleEndian.PutUint64(seed, uint64(i))
		c, err := rawIntroduce(r, ed25519.NewKeyFromSeed(seed))
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
	}
	b.StopTimer()
	for deadline := time.Now().Add(10 * time.Second); r.srv.Registry().Len() < b.N && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N), "heap-B/conn")
	b.ReportMetric(float64(int64(after.StackInuse)-int64(before.StackInuse))/float64(b.N), "stack-B/conn")
}

// rawIntroduce opens one WebSocket by hand and introduces key; it returns
// the bare socket, with no buffer or goroutine attached.
func rawIntroduce(r *benchRelay, key ed25519.PrivateKey) (net.Conn, error) {
	c, err := r.dial()
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: "+r.addr+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	var buf [1024]byte
	n, off := 0, -1
	for off < 0 {
		m, err := c.Read(buf[n:])
		if err != nil {
			_ = c.Close()
			return nil, err
		}
		n += m
		off = bytes.Index(buf[:n], []byte("\r\n\r\n"))
	}
	payload, rest, err := rawReadFrame(c, buf[off+4:n])
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	var ch struct {
		Nonce protocol.Bytes `json:"nonce"`
	}
	if err := json.Unmarshal(payload, &ch); err != nil {
		_ = c.Close()
		return nil, err
	}
	intro, _ := json.Marshal(protocol.Introduction{
		Type: protocol.TypeIntroduction, PublicKey: protocol.Bytes(key.Public().(ed25519.PublicKey)),
		Signature: ed25519.Sign(key, protocol.IntroductionMessage(ch.Nonce)),
	})
	frame := append([]byte{0x81, 0x80 | 126, byte(len(intro) >> 8), byte(len(intro)), 0, 0, 0, 0}, intro...) // zero mask
	if _, err := c.Write(frame); err != nil {
		_ = c.Close()
		return nil, err
	}
	payload, _, err = rawReadFrame(c, rest)
	if err != nil || !bytes.Contains(payload, []byte(`"introduced"`)) {
		_ = c.Close()
		return nil, errors.Join(errors.New("not introduced: "+string(payload)), err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// rawReadFrame reads one small unmasked server frame, starting with the
// bytes already read; it returns the payload and what followed it.
func rawReadFrame(c net.Conn, have []byte) (payload, rest []byte, err error) {
	buf := append(make([]byte, 0, 512), have...)
	for {
		if n, hdr, ok := rawFrameLen(buf); ok && len(buf) >= hdr+n {
			return buf[hdr : hdr+n], buf[hdr+n:], nil
		}
		var tmp [512]byte
		m, err := c.Read(tmp[:])
		if err != nil {
			return nil, nil, err
		}
		buf = append(buf, tmp[:m]...)
	}
}

func rawFrameLen(buf []byte) (n, hdr int, ok bool) {
	if len(buf) < 2 {
		return 0, 0, false
	}
	switch n = int(buf[1] & 0x7f); n {
	case 126:
		if len(buf) < 4 {
			return 0, 0, false
		}
		return int(binary.BigEndian.Uint16(buf[2:4])), 4, true
	case 127:
		return 1 << 30, 10, true // never sent here: fails the caller's read
	}
	return n, 2, true
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
