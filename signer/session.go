package signer

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/signrelay/signrelay/protocol"
)

// Defaults of DialOptions.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultReadLimit        = 1 << 20
	DefaultWriteTimeout     = 10 * time.Second
	DefaultKeepAlive        = 30 * time.Second
	DefaultRequestBuffer    = 64
	DefaultEventBuffer      = 64
)

// closeWait is how long a closing side waits for the peer's close frame.
const closeWait = 2 * time.Second

// DialOptions tunes one connection. The zero value (or a nil pointer) gives
// the documented defaults; fields are read once, by Dial.
type DialOptions struct {
	// Header is sent with the WebSocket upgrade request, for example an
	// Origin when the relay restricts origins, or a User-Agent. Nil: none.
	Header http.Header

	// TLSConfig is used for wss:// URLs. Nil: the system's roots, TLS 1.2+.
	TLSConfig *tls.Config

	// HandshakeTimeout bounds the whole of Dial: TCP and TLS, the upgrade,
	// the challenge and the relay's answer to the introduction. Dial's ctx
	// may end it sooner. Default DefaultHandshakeTimeout (10 s).
	HandshakeTimeout time.Duration

	// ReadLimit is the largest frame accepted from the relay, in bytes. A
	// larger one closes the connection with 1009. Default DefaultReadLimit
	// (1 MiB; a sign_request for the relay's default 64 KiB limit is ~88 KB).
	ReadLimit int64

	// WriteTimeout bounds each frame this side writes, on top of the ctx
	// given to Approve or Reject. A write that times out breaks the
	// connection and ends the session. Default DefaultWriteTimeout (10 s).
	WriteTimeout time.Duration

	// KeepAlive is how often this side pings the relay; the session ends
	// (CloseError 1006) when nothing at all, not even a ping or pong, has
	// arrived for twice that long, so that a dead network path is noticed.
	// Default DefaultKeepAlive (30 s); negative disables both.
	KeepAlive time.Duration

	// RequestBuffer is the capacity of the Requests channel. When it is
	// full the session stops reading from the relay until a request is
	// taken (backpressure), so the relay sees a slow peer. Default
	// DefaultRequestBuffer (64, the relay's default pending limit per key).
	RequestBuffer int

	// EventBuffer is the capacity of the Cancels and Errors channels. They
	// never block the session: when one is full its oldest entry is
	// dropped, so a program that ignores them loses nothing else. Default
	// DefaultEventBuffer (64).
	EventBuffer int

	// Logger receives what the session drops or refuses: frames from the
	// relay that break the contract, a request with the reserved prefix.
	// Nil: no logging.
	Logger *slog.Logger
}

