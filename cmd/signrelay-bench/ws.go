package main

// A minimal WebSocket client, just enough for a key holder of the relay:
// the opening handshake, reading unmasked server frames (with continuation
// frames and control frames between them) and writing masked client frames.
// It keeps no goroutine of its own and allocates little, so that a single
// process can hold 19,000 introduced connections next to the load run.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // the WebSocket accept key is defined with SHA-1 (RFC 6455)
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/signrelay/signrelay/protocol"
)

// WebSocket opcodes (RFC 6455 §5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// maxInbound bounds one inbound message; the relay's frames here are small.
const maxInbound = 1 << 20

// wsConn is one client connection. Reading and writing are done by one
// goroutine at a time (the owner), so it needs no lock.
type wsConn struct {
	c    net.Conn
	rbuf []byte // inbound bytes not yet consumed: rbuf[rpos:rend]
	rpos int
	rend int
	msg  []byte // message being reassembled from fragments

	wmu sync.Mutex // serialises writers: the serving loop, and close at shutdown
	// guards the following fields
	wbuf []byte // outbound frame under construction
	rng  *mrand.PCG
}

// wsDial opens a TCP connection from local (may be nil) to addr and performs
// the WebSocket opening handshake for path. readBuf is the size of the
// read buffer the connection keeps.
func wsDial(d *net.Dialer, addr, path string, readBuf int, deadline time.Time) (*wsConn, error) {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	ws, err := wsHandshake(c, addr, path, readBuf, deadline)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return ws, nil
}

func wsHandshake(c net.Conn, host, path string, readBuf int, deadline time.Time) (*wsConn, error) {
	_ = c.SetDeadline(deadline)
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return nil, err
	}
	ws := &wsConn{c: c, rbuf: make([]byte, max(readBuf, 512)), rng: mrand.NewPCG(mrand.Uint64(), mrand.Uint64())}
	// Read the response head; the first frames may follow in the same read.
	for {
		if i := bytes.Index(ws.rbuf[:ws.rend], []byte("\r\n\r\n")); i >= 0 {
			if err := checkUpgrade(ws.rbuf[:i], key); err != nil {
				return nil, err
			}
			ws.rpos = i + 4
			break
		}
		if ws.rend == len(ws.rbuf) {
			return nil, errors.New("websocket handshake: response head too large")
		}
		n, err := c.Read(ws.rbuf[ws.rend:])
		ws.rend += n
		if err != nil && n == 0 {
			return nil, fmt.Errorf("websocket handshake: %w", err)
		}
	}
	_ = c.SetDeadline(time.Time{})
	return ws, nil
}

func checkUpgrade(head []byte, key string) error {
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 101")) {
		return fmt.Errorf("websocket handshake refused: %q", line)
	}
	h := sha1.Sum([]byte(key + wsGUID)) //nolint:gosec // RFC 6455
	want := base64.StdEncoding.EncodeToString(h[:])
	for _, l := range bytes.Split(rest, []byte("\r\n")) {
		name, value, ok := bytes.Cut(l, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("Sec-WebSocket-Accept")) {
			if string(bytes.TrimSpace(value)) != want {
				return errors.New("websocket handshake: wrong Sec-WebSocket-Accept")
			}
			return nil
		}
	}
	return errors.New("websocket handshake: no Sec-WebSocket-Accept")
}

// fill reads more bytes so that at least need bytes are buffered.
func (ws *wsConn) fill(need int) error {
	if ws.rend-ws.rpos >= need {
		return nil
	}
	if ws.rpos > 0 {
		ws.rend = copy(ws.rbuf, ws.rbuf[ws.rpos:ws.rend])
		ws.rpos = 0
	}
	if need > len(ws.rbuf) {
		nb := make([]byte, need)
		copy(nb, ws.rbuf[:ws.rend])
		ws.rbuf = nb
	}
	for ws.rend < need {
		n, err := ws.c.Read(ws.rbuf[ws.rend:])
		ws.rend += n
		if err != nil && ws.rend < need {
			return err
		}
	}
	return nil
}

// next returns the next message (text or binary, reassembled) or control
// frame. The payload is valid until the next call.
func (ws *wsConn) next() (op byte, payload []byte, err error) {
	ws.msg = ws.msg[:0]
	var msgOp byte
	for {
		if err := ws.fill(2); err != nil {
			return 0, nil, err
		}
		b0, b1 := ws.rbuf[ws.rpos], ws.rbuf[ws.rpos+1]
		fin, fop := b0&0x80 != 0, b0&0x0f
		masked := b1&0x80 != 0
		hdr := frameHeaderLen(b1)
		if err := ws.fill(hdr); err != nil {
			return 0, nil, err
		}
		v := framePayloadLen(ws.rbuf[ws.rpos:])
		if v > maxInbound {
			return 0, nil, errors.New("websocket: frame too large")
		}
		n := int(v)
		if n > maxInbound || len(ws.msg)+n > maxInbound {
			return 0, nil, errors.New("websocket: message too large")
		}
		if err := ws.fill(hdr + n); err != nil {
			return 0, nil, err
		}
		p := ws.rbuf[ws.rpos+hdr : ws.rpos+hdr+n]
		if masked {
			var mk [4]byte
			copy(mk[:], ws.rbuf[ws.rpos+hdr-4:])
			for i := range p {
				p[i] ^= mk[i&3]
			}
		}
		ws.rpos += hdr + n
		if fop >= opClose {
			return fop, p, nil // control frames may come between fragments
		}
		if fop != opContinuation {
			msgOp = fop
			if fin {
				return fop, p, nil
			}
		}
		ws.msg = append(ws.msg, p...)
		if fin {
			return msgOp, ws.msg, nil
		}
	}
}

