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
	closeNowWait  = time.Second     // writing a close frame to a peer we give up on
	badFrameBurst = 20              // bad frames tolerated at once before 1008
	// introductionFrameLimit is the read limit until a connection is
	// introduced: an introduction is about 200 bytes, and an unintroduced
	// socket must not make the relay hold more than this for it.
	introductionFrameLimit = 1024
)

// connState is where a key-holder connection is in its life. It only moves
// forward: handshake → open → closing → closed.
type connState uint8

const (
	// stateHandshake: challenge sent, introduction not yet checked. Frames
	// queued now wait until release.
	stateHandshake connState = iota
	// stateOpen: introduced and routable; queued frames flow.
	stateOpen
	// stateClosing: a close frame is queued behind the frames already
	// queued (Close); nothing new is accepted.
	stateClosing
	// stateClosed: no more frames; the socket is closed or being closed.
	stateClosed
)

// CloseReason is why a key-holder connection ended. It is a closed set, so
// that logs and metrics can count every way a connection ends; the first
// reason recorded for a connection is the one it keeps.
type CloseReason uint8

// Every way a key-holder connection ends.
const (
	ReasonUnknown             CloseReason = iota
	ReasonPeerClosed                      // the key holder sent a close frame or closed the socket
	ReasonReadError                       // the socket failed (reset, broken pipe)
	ReasonPingTimeout                     // no pong or frame within twice websocket.ping_interval
	ReasonIntroductionFailed              // a wrong introduction: 4401
	ReasonIntroductionTimeout             // no introduction within websocket.introduction_timeout: 4401
	ReasonTooManyConnections              // the key is at websocket.max_connections_per_key: 1013
	ReasonFrameTooLarge                   // a frame over the read limit: 1009
	ReasonMessageTimeout                  // a message started and not finished within websocket.message_timeout: 1008
	ReasonBadFrames                       // too many bad frames: 1008
	ReasonSlowReader                      // the send queue overflowed: 1008
	ReasonWriteFailed                     // a write failed or timed out
	ReasonShutdown                        // the relay is shutting down: 1001
)

var closeReasonNames = [...]string{
	ReasonUnknown:             "unknown",
	ReasonPeerClosed:          "peer_closed",
	ReasonReadError:           "read_error",
	ReasonPingTimeout:         "ping_timeout",
	ReasonIntroductionFailed:  "introduction_failed",
	ReasonIntroductionTimeout: "introduction_timeout",
	ReasonTooManyConnections:  "too_many_connections",
	ReasonFrameTooLarge:       "frame_too_large",
	ReasonMessageTimeout:      "message_timeout",
	ReasonBadFrames:           "bad_frames",
	ReasonSlowReader:          "slow_reader",
	ReasonWriteFailed:         "write_failed",
	ReasonShutdown:            "shutdown",
}

// String is the reason's stable name, as logs and metric labels show it.
func (r CloseReason) String() string {
	if int(r) < len(closeReasonNames) {
		return closeReasonNames[r]
	}
	return "unknown"
}

// CloseReasons lists every reason, for exposing each one from the start.
func CloseReasons() []CloseReason {
	out := make([]CloseReason, len(closeReasonNames))
	for i := range out {
		out[i] = CloseReason(i)
	}
	return out
}

