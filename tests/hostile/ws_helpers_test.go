package hostile

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// --- key holders (github.com/fasthttp/websocket) --------------------------

type frame map[string]any

func (f frame) str(k string) string { s, _ := f[k].(string); return s }

// holder is an introduced key holder whose frames a goroutine reads; it
// answers pings (the library does) and, with approve, every sign_request.
type holder struct {
	conn   *websocket.Conn
	pub    ed25519.PublicKey
	priv   ed25519.PrivateKey
	frames chan frame
	stop   chan struct{}
	done   chan struct{}
	err    error // why reading ended; set before done is closed
}

func newKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// connectHolder dials /ws and introduces a fresh key; the connection is
// closed, and its reader stopped, when the test ends.
func (r *relay) connectHolder(t *testing.T, approve bool, timeout time.Duration) (*holder, error) {
	pub, priv := newKey(t)
	d := websocket.Dialer{HandshakeTimeout: timeout}
	ws, _, err := d.Dial("ws://"+r.addr+"/ws", nil)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*holder, error) { ws.Close(); return nil, err }
	_ = ws.SetReadDeadline(time.Now().Add(timeout))
	var ch frame
	if err := ws.ReadJSON(&ch); err != nil {
		return fail(fmt.Errorf("reading the challenge: %w", err))
	}
	nonce, err := base64.StdEncoding.DecodeString(ch.str("nonce"))
	if ch.str("type") != "challenge" || err != nil || len(nonce) != 32 {
		return fail(fmt.Errorf("bad challenge %v", ch))
	}
	_ = ws.SetWriteDeadline(time.Now().Add(timeout))
	intro := frame{"type": "introduction", "public_key": b64(pub),
		"signature": b64(ed25519.Sign(priv, append([]byte(introPrefix), nonce...)))}
	if err := ws.WriteJSON(intro); err != nil {
		return fail(err)
	}
	var got frame
	if err := ws.ReadJSON(&got); err != nil {
		return fail(fmt.Errorf("reading introduced: %w", err))
	}
	if got.str("type") != "introduced" || got.str("public_key") != b64(pub) {
		return fail(fmt.Errorf("got %v, want introduced", got))
	}
	_ = ws.SetReadDeadline(time.Time{})
	h := &holder{conn: ws, pub: pub, priv: priv, frames: make(chan frame, 256),
		stop: make(chan struct{}), done: make(chan struct{})}
	go h.readLoop(approve)
	t.Cleanup(h.close)
	return h, nil
}

func (r *relay) mustHolder(t *testing.T, approve bool) *holder {
	t.Helper()
	h, err := r.connectHolder(t, approve, 5*time.Second)
	if err != nil {
		t.Fatalf("key holder: %v", err)
	}
	return h
}

func (h *holder) readLoop(approve bool) {
	defer close(h.done)
	for {
		var f frame
		if err := h.conn.ReadJSON(&f); err != nil {
			h.err = err
			return
		}
		if approve && f.str("type") == "sign_request" {
			msg, _ := base64.StdEncoding.DecodeString(f.str("message"))
			_ = h.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_ = h.conn.WriteJSON(frame{"type": "sign_response", "request_id": f.str("request_id"),
				"message": f.str("message"), "signature": b64(ed25519.Sign(h.priv, msg))})
		}
		select {
		case h.frames <- f:
		case <-h.stop:
			return
		}
	}
}

func (h *holder) close() {
	close(h.stop)
	h.conn.Close()
	<-h.done
}

// next returns the next frame, or an error when the connection ended or
// timeout passed.
func (h *holder) next(timeout time.Duration) (frame, error) {
	select {
	case f := <-h.frames:
		return f, nil
	case <-h.done:
		select {
		case f := <-h.frames:
			return f, nil
		default:
		}
		return nil, h.err
	case <-time.After(timeout):
		return nil, fmt.Errorf("no frame within %v", timeout)
	}
}

func (h *holder) expect(t *testing.T, typ string, timeout time.Duration) frame {
	t.Helper()
	f, err := h.next(timeout)
	if err != nil {
		t.Fatalf("key holder waiting for %s: %v", typ, err)
	}
	if f.str("type") != typ {
		t.Fatalf("key holder got %v, want a %s frame", f, typ)
	}
	return f
}

// awaitClose waits for the connection to end and returns its close code
// (0 when it ended without a close frame).
func (h *holder) awaitClose(timeout time.Duration) (int, error) {
	select {
	case <-h.done:
	case <-time.After(timeout):
		return 0, fmt.Errorf("still open after %v", timeout)
	}
	var ce *websocket.CloseError
	if errors.As(h.err, &ce) {
		return ce.Code, nil
	}
	return 0, h.err
}

