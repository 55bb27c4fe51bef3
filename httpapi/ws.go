package httpapi

import (
	"crypto/rand"
	"errors"
	"net"
	"os"
	"time"

	"github.com/fasthttp/websocket"
	fws "github.com/gofiber/contrib/websocket"
	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/signrelay/signrelay/protocol"
)

// checkUpgrade refuses a WebSocket before the upgrade, with a JSON error:
// not an upgrade (426), shutting down (503), a browser origin not allowed
// (403), too many new connections from this client IP (429).
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
	if ok, retry := s.perIP.allow(ip.String()); !ok {
		return rateLimited(c, retry, "client IP", "")
	}
	c.Locals("client_ip", ip.String())
	return c.Next()
}

func (s *Server) originAllowed(origin string) bool {
	for _, o := range s.cfg.WebSocket.AllowedOrigins {
		if o == origin {
			return true
		}
	}
	return false
}

// errIntroduction wraps why a handshake failed, for the error frame.
type errIntroduction struct{ msg string }

func (e *errIntroduction) Error() string { return e.msg }

// handleWS runs one key-holder connection: challenge, introduction within
// the deadline, then the read loop until the socket closes. Writes after the
// handshake go through the connection's queue.
func (s *Server) handleWS(ws *fws.Conn) {
	ip, _ := ws.Locals("client_ip").(string)
	c := newHolderConn(s, ws.Conn, ip)
	if !s.track(c) {
		c.writeCloseNow(protocol.CloseGoingAway, "relay shutting down")
		return
	}
	defer s.untrack(c)
	defer c.finish()
	ws.SetReadLimit(int64(s.cfg.WebSocket.MaxFrameBytes))

	if err := c.introduce(); err != nil {
		var ie *errIntroduction
		if errors.As(err, &ie) {
			c.logger().Info("introduction failed", "why", ie.msg)
			c.writeNow(protocol.EncodeError(protocol.CodeIntroductionFailed, ie.msg, ""))
			c.writeCloseNow(protocol.CloseIntroductionFailed, "introduction failed")
		} else {
			c.logger().Debug("connection ended before introduction", "err", err)
		}
		c.lingerRaw()
		return
	}
	c.logger().Debug("introduced")

	// The key holder may ask for a signature the moment it reads
	// "introduced", so it must already be routable then: queue the frame,
	// register, and only then let the queue flow. Pending requests that
	// Attach hands over are queued behind it.
	c.Send(protocol.EncodeIntroduced(c.key, c.session))
	s.svc.Attach(c)
	c.release()
	c.startPinger()
	reason := c.readLoop()
	s.svc.Detach(c)
	c.logger().Debug("connection closed", "why", reason)
	c.shutdown()
}

// introduce sends the challenge and checks the answer. Its read deadline is
// the introduction timeout, lifted once the key holder is verified.
func (c *holderConn) introduce() error {
	nonce := make([]byte, protocol.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	if err := c.writeNow(protocol.EncodeChallenge(nonce)); err != nil {
		return err
	}
	_ = c.ws.SetReadDeadline(time.Now().Add(c.srv.cfg.WebSocket.IntroductionTimeout.D()))
	mt, data, err := c.ws.ReadMessage()
	if err != nil {
		var ne net.Error
		if errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
			return &errIntroduction{"introduction deadline passed"}
		}
		return err
	}
	if mt != websocket.TextMessage {
		return &errIntroduction{"binary frames are not accepted; send the introduction as JSON text"}
	}
	f, err := protocol.DecodeHolderFrame(data)
	if err != nil {
		return &errIntroduction{"bad introduction: " + err.(*protocol.FrameError).Message}
	}
	intro, ok := f.(*protocol.Introduction)
	if !ok {
		return &errIntroduction{`expected an "introduction" frame first`}
	}
	key, _ := protocol.PublicKeyFromBytes(intro.PublicKey)
	if !key.Verify(protocol.IntroductionMessage(nonce), intro.Signature) {
		return &errIntroduction{"signature does not verify for this public key and nonce"}
	}
	c.key = key
	c.session = uuid.NewString()
	c.extendReadDeadline()
	return nil
}

// readLoop handles frames until the connection ends, and says why.
func (c *holderConn) readLoop() string {
	c.ws.SetPongHandler(func(string) error {
		c.extendReadDeadline()
		return nil
	})
	for {
		mt, data, err := c.ws.ReadMessage()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				c.markClosed() // the library already sent 1009
			}
			return err.Error()
		}
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
		if !c.badFrames.Allow() {
			c.closeWith(protocol.ClosePolicyViolation, "too many bad frames")
			// It can receive nothing more: stop routing to it now, not when
			// the peer answers the close.
			c.srv.svc.Detach(c)
		}
	}
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