// holderConn is one key-holder WebSocket. One goroutine reads: the hijack
// handler's until the introduction, then one of its own (see hijack.go).
// Writes after the handshake go through a bounded queue; a writer goroutine
// runs only while the queue has frames, so an idle connection costs one
// goroutine, and a slow reader on the other end never blocks ours.
//
// Two verbs end it: Close (graceful: the close frame goes after what is
// queued) and CloseNow (drop the queue, send the close frame from a
// goroutine of its own and close the socket; never blocks the caller).
type holderConn struct {
	// Set before the connection is shared, then read-only.
	srv *Server
	ws  *websocket.Conn
	ip  string

	// Owned by the read loop.
	badFrames *rate.Limiter
	key       protocol.PublicKey // set once introduced, then read-only
	session   string

	// ending mirrors state >= stateClosing for the read loop's deadline
	// logic, which must not take mu on every pong.
	ending atomic.Bool
	// msgDeadline is when the message being read must be complete (unix
	// nanoseconds), 0 between messages. Owned by the read loop.
	msgDeadline int64

	mu sync.Mutex
	// guards the following fields
	state     connState
	reason    CloseReason
	queue     [][]byte
	writing   bool // a writer goroutine is draining queue
	closeCode int  // the close frame to send after the queue (stateClosing)
	closeMsg  string
	pinger    *time.Timer

	writers sync.WaitGroup // the queue's writer and CloseNow's goroutine

	// pingDue: the writer sends a ping before its next frame. Set under
	// mu (with the writer started), taken by the writer between frames,
	// so a ping does not wait behind a long batch for a slow reader.
	pingDue atomic.Bool
	// wmu serialises writeNow: the handshake writes on the handler's
	// goroutine, and a Close during it starts the writer.
	wmu sync.Mutex
}

func newHolderConn(s *Server, ws *websocket.Conn, ip string) *holderConn {
	return &holderConn{srv: s, ws: ws, ip: ip}
}

// logger is built when something is logged, not kept: with tens of
// thousands of idle connections a logger each is memory for nothing.
func (c *holderConn) logger() *slog.Logger {
	if c.session == "" {
		return c.srv.log.With("remote", c.ip)
	}
	return c.srv.log.With("remote", c.ip, "key", c.key.ShortString(), "session", c.session)
}

// setReasonLocked records why the connection ends, unless a reason is
// already recorded.
func (c *holderConn) setReasonLocked(r CloseReason) {
	if c.reason == ReasonUnknown {
		c.reason = r
	}
}

// Reason returns why the connection ended (or is ending).
func (c *holderConn) Reason() CloseReason {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reason
}

// release ends the handshake: queued frames flow from now on.
func (c *holderConn) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateHandshake {
		c.state = stateOpen
	}
	if len(c.queue) > 0 || c.pingDue.Load() || c.state == stateClosing {
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
	if c.state >= stateClosing {
		c.mu.Unlock()
		return false
	}
	if len(c.queue) >= c.srv.queueLimit {
		c.mu.Unlock()
		c.logger().Warn("send queue full; closing slow key holder")
		c.srv.metrics.QueueOverflow()
		c.CloseNow(protocol.ClosePolicyViolation, "send queue full", ReasonSlowReader)
		return false
	}
	c.queue = append(c.queue, frame)
	c.startWriterLocked()
	c.mu.Unlock()
	return true
}

func (c *holderConn) startWriterLocked() {
	if c.writing || c.state == stateHandshake || c.state == stateClosed {
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
		if (len(batch) == 0 && !c.pingDue.Load()) || c.state == stateClosed {
			sendClose := c.state == stateClosing
			code, msg := c.closeCode, c.closeMsg
			if sendClose {
				c.state = stateClosed
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
		if !c.pingIfDue() {
			return
		}
		for _, f := range batch {
			if !c.write(f) || !c.pingIfDue() {
				return
			}
		}
	}
}

// pingIfDue writes the ping that is due, if one is; false when the write
// failed and the writer must stop.
func (c *holderConn) pingIfDue() bool {
	return !c.pingDue.Swap(false) || c.write(nil)
}

// write is the writer's writeNow: on a failure the connection is closed,
// and the writer must stop.
func (c *holderConn) write(frame []byte) bool {
	err := c.writeNow(frame)
	if err == nil {
		return true
	}
	c.logger().Debug("write failed", "err", err)
	c.mu.Lock()
	c.writing = false
	c.mu.Unlock()
	c.CloseNow(0, "", ReasonWriteFailed)
	return false
}

// Close closes the connection gracefully: the close frame with code goes
// out after the frames already queued. Calling it again, or after
// CloseNow, is harmless; the first reason is kept.
func (c *holderConn) Close(code int, msg string, why CloseReason) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state >= stateClosing {
		return
	}
	c.state = stateClosing
	c.setReasonLocked(why)
	c.closeCode, c.closeMsg = code, msg
	c.ending.Store(true)
	c.startWriterLocked()
}

// CloseNow drops what is queued and closes the socket, after trying to send
// a close frame with code (none when code is 0) for at most closeNowWait.
// The work happens in a goroutine of its own, so a caller (a sender that
// found the queue full, say) is never blocked by a peer that does not read.
// Calling it again is harmless.
func (c *holderConn) CloseNow(code int, msg string, why CloseReason) {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	c.state = stateClosed
	c.setReasonLocked(why)
	c.queue = nil
	c.ending.Store(true)
	c.writers.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.writers.Done()
		if code != 0 {
			_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, msg), time.Now().Add(closeNowWait))
		}
		c.abort()
	}()
}

