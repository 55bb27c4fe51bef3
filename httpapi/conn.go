package httpapi

import (
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fasthttp/websocket"
	"golang.org/x/time/rate"

	"github.com/signrelay/signrelay/protocol"
)

const (
	closeWait     = 2 * time.Second // the peer's answer to our close frame
	badFrameBurst = 20              // bad frames tolerated at once before 1008
)

// holderConn is one key-holder WebSocket. One goroutine (the handler's) reads.
// Writes after the handshake go through a bounded queue; a writer goroutine
// runs only while the queue has frames, so an idle connection costs one
// goroutine, and a slow reader on the other end never blocks ours.
type holderConn struct {
	srv       *Server
	ws        *websocket.Conn
	ip        string
	badFrames *rate.Limiter
	key       protocol.PublicKey // set once introduced, then read-only
	session   string

	mu sync.Mutex
	// guards the following fields
	queue     [][]byte
	held      bool // frames wait in queue until release (during the handshake)
	writing   bool // a writer goroutine is draining queue
	closeCode int  // set once: send this close frame after the queue
	closeMsg  string
	closed    bool // no more frames are accepted
	pinger    *time.Timer

	writers sync.WaitGroup
	ending  atomic.Bool // a close is under way: stop extending the read deadline
}

func newHolderConn(s *Server, ws *websocket.Conn, ip string) *holderConn {
	return &holderConn{
		srv:       s,
		ws:        ws,
		ip:        ip,
		badFrames: rate.NewLimiter(1, badFrameBurst),
		held:      true,
	}
}

// logger is built when something is logged, not kept: with tens of
// thousands of idle connections a logger each is memory for nothing.
func (c *holderConn) logger() *slog.Logger {
	if c.session == "" {
		return c.srv.log.With("remote", c.ip)
	}
	return c.srv.log.With("remote", c.ip, "key", c.key.ShortString(), "session", c.session)
}

// release lets queued frames flow once the handshake is done.
func (c *holderConn) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held = false
	if len(c.queue) > 0 || c.closeCode != 0 {
		c.startWriterLocked()
	}
}

// Key implements registry.Holder.
func (c *holderConn) Key() protocol.PublicKey { return c.key }

// SessionID implements registry.Holder.
func (c *holderConn) SessionID() string { return c.session }

// Send implements registry.Holder: it queues frame and never blocks. A full
// queue means the peer stopped reading; the connection is then closed with
// 1008 so that the key holder reconnects and is sent what is pending again.
func (c *holderConn) Send(frame []byte) bool {
	c.mu.Lock()
	if c.closed || c.closeCode != 0 {
		c.mu.Unlock()
		return false
	}
	if len(c.queue) >= c.srv.queueLimit {
		c.ending.Store(true)
		c.closed = true
		c.queue = nil
		c.mu.Unlock()
		c.logger().Warn("send queue full; closing slow key holder")
		c.writeCloseNow(protocol.ClosePolicyViolation, "send queue full")
		c.abort()
		return false
	}
	c.queue = append(c.queue, frame)
	c.startWriterLocked()
	c.mu.Unlock()
	return true
}

func (c *holderConn) startWriterLocked() {
	if c.writing || (c.held && c.closeCode == 0) {
		return
	}
	c.writing = true
	c.writers.Add(1)
	go c.drain()
}

// drain writes queued frames in order, then the close frame if one is due.
func (c *holderConn) drain() {
	defer c.writers.Done()
	for {
		c.mu.Lock()
		batch := c.queue
		c.queue = nil
		if len(batch) == 0 {
			code, msg := c.closeCode, c.closeMsg
			sendClose := code != 0 && !c.closed
			if sendClose {
				c.closed = true
			}
			c.writing = false
			c.mu.Unlock()
			if sendClose {
				c.writeCloseNow(code, msg)
				// The reader returns on the peer's close frame, or here.
				_ = c.ws.NetConn().SetReadDeadline(time.Now().Add(closeWait))
			}
			return
		}
		c.mu.Unlock()
		for _, f := range batch {
			if err := c.writeNow(f); err != nil {
				c.logger().Debug("write failed", "err", err)
				c.markClosed()
				c.abort()
				c.mu.Lock()
				c.writing = false
				c.mu.Unlock()
				return
			}
		}
	}
}

