package httpapi

import (
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/fasthttp/websocket"
	fws "github.com/gofiber/contrib/websocket"
	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/registry"
)

// checkUpgrade refuses a WebSocket before the upgrade, with a JSON error:
// not an upgrade (426), shutting down (503), a browser origin not allowed
// (403), too many new connections from this client IP (429), too many
// sockets not yet introduced from this IP (429) or in all (503).
func (s *Server) checkUpgrade(c *fiber.Ctx) error {
	if !fws.IsWebSocketUpgrade(c) {
		return writeError(c, fiber.StatusUpgradeRequired, codeUpgradeRequired, "GET /ws is a WebSocket endpoint", "")
	}
	if s.draining.Load() {
		return writeError(c, fiber.StatusServiceUnavailable, codeUnavailable, "the relay is shutting down", "")
	}
	if origin := c.Get(fiber.HeaderOrigin); origin != "" && len(s.cfg.WebSocket.AllowedOrigins) > 0 && !s.originAllowed(origin) {
		return writeError(c, fiber.StatusForbidden, codeForbiddenOrigin, "origin "+origin+" may not connect", "")
	}
	ip := s.clientIP(c)
	bucket := rateKey(ip)
	if ok, retry := s.perIP.allow(bucket); !ok {
		return s.rateLimited(c, "client_ip", retry, "client IP", "")
	}
	slot, err := s.unintroduced.acquire(bucket)
	if err != nil {
		if errors.Is(err, errUnintroducedPerIP) {
			return s.rateLimited(c, "client_ip", 1, "client IP (connections not yet introduced)", "")
		}
		return writeError(c, fiber.StatusServiceUnavailable, codeUnavailable, "too many connections are waiting to be introduced; try again later", "")
	}
	// The slot is freed when the connection is introduced or closes,
	// whichever comes first, even if the upgrade never completes.
	if tc := findTracked(c.Context().Conn()); tc != nil {
		tc.slot.Store(slot)
	}
	c.Locals("client_ip", ip.String())
	c.Locals("intro_slot", slot)
	err = c.Next()
	if !c.Context().Hijacked() {
		slot.release()
	}
	return err
}

func (s *Server) originAllowed(origin string) bool {
	for _, o := range s.cfg.WebSocket.AllowedOrigins {
		if o == origin {
			return true
		}
	}
	return false
}

// errUnintroducedPerIP and errUnintroducedTotal say which cap refused an
// upgrade.
var (
	errUnintroducedPerIP = errors.New("too many unintroduced connections from this client IP")
	errUnintroducedTotal = errors.New("too many unintroduced connections")
)

// unintroducedCounter bounds the sockets that are upgraded but not yet
// introduced, in all and per client IP: the cheapest thing an anonymous
// client can make the relay hold.
type unintroducedCounter struct {
	max, maxPerIP int

	mu sync.Mutex
	// guards the following fields
	total int
	perIP map[string]int
}

func newUnintroducedCounter(max, maxPerIP int) *unintroducedCounter {
	return &unintroducedCounter{max: max, maxPerIP: maxPerIP, perIP: make(map[string]int)}
}

// introSlot is one place taken in the counter. release is harmless twice.
type introSlot struct {
	u    *unintroducedCounter
	ip   string
	once sync.Once
}

func (u *unintroducedCounter) acquire(ip string) (*introSlot, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.total >= u.max {
		return nil, errUnintroducedTotal
	}
	if u.perIP[ip] >= u.maxPerIP {
		return nil, errUnintroducedPerIP
	}
	u.total++
	u.perIP[ip]++
	return &introSlot{u: u, ip: ip}, nil
}

func (s *introSlot) release() {
	if s == nil {
		return
	}
	s.once.Do(func() {
		u := s.u
		u.mu.Lock()
		defer u.mu.Unlock()
		u.total--
		if u.perIP[s.ip]--; u.perIP[s.ip] <= 0 {
			delete(u.perIP, s.ip)
		}
	})
}