func (o *DialOptions) withDefaults() DialOptions {
	var d DialOptions
	if o != nil {
		d = *o
	}
	if d.HandshakeTimeout <= 0 {
		d.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if d.ReadLimit <= 0 {
		d.ReadLimit = DefaultReadLimit
	}
	if d.WriteTimeout <= 0 {
		d.WriteTimeout = DefaultWriteTimeout
	}
	if d.KeepAlive == 0 {
		d.KeepAlive = DefaultKeepAlive
	}
	if d.RequestBuffer <= 0 {
		d.RequestBuffer = DefaultRequestBuffer
	}
	if d.EventBuffer <= 0 {
		d.EventBuffer = DefaultEventBuffer
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	return d
}

// Request is one sign_request to answer with Session.Approve or
// Session.Reject. Message and Description come from the backend that asked,
// through the relay: show them, but treat them as untrusted input.
// Requester is the relay's word for who asks: the name of the API key the
// backend used (from the relay's configuration, never the key itself), or
// "" when that key has no name. A policy may decide by it, since only the
// relay sets it.
type Request struct {
	ID          string    // the relay's request_id
	Message     []byte    // the bytes to sign; the caller's own copy
	Description string    // the backend's free text, may be empty
	Requester   string    // name of the API key that asks, "" for a bare key
	ExpiresAt   time.Time // when the relay gives up (relay's clock); asynchronous requests may be minutes away

	ctx context.Context
}

// Context is cancelled when the request stops being answerable here: the
// relay sent sign_cancel (cause *CancelError), this session answered it
// (cause ErrAnswered), or the session ended (cause the session's Err).
// Use context.Cause to tell which.
func (r Request) Context() context.Context {
	if r.ctx == nil {
		return context.Background()
	}
	return r.ctx
}

// CancelReason is the relay's sign_cancel reason once it cancelled this
// request ("timeout", "answered_elsewhere", "requester_gone", "shutdown",
// or "cancelled" when the backend took it back with DELETE /sign/{id}; see
// the protocol.Cancel* constants), and "" otherwise.
func (r Request) CancelReason() string {
	var ce *CancelError
	if r.ctx != nil && errors.As(context.Cause(r.ctx), &ce) {
		return ce.Reason
	}
	return ""
}

// Cancel is a sign_cancel frame the relay sent: the request ended without
// this connection's answer.
type Cancel struct {
	RequestID string
	Reason    string
}

// Session is one introduced connection to the relay for one key. One
// goroutine reads from the relay; Approve, Reject and Close may be called
// from any goroutine, and writes are serialised.
type Session struct {
	conn      *websocket.Conn
	key       ed25519.PrivateKey
	pub       protocol.PublicKey
	sessionID string
	opts      DialOptions
	log       *slog.Logger

	reqs    chan Request
	cancels chan Cancel
	errs    chan *RelayError

	wmu chan struct{} // one writer at a time; a channel so that waiting obeys ctx

	mu      sync.Mutex
	pending map[string]*pending // nil once the session ended
	err     error

	closing   chan struct{} // closed by Close
	closeOnce sync.Once
	readDone  chan struct{} // the reader has stopped reading
	done      chan struct{} // everything is over; err is set
}

type pending struct {
	msg       []byte
	cancel    context.CancelCauseFunc
	answering bool
}

// Dial opens one connection to the relay's WebSocket endpoint (for example
// "wss://relay.example.com/ws"), answers its challenge with key and waits
// until the relay confirms the introduction. ctx bounds only the dial and
// introduction, not the session's life; end that with Close.
//
// When the relay refuses the introduction the error is an
// *IntroductionError (close code 4401); when it refuses the upgrade, a
// *HandshakeError; when ctx ends first, ctx's error. HTTP_PROXY,
// HTTPS_PROXY and NO_PROXY are honoured as by net/http.
func Dial(ctx context.Context, url string, key ed25519.PrivateKey, opts *DialOptions) (*Session, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("signer: key must be an ed25519.PrivateKey of 64 bytes")
	}
	if err := checkURL(url); err != nil {
		return nil, err
	}
	o := opts.withDefaults()

	dctx, cancel := context.WithTimeout(ctx, o.HandshakeTimeout)
	defer cancel()

	dialer := websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		TLSClientConfig:  o.TLSConfig,
		HandshakeTimeout: o.HandshakeTimeout,
	}
	conn, resp, err := dialer.DialContext(dctx, url, o.Header)
	if err != nil {
		if errors.Is(err, websocket.ErrBadHandshake) && resp != nil {
			return nil, handshakeError(resp)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if dctx.Err() != nil {
			return nil, fmt.Errorf("signer: dial %s: handshake timeout after %v: %w", url, o.HandshakeTimeout, err)
		}
		return nil, fmt.Errorf("signer: dial %s: %w", url, err)
	}
	conn.SetReadLimit(o.ReadLimit)

	// Reads below honour dctx by deadline, and by closing the connection
	// should dctx end first (the deadline may be later than a cancel).
	deadline, _ := dctx.Deadline()
	_ = conn.SetReadDeadline(deadline)
	stop := context.AfterFunc(dctx, func() { _ = conn.Close() })

	pub, sessionID, err := introduce(conn, key, deadline, o)
	if !stop() || err != nil {
		_ = conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err == nil || dctx.Err() != nil {
			return nil, fmt.Errorf("signer: introduction to %s: timeout after %v", url, o.HandshakeTimeout)
		}
		return nil, err
	}
	_ = conn.SetReadDeadline(time.Time{})

	s := &Session{
		conn:      conn,
		key:       key,
		pub:       pub,
		sessionID: sessionID,
		opts:      o,
		log:       o.Logger.With("session_id", sessionID),
		reqs:      make(chan Request, o.RequestBuffer),
		cancels:   make(chan Cancel, o.EventBuffer),
		errs:      make(chan *RelayError, o.EventBuffer),
		wmu:       make(chan struct{}, 1),
		pending:   make(map[string]*pending),
		closing:   make(chan struct{}),
		readDone:  make(chan struct{}),
		done:      make(chan struct{}),
	}
	s.startReading()
	return s, nil
}

func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("signer: relay URL: %w", err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return fmt.Errorf("signer: relay URL %q: scheme must be ws or wss", raw)
	}
	if u.Host == "" {
		return fmt.Errorf("signer: relay URL %q has no host", raw)
	}
	return nil
}