// closeWith asks for the connection to be closed with code once the frames
// already queued are written. Calling it again is harmless.
func (c *holderConn) closeWith(code int, msg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.closeCode != 0 {
		return
	}
	c.closeCode, c.closeMsg = code, msg
	c.ending.Store(true)
	c.startWriterLocked()
}

func (c *holderConn) markClosed() {
	c.ending.Store(true)
	c.mu.Lock()
	c.closed = true
	c.queue = nil
	c.mu.Unlock()
}

// shutdown runs when the read loop has ended: it closes normally unless a
// close is already under way, and waits for the writer to send it.
func (c *holderConn) shutdown() {
	c.closeWith(websocket.CloseNormalClosure, "")
	// No writer can start after closeWith, so this Wait cannot race an Add.
	c.writers.Wait()
}

// finish runs last on every path out of the handler: once closed is set
// under the lock no writer can start, so waiting for the writers is safe.
func (c *holderConn) finish() {
	c.mu.Lock()
	c.closed = true
	if c.pinger != nil {
		c.pinger.Stop()
	}
	c.mu.Unlock()
	c.writers.Wait()
}

// abort closes the TCP connection at once, so that the reader fails and the
// holder is detached. NetConn is fasthttp's hijack wrapper, whose Close does
// nothing (fasthttp closes the socket when the handler returns), so the
// socket underneath is closed.
func (c *holderConn) abort() {
	nc := c.ws.NetConn()
	if u, ok := nc.(interface{ UnsafeConn() net.Conn }); ok {
		nc = u.UnsafeConn()
	}
	_ = nc.Close()
}

// writeNow writes one frame synchronously; only the handshake and the writer
// goroutine call it, never both at once.
func (c *holderConn) writeNow(frame []byte) error {
	_ = c.ws.SetWriteDeadline(time.Now().Add(c.srv.cfg.WebSocket.WriteTimeout.D()))
	return c.ws.WriteMessage(websocket.TextMessage, frame)
}

// writeCloseNow sends a close frame; WriteControl is safe beside other writes.
func (c *holderConn) writeCloseNow(code int, msg string) {
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, msg), time.Now().Add(time.Second))
}

// lingerRaw reads and discards what the peer still sends for a moment after
// our close frame, so that closing the socket does not reset the connection
// and destroy the close frame before the peer has read it.
func (c *holderConn) lingerRaw() {
	nc := c.ws.NetConn()
	_ = nc.SetReadDeadline(time.Now().Add(closeWait))
	_, _ = io.CopyN(io.Discard, nc, 1<<20)
}

func (c *holderConn) pongWait() time.Duration {
	return 2 * c.srv.cfg.WebSocket.PingInterval.D()
}

func (c *holderConn) extendReadDeadline() {
	if c.ending.Load() {
		return
	}
	_ = c.ws.NetConn().SetReadDeadline(time.Now().Add(c.pongWait()))
}

// startPinger pings every ping_interval; a peer that stops answering misses
// the read deadline and its connection ends.
func (c *holderConn) startPinger() {
	interval := c.srv.cfg.WebSocket.PingInterval.D()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pinger = time.AfterFunc(interval, func() {
		c.mu.Lock()
		stop := c.closed || c.closeCode != 0
		c.mu.Unlock()
		if stop {
			return
		}
		if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.srv.cfg.WebSocket.WriteTimeout.D())); err != nil {
			return
		}
		c.mu.Lock()
		if !c.closed {
			c.pinger.Reset(interval)
		}
		c.mu.Unlock()
	})
}