// recoverWS ends a key-holder connection whose goroutine panicked: a bug
// costs that connection a 1011, never the relay. The deferred calls of the
// panicking function (detach, untrack) have run by then.
func (s *Server) recoverWS(conn *websocket.Conn) {
	if e := recover(); e != nil {
		s.panicked(conn, e)
	}
}

// recoverHandler is recoverWS for contrib's RecoverHandler, which defers
// it on the hijack handler's goroutine (recover must be called there).
func (s *Server) recoverHandler(conn *fws.Conn) {
	if e := recover(); e != nil {
		s.panicked(conn.Conn, e)
	}
}

func (s *Server) panicked(conn *websocket.Conn, e any) {
	s.log.Error("panic in key-holder connection", "panic", e, "stack", string(debug.Stack()))
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseInternalServerErr, "internal error"), time.Now().Add(time.Second))
}

// handleWS runs one key-holder connection: challenge and introduction
// within the deadline on the hijack handler's goroutine, then the read
// loop until the socket closes — on a goroutine of its own when the socket
// allows it (see hijack.go), so that the handler returns and fasthttp
// frees what it holds for it. Writes after the handshake go through the
// connection's queue.
func (s *Server) handleWS(ws *fws.Conn) {
	ip, _ := ws.Locals("client_ip").(string)
	slot, _ := ws.Locals("intro_slot").(*introSlot)
	conn := ws.Conn // ws itself is recycled by contrib when this returns
	c := newHolderConn(s, conn, ip)
	// Decided before open, so that nothing runs between open and serve:
	// from open's success on, serve owns the connection's end.
	detach := readsFromSocket(conn.NetConn())
	if !detach {
		c.logger().Debug("bytes arrived before the upgrade completed; the connection keeps its handler")
	}
	if !c.open(slot) {
		return
	}
	if detach {
		go c.serve()
		return
	}
	c.serve()
}

// open tracks the connection and introduces it; it returns false, with
// the connection closed and everything released, when the connection ends
// before it is routable.
func (c *holderConn) open(slot *introSlot) (ok bool) {
	s := c.srv
	defer slot.release()
	if !s.track(c) {
		c.writeCloseNow(protocol.CloseGoingAway, "relay shutting down")
		c.abort()
		return false
	}
	attached := false
	defer func() { // also on a panic
		if !ok {
			if attached {
				s.svc.Detach(c)
			}
			c.end()
		}
	}()
	c.ws.SetReadLimit(introductionFrameLimit)
	if why, msg := c.introduce(); why != ReasonUnknown {
		c.introductionFailed(why, msg)
		return false
	}
	slot.release()
	if tc := findTracked(c.ws.NetConn()); tc != nil {
		tc.slot.CompareAndSwap(slot, nil) // released: nothing to keep it for
	}
	c.ws.SetReadLimit(int64(s.cfg.WebSocket.MaxFrameBytes))

	// The key holder may ask for a signature the moment it reads
	// "introduced", so it must already be routable then: queue the frame,
	// register, and only then let the queue flow. Pending requests that
	// Attach hands over are queued behind it.
	c.Send(protocol.EncodeIntroduced(c.key, c.session))
	if err := s.svc.Attach(c); err != nil {
		s.metrics.Introduction("too_many_connections")
		c.refuseIntroduced(err)
		return false
	}
	attached = true
	s.metrics.Introduction("ok")
	c.logger().Debug("introduced")
	c.release()
	c.startPinger()
	return true
}