func handshakeError(resp *http.Response) error {
	he := &HandshakeError{StatusCode: resp.StatusCode, Header: resp.Header}
	if s := resp.Header.Get("Retry-After"); s != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && n >= 0 {
			he.RetryAfter = time.Duration(n) * time.Second
		} else if t, err := http.ParseTime(s); err == nil {
			he.RetryAfter = max(time.Until(t), 0)
		}
	}
	if resp.Body != nil {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var eb struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(body, &eb) == nil {
			he.Code, he.Message = eb.Error.Code, eb.Error.Message
		} else {
			he.Message = strings.TrimSpace(string(body))
		}
	}
	return he
}

// frameType reads the "type" of a frame from the relay.
func frameType(data []byte) (string, error) {
	var env struct {
		Type *string `json:"type"`
	}
	if err := json.Unmarshal(data, &env); err != nil {
		return "", err
	}
	if env.Type == nil {
		return "", errors.New(`missing string field "type"`)
	}
	return *env.Type, nil
}

// introduce runs the key holder's half of the introduction on a fresh
// connection and returns the confirmed key and session id.
func introduce(conn *websocket.Conn, key ed25519.PrivateKey, deadline time.Time, o DialOptions) (protocol.PublicKey, string, error) {
	data, err := readText(conn)
	if err != nil {
		return protocol.PublicKey{}, "", closeOrErr(err, "reading the challenge")
	}
	var ch protocol.Challenge
	if t, err := frameType(data); err != nil || t != protocol.TypeChallenge {
		return protocol.PublicKey{}, "", fmt.Errorf("%w: expected a challenge frame, got %.100q", ErrProtocol, data)
	}
	if err := json.Unmarshal(data, &ch); err != nil || len(ch.Nonce) != protocol.NonceSize {
		return protocol.PublicKey{}, "", fmt.Errorf("%w: challenge nonce must be %d bytes of base64", ErrProtocol, protocol.NonceSize)
	}

	pubRaw := key.Public().(ed25519.PublicKey)
	intro, _ := json.Marshal(protocol.Introduction{
		Type:      protocol.TypeIntroduction,
		PublicKey: protocol.Bytes(pubRaw),
		Signature: ed25519.Sign(key, protocol.IntroductionMessage(ch.Nonce)),
	})
	_ = conn.SetWriteDeadline(deadline)
	if err := conn.WriteMessage(websocket.TextMessage, intro); err != nil {
		return protocol.PublicKey{}, "", fmt.Errorf("signer: sending the introduction: %w", err)
	}
	_ = conn.SetWriteDeadline(time.Time{})

	data, err = readText(conn)
	if err != nil {
		var ce *CloseError
		if errors.As(closeOrErr(err, ""), &ce) && ce.Code == protocol.CloseIntroductionFailed {
			return protocol.PublicKey{}, "", &IntroductionError{CloseCode: ce.Code, Message: ce.Text}
		}
		return protocol.PublicKey{}, "", closeOrErr(err, "waiting for the relay to confirm the introduction")
	}
	t, err := frameType(data)
	if err != nil {
		return protocol.PublicKey{}, "", fmt.Errorf("%w: answer to the introduction: %v", ErrProtocol, err)
	}
	switch t {
	case protocol.TypeIntroduced:
		var in struct {
			PublicKey protocol.Bytes `json:"public_key"`
			SessionID string         `json:"session_id"`
		}
		if err := json.Unmarshal(data, &in); err != nil {
			return protocol.PublicKey{}, "", fmt.Errorf("%w: introduced frame: %v", ErrProtocol, err)
		}
		if !bytes.Equal(in.PublicKey, pubRaw) {
			return protocol.PublicKey{}, "", fmt.Errorf("%w: relay confirmed another public key", ErrProtocol)
		}
		if in.SessionID == "" {
			return protocol.PublicKey{}, "", fmt.Errorf("%w: introduced frame without session_id", ErrProtocol)
		}
		pk, _ := protocol.PublicKeyFromBytes(pubRaw)
		return pk, in.SessionID, nil
	case protocol.TypeError:
		var ef protocol.ErrorFrame
		_ = json.Unmarshal(data, &ef)
		ie := &IntroductionError{Code: ef.Code, Message: ef.Message}
		// The relay closes right after; read until its close frame to learn
		// the code (4401), for a short while within the dial deadline.
		if d := time.Now().Add(closeWait); d.Before(deadline) {
			_ = conn.SetReadDeadline(d)
		}
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					ie.CloseCode = ce.Code
				}
				return protocol.PublicKey{}, "", ie
			}
		}
	default:
		return protocol.PublicKey{}, "", fmt.Errorf("%w: expected introduced or error, got %q", ErrProtocol, t)
	}
}