// --- raw WebSocket ---------------------------------------------------------

// rawWS is a WebSocket spoken by hand, for frames no library would send.
type rawWS struct {
	conn
	nonce []byte // the challenge's, once read
}

// upgrade sends a WebSocket upgrade from local (nil: any address). On 101
// it returns the socket; otherwise the relay's answer, and the socket is
// closed.
func (r *relay) upgrade(local net.Addr, timeout time.Duration) (*rawWS, *response, error) {
	return r.upgradeEarly(local, timeout, nil)
}

// upgradeEarly is upgrade with early sent in the same write as the upgrade
// request, before the relay's 101: bytes a conforming client never sends.
func (r *relay) upgradeEarly(local net.Addr, timeout time.Duration, early []byte) (*rawWS, *response, error) {
	d := net.Dialer{Timeout: timeout, LocalAddr: local}
	c, err := d.Dial("tcp", r.addr)
	if err != nil {
		return nil, nil, err
	}
	var key [16]byte
	_, _ = rand.Read(key[:])
	k := b64(key[:])
	req := "GET /ws HTTP/1.1\r\nHost: " + r.addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + k + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(append([]byte(req), early...)); err != nil {
		c.Close()
		return nil, nil, err
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		c.Close()
		return nil, &response{status: res.StatusCode, header: res.Header, body: body, close: res.Close}, nil
	}
	sum := sha1.Sum([]byte(k + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if got := res.Header.Get("Sec-WebSocket-Accept"); got != b64(sum[:]) {
		c.Close()
		return nil, nil, fmt.Errorf("Sec-WebSocket-Accept %q is wrong", got)
	}
	_ = c.SetDeadline(time.Time{})
	return &rawWS{conn: conn{Conn: c, br: br}}, &response{status: res.StatusCode, header: res.Header}, nil
}

// mustUpgrade upgrades and closes the socket when the test ends.
func (r *relay) mustUpgrade(t *testing.T) *rawWS {
	t.Helper()
	w, res, err := r.upgrade(nil, 5*time.Second)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	if w == nil {
		t.Fatalf("upgrade refused: %v", res)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

const (
	opCont  = 0x0
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
)

// frameHeader is a masked client frame header declaring n payload bytes.
func frameHeader(fin bool, op byte, n uint64, mask [4]byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	h := []byte{b0}
	switch {
	case n < 126:
		h = append(h, 0x80|byte(n))
	case n <= 0xFFFF:
		h = append(h, 0x80|126, byte(n>>8), byte(n))
	default:
		h = append(h, 0x80|127)
		h = binary.BigEndian.AppendUint64(h, n)
	}
	return append(h, mask[:]...)
}

func maskBytes(p []byte, mask [4]byte) []byte {
	out := make([]byte, len(p))
	for i := range p {
		out[i] = p[i] ^ mask[i%4]
	}
	return out
}

func newMask() [4]byte {
	var m [4]byte
	_, _ = rand.Read(m[:])
	return m
}

// clientFrame is a complete masked frame.
func clientFrame(fin bool, op byte, payload []byte) []byte {
	m := newMask()
	return append(frameHeader(fin, op, uint64(len(payload)), m), maskBytes(payload, m)...)
}

func (w *rawWS) write(b []byte, timeout time.Duration) error {
	_ = w.SetWriteDeadline(time.Now().Add(timeout))
	_, err := w.Write(b)
	return err
}

type wsFrame struct {
	fin     bool
	op      byte
	payload []byte
}

// readFrame reads one server frame (the caller sets the read deadline).
func (w *rawWS) readFrame() (wsFrame, error) {
	var h [2]byte
	if _, err := io.ReadFull(w.br, h[:]); err != nil {
		return wsFrame{}, err
	}
	f := wsFrame{fin: h[0]&0x80 != 0, op: h[0] & 0x0F}
	n := uint64(h[1] & 0x7F)
	switch n {
	case 126:
		var x [2]byte
		if _, err := io.ReadFull(w.br, x[:]); err != nil {
			return f, err
		}
		n = uint64(binary.BigEndian.Uint16(x[:]))
	case 127:
		var x [8]byte
		if _, err := io.ReadFull(w.br, x[:]); err != nil {
			return f, err
		}
		n = binary.BigEndian.Uint64(x[:])
	}
	if n > MiB {
		return f, fmt.Errorf("server frame of %d bytes", n)
	}
	var mask [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(w.br, mask[:]); err != nil {
			return f, err
		}
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(w.br, f.payload); err != nil {
		return f, err
	}
	if masked {
		f.payload = maskBytes(f.payload, mask)
	}
	return f, nil
}

// readJSON reads the next data frame as JSON, answering pings on the way.
func (w *rawWS) readJSON(timeout time.Duration) (frame, error) {
	_ = w.SetReadDeadline(time.Now().Add(timeout))
	for i := 0; i < 1000; i++ {
		f, err := w.readFrame()
		if err != nil {
			return nil, err
		}
		switch f.op {
		case opPing:
			_ = w.write(clientFrame(true, opPong, f.payload), time.Second)
			continue
		case opClose:
			return nil, fmt.Errorf("closed with %d %q", closeCode(f.payload), closeText(f.payload))
		}
		var out frame
		if err := json.Unmarshal(f.payload, &out); err != nil {
			return nil, fmt.Errorf("frame is not JSON: %q", f.payload)
		}
		return out, nil
	}
	return nil, errors.New("too many control frames")
}

func closeCode(p []byte) int {
	if len(p) < 2 {
		return 1005
	}
	return int(binary.BigEndian.Uint16(p))
}

func closeText(p []byte) string {
	if len(p) < 2 {
		return ""
	}
	return string(p[2:])
}

// readChallenge reads the relay's challenge and keeps its nonce.
func (w *rawWS) readChallenge(timeout time.Duration) error {
	ch, err := w.readJSON(timeout)
	if err != nil {
		return fmt.Errorf("reading the challenge: %w", err)
	}
	nonce, err := base64.StdEncoding.DecodeString(ch.str("nonce"))
	if ch.str("type") != "challenge" || err != nil || len(nonce) != 32 {
		return fmt.Errorf("bad challenge %v", ch)
	}
	w.nonce = nonce
	return nil
}

// introductionFrame is a valid introduction for the challenge read, with a
// fresh key; pad adds an unknown field of that many bytes.
func (w *rawWS) introductionFrame(t *testing.T, pad int) []byte {
	pub, priv := newKey(t)
	intro := frame{"type": "introduction", "public_key": b64(pub),
		"signature": b64(ed25519.Sign(priv, append([]byte(introPrefix), w.nonce...)))}
	if pad > 0 {
		intro["pad"] = strings.Repeat("a", pad)
	}
	b, _ := json.Marshal(intro)
	return clientFrame(true, opText, b)
}

// introduce reads the challenge (unless already read), introduces a fresh
// key and returns the relay's answer frame.
func (w *rawWS) introduce(t *testing.T) (frame, error) {
	if w.nonce == nil {
		if err := w.readChallenge(5 * time.Second); err != nil {
			return nil, err
		}
	}
	if err := w.write(w.introductionFrame(t, 0), 5*time.Second); err != nil {
		return nil, err
	}
	return w.readJSON(5 * time.Second)
}

// wsEnd is how a raw WebSocket ended.
type wsEnd struct {
	closeCode int    // the relay's close code; 0 when no close frame came
	closeText string // its reason
	err       error  // the read error that ended it when no close frame came
	pings     int    // pings answered on the way
	data      []wsFrame
	elapsed   time.Duration
}

func (e wsEnd) String() string {
	if e.closeCode != 0 {
		return fmt.Sprintf("close %d %q after %v", e.closeCode, e.closeText, e.elapsed.Round(time.Millisecond))
	}
	return fmt.Sprintf("%v after %v", e.err, e.elapsed.Round(time.Millisecond))
}

// open reports whether the deadline passed with the socket still open.
func (e wsEnd) open() bool { return e.closeCode == 0 && isTimeout(e.err) }

// awaitEnd reads frames until the relay closes the socket or deadline
// passes; with pong it answers every ping.
func (w *rawWS) awaitEnd(deadline time.Time, pong bool) wsEnd {
	start := time.Now()
	var e wsEnd
	_ = w.SetReadDeadline(deadline)
	for i := 0; i < 100000; i++ {
		f, err := w.readFrame()
		if err != nil {
			e.err, e.elapsed = err, time.Since(start)
			return e
		}
		switch f.op {
		case opPing:
			e.pings++
			if pong {
				_ = w.write(clientFrame(true, opPong, f.payload), time.Second)
			}
		case opPong:
		case opClose:
			e.closeCode, e.closeText, e.elapsed = closeCode(f.payload), closeText(f.payload), time.Since(start)
			_ = w.write(clientFrame(true, opClose, f.payload[:min(2, len(f.payload))]), 200*time.Millisecond)
			return e
		default:
			if len(e.data) < 100 {
				e.data = append(e.data, f)
			}
		}
	}
	e.err, e.elapsed = errors.New("too many frames"), time.Since(start)
	return e
}