// introductionFailed ends a connection that was not introduced.
func (c *holderConn) introductionFailed(why CloseReason, msg string) {
	c.mu.Lock()
	c.setReasonLocked(why)
	c.mu.Unlock()
	m := c.srv.metrics
	switch why {
	case ReasonIntroductionFailed:
		m.Introduction("failed")
	case ReasonIntroductionTimeout:
		m.Introduction("timeout")
	default:
		m.Introduction("abandoned")
	}
	switch why {
	case ReasonIntroductionFailed, ReasonIntroductionTimeout:
		c.logger().Info("introduction failed", "why", msg)
		_ = c.writeNow(protocol.EncodeError(protocol.CodeIntroductionFailed, msg, ""))
		c.writeCloseNow(protocol.CloseIntroductionFailed, "introduction failed")
	default: // the library has sent 1009, or the peer is gone
		c.logger().Debug("connection ended before introduction", "why", why.String(), "err", msg)
	}
	c.lingerRaw()
}

// serve runs an introduced connection's read loop until it ends, then
// detaches it and closes it. Its frame is the only one of ours under the
// read loop while the connection is idle: it is kept small.
func (c *holderConn) serve() {
	// On its own goroutine nothing recovers above this function: a bug in
	// end costs this connection, never the relay.
	defer c.srv.recoverWS(c.ws)
	defer c.end()
	defer c.srv.recoverWS(c.ws)
	// Also on a panic: a holder left registered would take a place of its
	// key and swallow its requests until they time out.
	defer c.srv.svc.Detach(c)
	reason := c.readLoop()
	c.srv.svc.Detach(c)
	c.shutdown(reason)
	c.logger().Debug("connection closed", "why", c.Reason().String())
}

// end is the last step on every path of a tracked connection: writers
// stopped, the socket closed, the connection untracked.
func (c *holderConn) end() {
	c.finish()
	c.abort()
	c.srv.untrack(c)
}

// refuseIntroduced turns away a verified connection that Attach refused:
// nothing queued for it has been written (it is still in the handshake),
// so the queue is dropped and the error and close frames go out directly.
func (c *holderConn) refuseIntroduced(err error) {
	c.mu.Lock()
	c.queue = nil
	c.state = stateClosed
	c.ending.Store(true)
	c.setReasonLocked(ReasonTooManyConnections)
	c.mu.Unlock()
	msg := "this key has the most connections this relay allows; close one and try again"
	if !errors.Is(err, registry.ErrTooManyConnections) {
		msg = err.Error()
	}
	c.logger().Info("connection refused", "why", msg)
	_ = c.writeNow(protocol.EncodeError(protocol.CodeTooManyConnections, msg, ""))
	c.writeCloseNow(protocol.CloseTryAgainLater, "too many connections")
	c.lingerRaw()
}

// introduce sends the challenge and checks the answer. It returns
// ReasonUnknown on success, else why the connection ends and a message for
// the key holder. Its read deadline is the introduction timeout, lifted
// once the key holder is verified.
func (c *holderConn) introduce() (CloseReason, string) {
	nonce := make([]byte, protocol.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return ReasonWriteFailed, err.Error()
	}
	if err := c.writeNow(protocol.EncodeChallenge(nonce)); err != nil {
		return ReasonWriteFailed, err.Error()
	}
	_ = c.ws.SetReadDeadline(time.Now().Add(c.srv.cfg.WebSocket.IntroductionTimeout.D()))
	mt, data, err := c.ws.ReadMessage()
	if err != nil {
		switch {
		case isTimeout(err):
			return ReasonIntroductionTimeout, "introduction deadline passed"
		case errors.Is(err, websocket.ErrReadLimit):
			return ReasonFrameTooLarge, "introduction frame over the limit"
		}
		return readErrorReason(err), err.Error()
	}
	if mt != websocket.TextMessage {
		return ReasonIntroductionFailed, "binary frames are not accepted; send the introduction as JSON text"
	}
	f, err := protocol.DecodeHolderFrame(data)
	if err != nil {
		return ReasonIntroductionFailed, "bad introduction: " + err.(*protocol.FrameError).Message
	}
	intro, ok := f.(*protocol.Introduction)
	if !ok {
		return ReasonIntroductionFailed, `expected an "introduction" frame first`
	}
	key, _ := protocol.PublicKeyFromBytes(intro.PublicKey)
	if err := key.Check(); err != nil {
		return ReasonIntroductionFailed, err.Error()
	}
	if !key.Verify(protocol.IntroductionMessage(nonce), intro.Signature) {
		return ReasonIntroductionFailed, "signature does not verify for this public key and nonce"
	}
	c.key = key
	c.session = uuid.NewString()
	c.extendReadDeadline()
	return ReasonUnknown, ""
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// readErrorReason classifies a read error that is not a deadline.
func readErrorReason(err error) CloseReason {
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &ce), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ReasonPeerClosed
	case errors.Is(err, websocket.ErrReadLimit):
		return ReasonFrameTooLarge
	}
	return ReasonReadError
}