// readText returns the next text frame; binary frames are a protocol error.
func readText(conn *websocket.Conn) ([]byte, error) {
	mt, data, err := conn.ReadMessage()
	if err != nil {
		return nil, err
	}
	if mt != websocket.TextMessage {
		return nil, fmt.Errorf("%w: binary frame from the relay", ErrProtocol)
	}
	return data, nil
}

// closeOrErr turns a websocket close into a *CloseError and wraps the rest.
func closeOrErr(err error, doing string) error {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return &CloseError{Code: ce.Code, Text: ce.Text}
	}
	if errors.Is(err, ErrProtocol) || doing == "" {
		return err
	}
	return fmt.Errorf("signer: %s: %w", doing, err)
}

// SessionID is the relay's name for this connection, from "introduced".
func (s *Session) SessionID() string { return s.sessionID }

// PublicKey is the key this session was introduced with.
func (s *Session) PublicKey() protocol.PublicKey { return s.pub }

// Requests delivers the relay's sign requests in arrival order. It is
// closed when the session ends. Each must be answered with Approve or
// Reject, or left to the relay's cancellation. When the channel is full
// the session stops reading (see DialOptions.RequestBuffer).
func (s *Session) Requests() <-chan Request { return s.reqs }

// Cancels delivers every sign_cancel the relay sends, also for requests
// already answered here. It never blocks the session: when full, the
// oldest is dropped. It is closed when the session ends.
func (s *Session) Cancels() <-chan Cancel { return s.cancels }

// Errors delivers the error frames the relay sends about this side's
// frames. It never blocks the session: when full, the oldest is dropped.
// It is closed when the session ends.
func (s *Session) Errors() <-chan *RelayError { return s.errs }

// Done is closed when the session has ended and its reader has stopped;
// Err then says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is nil while the session runs. Afterwards it is ErrClosed after
// Close, or a *CloseError carrying the relay's close code (1001 shutdown,
// 1008, 1009, ...) or 1006 for a dropped connection.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Approve signs the requested message with the session's key and sends the
// sign_response, echoing the message. It returns ErrNotPending if the
// request cannot be answered (unknown id, already answered, cancelled);
// if ctx ends before the frame is sent, the request stays pending. The
// relay may still refuse the answer with an error frame (see Errors).
func (s *Session) Approve(ctx context.Context, id string) error {
	p, err := s.claim(id)
	if err != nil {
		return err
	}
	frame, _ := json.Marshal(protocol.SignResponse{
		Type:      protocol.TypeSignResponse,
		RequestID: id,
		Message:   p.msg,
		Signature: ed25519.Sign(s.key, p.msg),
	})
	return s.answer(ctx, id, p, frame)
}