// shutdown runs when the read loop has ended with why: it closes normally
// unless a close is already under way, and waits for the writer to send it.
func (c *holderConn) shutdown(why CloseReason) {
	c.Close(websocket.CloseNormalClosure, "", why)
	// No writer can start after Close, so this Wait cannot race an Add.
	c.writers.Wait()
}

// finish runs last on every path out of the handler: once the state is
// closed under the lock no writer can start, so waiting for them is safe.
func (c *holderConn) finish() {
	c.mu.Lock()
	c.state = stateClosed
	c.ending.Store(true)
	if c.pinger != nil {
		c.pinger.Stop()
	}
	why := c.reason
	c.mu.Unlock()
	c.writers.Wait()
	c.srv.metrics.Disconnected(why.String())
}

// abort closes the TCP connection at once, so that the reader fails and the
// holder is detached; it is also how every connection's socket is finally
// closed (fasthttp keeps hijacked connections open: KeepHijackedConns).
// The socket under fasthttp's hijack wrapper is closed directly. Closing
// it twice is harmless.
func (c *holderConn) abort() {
	nc := c.ws.NetConn()
	if u, ok := nc.(interface{ UnsafeConn() net.Conn }); ok {
		nc = u.UnsafeConn()
	}
	_ = nc.Close()
}

// writeNow writes one frame synchronously, a ping when frame is nil; only
// the handshake and the writer goroutine call it.
// A ping goes this way, not through WriteControl, because WriteControl
// allocates its frame each time and this path uses the pooled buffer:
// with a ping every 20 s, 144 bytes per idle connection per ping were
// most of what an idle relay allocated.
func (c *holderConn) writeNow(frame []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(c.srv.cfg.WebSocket.WriteTimeout.D()))
	if frame == nil {
		return c.ws.WriteMessage(websocket.PingMessage, nil)
	}
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

// extendReadDeadline moves the read deadline to a ping interval's worth of
// silence from now, but never past the deadline of a message being read: a
// peer that keeps answering pings cannot keep an unfinished message open.
func (c *holderConn) extendReadDeadline() {
	if c.ending.Load() {
		return
	}
	d := time.Now().Add(c.pongWait())
	if md := c.msgDeadline; md != 0 && md < d.UnixNano() {
		d = time.Unix(0, md)
	}
	_ = c.ws.NetConn().SetReadDeadline(d)
}

// startPinger pings every ping_interval; a peer that stops answering misses
// the read deadline and its connection ends.
func (c *holderConn) startPinger() {
	interval := c.srv.cfg.WebSocket.PingInterval.D()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pinger = time.AfterFunc(interval, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.state >= stateClosing {
			return
		}
		c.pingDue.Store(true)
		c.startWriterLocked()
		c.pinger.Reset(interval)
	})
}
