package httpapi

import (
	"errors"
	"io"
	"log/slog"
	"net"
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
//   - At most max connections are open at once. One over that is closed
//     right after accept, before it costs anything but the descriptor for
//     a moment, so that the process keeps headroom below its open-file
//     limit for its own files and the connections it already serves.
//   - Every connection starts with a read deadline (the first byte, the
//     TLS handshake and the request headers must come within
//     http.header_timeout); fasthttp moves it on from there.
type limitListener struct {
	net.Listener
	max           int64
	headerTimeout time.Duration
	log           *slog.Logger

	open      atomic.Int64 // connections accepted and not yet closed
	refused   atomic.Int64 // connections closed at once for the cap
	lingering sync.WaitGroup
}

func newLimitListener(ln net.Listener, max int, headerTimeout time.Duration, log *slog.Logger) *limitListener {
	return &limitListener{Listener: ln, max: int64(max), headerTimeout: headerTimeout, log: log}
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
			if l.refused.Add(1)%1000 == 1 {
				l.log.Warn("connection limit reached; refusing connections", "limit", l.max, "refused", l.refused.Load())
			}
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // a reset: nothing of ours to deliver
			}
			_ = c.Close()
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(l.headerTimeout))
		return &trackedConn{Conn: c, l: l}, nil
	}
}

// Open returns the number of connections currently open.
func (l *limitListener) Open() int { return int(l.open.Load()) }

// waitLingering waits, at most until done is closed, for the lingering
// closes under way.
func (l *limitListener) waitLingering(done <-chan struct{}) {
	finished := make(chan struct{})
	go func() { l.lingering.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-done:
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
	linger atomic.Bool
	slot   atomic.Pointer[introSlot]
	once   sync.Once
}

func (c *trackedConn) lingerOnClose() { c.linger.Store(true) }

func (c *trackedConn) Close() error {
	var err error
	c.once.Do(func() {
		c.slot.Swap(nil).release()
		tc, ok := c.Conn.(*net.TCPConn)
		if !c.linger.Load() || !ok {
			err = c.Conn.Close()
			c.l.open.Add(-1)
			return
		}
		_ = tc.CloseWrite()
		c.l.lingering.Add(1)
		go func() {
			defer c.l.lingering.Done()
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