// Reject declines the request with a sign_reject; reason (may be empty) is
// passed on to the relay. Errors are as for Approve.
func (s *Session) Reject(ctx context.Context, id, reason string) error {
	p, err := s.claim(id)
	if err != nil {
		return err
	}
	frame, _ := json.Marshal(protocol.SignReject{Type: protocol.TypeSignReject, RequestID: id, Reason: reason})
	return s.answer(ctx, id, p, frame)
}

// claim marks a pending request as being answered, so that two answers
// cannot race.
func (s *Session) claim(id string) (*pending, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending == nil {
		return nil, s.err
	}
	p := s.pending[id]
	if p == nil || p.answering {
		return nil, ErrNotPending
	}
	p.answering = true
	return p, nil
}

func (s *Session) answer(ctx context.Context, id string, p *pending, frame []byte) error {
	sent, err := s.write(ctx, frame)
	s.mu.Lock()
	if sent {
		if s.pending != nil && s.pending[id] == p {
			delete(s.pending, id)
		}
	} else {
		p.answering = false // nothing went out: it can be answered again
	}
	s.mu.Unlock()
	if sent {
		if err == nil {
			p.cancel(ErrAnswered)
		} else {
			p.cancel(err)
		}
	}
	return err
}

// write sends one text frame. sent reports whether writing began, after
// which a failure leaves the connection broken and ends the session.
func (s *Session) write(ctx context.Context, frame []byte) (sent bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	select {
	case s.wmu <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	case <-s.done:
		return false, s.Err()
	}
	defer func() { <-s.wmu }()
	select {
	case <-s.closing:
		return false, ErrClosed
	case <-s.done:
		return false, s.Err()
	default:
	}
	deadline := time.Now().Add(s.opts.WriteTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = s.conn.SetWriteDeadline(deadline)
	if err := s.conn.WriteMessage(websocket.TextMessage, frame); err != nil {
		// The frame may be half written: the connection is unusable.
		_ = s.conn.Close()
		return true, fmt.Errorf("signer: write: %w", err)
	}
	return true, nil
}

// Close ends the session: it sends a normal close (1000) to the relay,
// waits for the relay's echo (2 s at most), then drops the connection and
// waits for the reader to stop. Pending requests' contexts are cancelled and the
// channels closed. Close is idempotent and safe from any goroutine; it
// always returns nil.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		deadline := time.Now().Add(closeWait)
		msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
		_ = s.conn.WriteControl(websocket.CloseMessage, msg, deadline)
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-s.readDone:
		case <-t.C:
		}
		t.Stop()
		_ = s.conn.Close()
	})
	<-s.done
	return nil
}

func (s *Session) startReading() {
	conn := s.conn
	idle := 2 * s.opts.KeepAlive
	touch := func() {
		if idle > 0 {
			_ = conn.SetReadDeadline(time.Now().Add(idle))
		}
	}
	conn.SetPongHandler(func(string) error { touch(); return nil })
	conn.SetPingHandler(func(data string) error {
		touch()
		err := conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(s.opts.WriteTimeout))
		var ne net.Error
		if err == nil || errors.Is(err, websocket.ErrCloseSent) || errors.As(err, &ne) {
			return nil
		}
		return err
	})

	var pinger sync.WaitGroup
	if s.opts.KeepAlive > 0 {
		pinger.Go(func() {
			t := time.NewTicker(s.opts.KeepAlive)
			defer t.Stop()
			for {
				select {
				case <-s.readDone:
					return
				case <-t.C:
					_ = conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(s.opts.WriteTimeout))
				}
			}
		})
	}

	go func() {
		var err error
		for {
			touch()
			mt, data, rerr := conn.ReadMessage()
			if rerr != nil {
				err = rerr
				break
			}
			if mt != websocket.TextMessage {
				s.log.Warn("ignoring a binary frame from the relay")
				continue
			}
			if !s.dispatch(data) {
				break
			}
		}
		close(s.readDone)
		_ = conn.Close()
		pinger.Wait()
		s.finish(err)
	}()
}