// readLoop handles messages until the connection ends, and says why. A
// message must be complete within websocket.message_timeout of its first
// frame: pongs keep a connection alive, but never an unfinished message.
func (c *holderConn) readLoop() CloseReason {
	c.ws.SetPongHandler(func(string) error {
		c.extendReadDeadline()
		return nil
	})
	msgTimeout := c.srv.cfg.WebSocket.MessageTimeout.D()
	for {
		c.msgDeadline = 0
		mt, r, err := c.ws.NextReader()
		if err != nil {
			return c.readFailed(err)
		}
		c.msgDeadline = time.Now().Add(msgTimeout).UnixNano()
		c.extendReadDeadline()
		data, err := io.ReadAll(r)
		if err != nil {
			return c.readFailed(err)
		}
		c.msgDeadline = 0
		if c.ending.Load() {
			continue // closing: wait for the peer's close frame
		}
		c.extendReadDeadline()
		var ferr *protocol.FrameError
		if mt != websocket.TextMessage {
			ferr = protocol.ErrBinaryFrame
		} else {
			ferr = c.handleFrame(data)
		}
		if ferr == nil {
			continue
		}
		c.Send(ferr.Frame())
		if c.badFrames == nil { // made on the first bad frame: most connections never send one
			c.badFrames = rate.NewLimiter(1, badFrameBurst)
		}
		if !c.badFrames.Allow() {
			c.Close(protocol.ClosePolicyViolation, "too many bad frames", ReasonBadFrames)
			// It can receive nothing more: stop routing to it now, not when
			// the peer answers the close.
			c.srv.svc.Detach(c)
		}
	}
}

// readFailed ends the read loop on err and says why the connection ends.
func (c *holderConn) readFailed(err error) CloseReason {
	switch {
	case c.ending.Load():
		return c.Reason() // our own close is under way; keep its reason
	case errors.Is(err, websocket.ErrReadLimit):
		// The library has sent 1009; nothing more may be written.
		c.mu.Lock()
		c.state = stateClosed
		c.queue = nil
		c.setReasonLocked(ReasonFrameTooLarge)
		c.mu.Unlock()
		c.ending.Store(true)
		return ReasonFrameTooLarge
	case isTimeout(err) && c.msgDeadline != 0 && time.Now().UnixNano() >= c.msgDeadline:
		c.Close(protocol.ClosePolicyViolation, "message not completed in time", ReasonMessageTimeout)
		return ReasonMessageTimeout
	case isTimeout(err):
		return ReasonPingTimeout
	}
	return readErrorReason(err)
}

func (c *holderConn) handleFrame(data []byte) *protocol.FrameError {
	f, err := protocol.DecodeHolderFrame(data)
	if err != nil {
		return err.(*protocol.FrameError)
	}
	switch f := f.(type) {
	case *protocol.SignResponse:
		return c.srv.svc.Respond(c, f)
	case *protocol.SignReject:
		return c.srv.svc.Reject(c, f)
	case *protocol.Introduction:
		return &protocol.FrameError{Code: protocol.CodeAlreadyIntroduced, Message: "this connection is already introduced; one connection holds exactly one key"}
	}
	return &protocol.FrameError{Code: protocol.CodeUnknownType, Message: "unexpected frame"}
}
