package httpapi

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// limitListener is the relay's front door. It owns three rules that no
// client can break:
//
//   - Accept never fails for a reason a client can cause. Running out of
//     descriptors (EMFILE, ENFILE) or kernel buffers is retried with a
//     backoff, as net/http does, so the relay degrades instead of exiting.
//   - At most max connections are open at once, and at most maxPerIP from
//     one address (IPv6: one /64; trusted proxies are not counted, since
//     every client behind them shares their address). One over either is
//     closed right after accept, before it costs anything but the
//     descriptor for a moment, so that the process keeps headroom below
//     its open-file limit and no single address can take every place.
//   - Every connection starts with a read deadline (the first byte, the
//     TLS handshake and the request headers must come within
//     http.header_timeout); fasthttp moves it on from there.
type limitListener struct {
	net.Listener
	max           int64
	maxPerIP      int
	trusted       []netip.Prefix
	headerTimeout time.Duration
	log           *slog.Logger

	ipMu sync.Mutex
	// guards the following field
	perIP map[string]int // open connections per rateKey, untrusted peers only

	open    atomic.Int64 // connections accepted and not yet closed
	refused atomic.Int64 // connections closed at once for the cap

	lingerMu sync.Mutex
	// guards the following fields
	lingering  int           // lingering closes under way
	lingerStop bool          // shutting down: close without lingering
	lingerIdle chan struct{} // closed when lingering drops to 0 after lingerStop
}

func newLimitListener(ln net.Listener, max, maxPerIP int, trusted []netip.Prefix, headerTimeout time.Duration, log *slog.Logger) *limitListener {
	return &limitListener{Listener: ln, max: int64(max), maxPerIP: maxPerIP, trusted: trusted,
		headerTimeout: headerTimeout, log: log, perIP: make(map[string]int)}
}

// Accept returns the next connection under the cap. It returns an error only
// when the listener itself is closed or broken.
func (l *limitListener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !temporaryAcceptError(err) {
				return nil, err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("accept failed; retrying", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.refuse(c, "connection limit reached; refusing connections", l.max)
			continue
		}
		ip, ok := l.takeIP(c)
		if !ok {
			l.open.Add(-1)
			l.refuse(c, "connection limit per client IP reached; refusing its connections", int64(l.maxPerIP))
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(l.headerTimeout))
		return &trackedConn{Conn: c, l: l, ip: ip}, nil
	}
}

// refuse closes c with a reset (nothing of ours is owed to it) and logs
// once per thousand refusals.
func (l *limitListener) refuse(c net.Conn, msg string, limit int64) {
	if l.refused.Add(1)%1000 == 1 {
		l.log.Warn(msg, "limit", limit, "refused", l.refused.Load())
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// takeIP counts c against its address's share; "" for an address that is
// not counted (a trusted proxy, or no per-IP cap).
func (l *limitListener) takeIP(c net.Conn) (string, bool) {
	if l.maxPerIP <= 0 {
		return "", true
	}
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil || isTrustedProxy(ap.Addr().Unmap(), l.trusted) {
		return "", true
	}
	key := rateKey(ap.Addr())
	l.ipMu.Lock()
	defer l.ipMu.Unlock()
	if l.perIP[key] >= l.maxPerIP {
		return "", false
	}
	l.perIP[key]++
	return key, true
}

func (l *limitListener) giveIP(key string) {
	if key == "" {
		return
	}
	l.ipMu.Lock()
	defer l.ipMu.Unlock()
	if l.perIP[key]--; l.perIP[key] <= 0 {
		delete(l.perIP, key)
	}
}

// Open returns the number of connections currently open.
func (l *limitListener) Open() int { return int(l.open.Load()) }

// waitLingering waits, at most until done is closed, for the lingering
// closes under way; connections closed from now on do not linger.
func (l *limitListener) waitLingering(done <-chan struct{}) {
	l.lingerMu.Lock()
	l.lingerStop = true
	if l.lingering == 0 {
		l.lingerMu.Unlock()
		return
	}
	idle := make(chan struct{})
	l.lingerIdle = idle
	l.lingerMu.Unlock()
	select {
	case <-idle:
	case <-done:
	}
}

// startLinger counts one lingering close, or says no once shutting down.
func (l *limitListener) startLinger() bool {
	l.lingerMu.Lock()
	defer l.lingerMu.Unlock()
	if l.lingerStop {
		return false
	}
	l.lingering++
	return true
}

func (l *limitListener) endLinger() {
	l.lingerMu.Lock()
	defer l.lingerMu.Unlock()
	if l.lingering--; l.lingering == 0 && l.lingerIdle != nil {
		close(l.lingerIdle)
		l.lingerIdle = nil
	}
}

// temporaryAcceptError tells errors that pass (descriptors or memory run
// out, a connection reset before it was accepted) from a closed listener.
func temporaryAcceptError(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO, syscall.EPERM} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// lingerTime and lingerBytes bound what a lingering close reads and
// discards: enough for a client to finish sending a refused body's first
// part and read our answer, never more.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 256 << 10
)

// trackedConn counts toward the listener's cap until it is closed. Close is
// harmless twice. A connection marked with lingerOnClose is closed the way
// a careful server closes one with unread input (nginx's lingering close):
// our side is shut for writing, what the peer still sends is read and
// dropped for a bounded time, and only then is the socket closed, so the
// kernel does not answer the unread bytes with a reset that destroys the
// response before the client has read it.
//
// A connection upgraded to a WebSocket keeps its place among the sockets
// not yet introduced (slot) until it is introduced or closed.
type trackedConn struct {
	net.Conn
	l      *limitListener
	ip     string // the per-IP share it holds, "" for none
	linger atomic.Bool
	slot   atomic.Pointer[introSlot]
	once   sync.Once
}

func (c *trackedConn) lingerOnClose() { c.linger.Store(true) }

func (c *trackedConn) Close() error {
	var err error
	c.once.Do(func() {
		c.slot.Swap(nil).release()
		c.l.giveIP(c.ip)
		tc, ok := c.Conn.(*net.TCPConn)
		if !c.linger.Load() || !ok || !c.l.startLinger() {
			err = c.Conn.Close()
			c.l.open.Add(-1)
			return
		}
		_ = tc.CloseWrite()
		go func() {
			defer c.l.endLinger()
			_ = tc.SetReadDeadline(time.Now().Add(lingerTime))
			_, _ = io.CopyN(io.Discard, tc, lingerBytes)
			_ = tc.Close()
			c.l.open.Add(-1)
		}()
	})
	return err
}

// markLinger asks for a lingering close of the connection under conn.
func markLinger(conn net.Conn) {
	if tc := findTracked(conn); tc != nil {
		tc.lingerOnClose()
	}
}

// findTracked finds the listener's connection under conn, whatever wraps
// it (TLS, or fasthttp's hijack wrapper); nil when conn did not come from a
// limitListener (tests and benchmarks may serve other listeners).
func findTracked(conn net.Conn) *trackedConn {
	for i := 0; conn != nil && i < 4; i++ {
		switch c := conn.(type) {
		case *trackedConn:
			return c
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		case interface{ UnsafeConn() net.Conn }:
			conn = c.UnsafeConn()
		default:
			return nil
		}
	}
	return nil
}