// finish records why the session ended and releases everything waiting on it.
func (s *Session) finish(readErr error) {
	var err error
	select {
	case <-s.closing:
		err = ErrClosed
	default:
		var ce *websocket.CloseError
		switch {
		case errors.As(readErr, &ce):
			err = &CloseError{Code: ce.Code, Text: ce.Text}
		case errors.Is(readErr, websocket.ErrReadLimit):
			err = &CloseError{Code: websocket.CloseMessageTooBig, Err: readErr}
		default:
			err = &CloseError{Code: websocket.CloseAbnormalClosure, Err: readErr}
		}
	}
	s.mu.Lock()
	s.err = err
	pend := s.pending
	s.pending = nil
	s.mu.Unlock()
	for _, p := range pend {
		p.cancel(err)
	}
	close(s.reqs)
	close(s.cancels)
	close(s.errs)
	close(s.done)
}

// dispatch handles one frame from the relay; false means stop reading
// because the session is closing.
func (s *Session) dispatch(data []byte) bool {
	t, err := frameType(data)
	if err != nil {
		s.log.Warn("ignoring a malformed frame from the relay", "err", err)
		return true
	}
	switch t {
	case protocol.TypeSignRequest:
		return s.onRequest(data)
	case protocol.TypeSignCancel:
		var c protocol.SignCancel
		if err := json.Unmarshal(data, &c); err != nil || c.RequestID == "" {
			s.log.Warn("ignoring a malformed sign_cancel", "err", err)
			return true
		}
		s.mu.Lock()
		p := s.pending[c.RequestID]
		delete(s.pending, c.RequestID)
		s.mu.Unlock()
		if p != nil {
			p.cancel(&CancelError{RequestID: c.RequestID, Reason: c.Reason})
		}
		pushDropOldest(s.cancels, Cancel{RequestID: c.RequestID, Reason: c.Reason})
	case protocol.TypeError:
		var e protocol.ErrorFrame
		if err := json.Unmarshal(data, &e); err != nil {
			s.log.Warn("ignoring a malformed error frame", "err", err)
			return true
		}
		pushDropOldest(s.errs, &RelayError{Code: e.Code, Message: e.Message, RequestID: e.RequestID})
	default:
		// challenge/introduced again, or a type from a newer contract.
		s.log.Debug("ignoring a frame", "type", t)
	}
	return true
}

func (s *Session) onRequest(data []byte) bool {
	var r protocol.SignRequest
	err := json.Unmarshal(data, &r)
	var exp time.Time
	if err == nil {
		switch {
		case r.RequestID == "":
			err = errors.New(`missing field "request_id"`)
		case r.Message == nil:
			err = errors.New(`missing field "message"`)
		default:
			exp, err = time.Parse(time.RFC3339Nano, r.ExpiresAt)
		}
	}
	if err != nil {
		s.log.Warn("ignoring a malformed sign_request", "err", err)
		return true
	}
	if bytes.HasPrefix(r.Message, []byte(protocol.ReservedPrefix)) {
		// Only the relay's own introduction uses this prefix; signing such
		// a message could let someone else pass for this key.
		s.log.Warn("refusing a sign_request with the reserved prefix", "request_id", r.RequestID)
		frame, _ := json.Marshal(protocol.SignReject{
			Type: protocol.TypeSignReject, RequestID: r.RequestID,
			Reason: "refused: message starts with the reserved prefix " + protocol.ReservedPrefix,
		})
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.WriteTimeout)
		_, _ = s.write(ctx, frame)
		cancel()
		return true
	}

	s.mu.Lock()
	if _, dup := s.pending[r.RequestID]; dup {
		s.mu.Unlock()
		s.log.Debug("ignoring a repeated sign_request", "request_id", r.RequestID)
		return true
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	s.pending[r.RequestID] = &pending{msg: r.Message, cancel: cancel}
	s.mu.Unlock()

	req := Request{
		ID:          r.RequestID,
		Message:     bytes.Clone(r.Message),
		Description: r.Description,
		Requester:   r.Requester,
		ExpiresAt:   exp,
		ctx:         ctx,
	}
	select {
	case s.reqs <- req:
		return true
	case <-s.closing:
		return false
	}
}

// pushDropOldest sends v without blocking, dropping the oldest entry when
// ch is full. Only the session's reader sends, so there is room afterwards.
func pushDropOldest[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}