// write sends one masked frame with opcode op.
func (ws *wsConn) write(op byte, payload []byte) error {
	ws.wmu.Lock()
	defer ws.wmu.Unlock()
	ws.wbuf = appendFrame(ws.wbuf[:0], op, payload, uint32(ws.rng.Uint64()))
	_, err := ws.c.Write(ws.wbuf)
	return err
}

// frameHeaderLen is the size of a frame's header, known from its second
// byte: 2, 4 or 10 bytes, plus 4 for a mask.
func frameHeaderLen(b1 byte) int {
	hdr := 2
	switch b1 & 0x7f {
	case 126:
		hdr = 4
	case 127:
		hdr = 10
	}
	if b1&0x80 != 0 {
		hdr += 4
	}
	return hdr
}

// framePayloadLen reads the payload length from a complete frame header.
func framePayloadLen(h []byte) uint64 {
	switch n := h[1] & 0x7f; n {
	case 126:
		return uint64(binary.BigEndian.Uint16(h[2:4]))
	case 127:
		return binary.BigEndian.Uint64(h[2:10])
	default:
		return uint64(n)
	}
}

// appendFrame appends one client frame (FIN set, masked with mask).
func appendFrame(b []byte, op byte, payload []byte, mask uint32) []byte {
	b = append(b, 0x80|op)
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	var mk [4]byte
	binary.LittleEndian.PutUint32(mk[:], mask)
	b = append(b, mk[:]...)
	start := len(b)
	b = append(b, payload...)
	for i := range b[start:] {
		b[start+i] ^= mk[i&3]
	}
	return b
}

// introduce answers the relay's challenge with key and waits for
// "introduced". It handles pings that arrive meanwhile.
func (ws *wsConn) introduce(key ed25519.PrivateKey, deadline time.Time) error {
	_ = ws.c.SetDeadline(deadline)
	defer func() { _ = ws.c.SetDeadline(time.Time{}) }()
	challenged := false
	for {
		op, p, err := ws.next()
		if err != nil {
			return fmt.Errorf("introduction: %w", err)
		}
		switch op {
		case opPing:
			if err := ws.write(opPong, p); err != nil {
				return err
			}
			continue
		case opClose:
			return fmt.Errorf("introduction: relay closed the connection (%s)", closeText(p))
		case opText:
		default:
			continue
		}
		switch jsonType(p) {
		case protocol.TypeChallenge:
			if challenged {
				return errors.New("introduction: second challenge")
			}
			nonce, err := protocol.DecodeBase64(jsonString(p, "nonce"))
			if err != nil || len(nonce) != protocol.NonceSize {
				return errors.New("introduction: bad nonce")
			}
			sig := ed25519.Sign(key, protocol.IntroductionMessage(nonce))
			pub := key.Public().(ed25519.PublicKey)
			frame := make([]byte, 0, 200)
			frame = append(frame, `{"type":"introduction","public_key":"`...)
			frame = base64.StdEncoding.AppendEncode(frame, pub)
			frame = append(frame, `","signature":"`...)
			frame = base64.StdEncoding.AppendEncode(frame, sig)
			frame = append(frame, `"}`...)
			if err := ws.write(opText, frame); err != nil {
				return err
			}
			challenged = true
		case protocol.TypeIntroduced:
			return nil
		case protocol.TypeError:
			return fmt.Errorf("introduction refused: %s", p)
		}
	}
}

func closeText(p []byte) string {
	if len(p) < 2 {
		return "no code"
	}
	return fmt.Sprintf("code %d %q", binary.BigEndian.Uint16(p), p[2:])
}

// jsonType returns the "type" field of a relay frame.
func jsonType(p []byte) string { return jsonString(p, "type") }

// jsonString extracts a top-level string field from a frame the relay
// produced with encoding/json (no whitespace). A key followed by `":"` can
// only be a key: inside a JSON string every quote is escaped. Values with
// escapes are decoded properly. It returns "" when the field is absent.
func jsonString(p []byte, field string) string {
	if v, ok := jsonRaw(p, field); ok {
		return string(v)
	}
	return jsonStringSlow(p, field)
}

// jsonRaw returns the bytes of a top-level string field without copying;
// ok is false when the field is absent or holds escapes.
func jsonRaw(p []byte, field string) (v []byte, ok bool) {
	var pat [64]byte
	k := append(pat[:0], '"')
	k = append(k, field...)
	k = append(k, `":"`...)
	i := bytes.Index(p, k)
	if i < 0 {
		return nil, false
	}
	v = p[i+len(k):]
	j := bytes.IndexByte(v, '"')
	if j < 0 || bytes.IndexByte(v[:j], '\\') >= 0 {
		return nil, false
	}
	return v[:j], true
}

func jsonStringSlow(p []byte, field string) string {
	var m map[string]any
	if json.Unmarshal(p, &m) != nil {
		return ""
	}
	s, _ := m[field].(string)
	return s
}
