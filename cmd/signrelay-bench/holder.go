package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/signrelay/signrelay/protocol"
)

// holderStats counts what the load holders saw, across all of them.
type holderStats struct {
	requests atomic.Int64 // sign_request frames received
	signed   atomic.Int64 // sign_response frames sent
	cancels  atomic.Int64 // sign_cancel frames received
	errors   atomic.Int64 // error frames received
	pings    atomic.Int64 // pings answered
	lastErr  atomic.Value // string: the last error frame, for the report
}

// holder is one active key holder of the load run: it approves every
// request by signing the message with its key (crypto/ed25519), like a
// service holding a key would.
type holder struct {
	key   ed25519.PrivateKey
	pub   []byte
	pub64 string // the wire form, for POST /sign bodies
	ws    *wsConn
}

func newHolder(seed []byte) *holder {
	key := ed25519.NewKeyFromSeed(seed)
	pub := key.Public().(ed25519.PublicKey)
	return &holder{key: key, pub: pub, pub64: base64.StdEncoding.EncodeToString(pub)}
}

// connect dials the relay from local and introduces the holder.
func (h *holder) connect(d *net.Dialer, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	ws, err := wsDial(d, addr, "/ws", 4096, deadline)
	if err != nil {
		return err
	}
	if err := ws.introduce(h.key, deadline); err != nil {
		_ = ws.c.Close()
		return err
	}
	h.ws = ws
	return nil
}

// serve answers the relay until the connection ends: approves every
// sign_request, answers pings, counts cancels and errors.
func (h *holder) serve(st *holderStats) error {
	ws := h.ws
	msg := make([]byte, 0, 256)
	out := make([]byte, 0, 512)
	for {
		op, p, err := ws.next()
		if err != nil {
			return err
		}
		switch op {
		case opPing:
			st.pings.Add(1)
			if err := ws.write(opPong, p); err != nil {
				return err
			}
			continue
		case opClose:
			_ = ws.write(opClose, p)
			return fmt.Errorf("relay closed the connection (%s)", closeText(p))
		case opText:
		default:
			continue
		}
		typ, _ := jsonRaw(p, "type")
		switch string(typ) {
		case protocol.TypeSignRequest:
			st.requests.Add(1)
			id, ok1 := jsonRaw(p, "request_id")
			m64, ok2 := jsonRaw(p, "message")
			if !ok1 || !ok2 {
				return fmt.Errorf("unreadable sign_request: %s", p)
			}
			var err error
			msg, err = base64.StdEncoding.AppendDecode(msg[:0], m64)
			if err != nil {
				return fmt.Errorf("sign_request with bad base64: %w", err)
			}
			sig := ed25519.Sign(h.key, msg)
			out = append(out[:0], `{"type":"sign_response","request_id":"`...)
			out = append(out, id...)
			out = append(out, `","message":"`...)
			out = append(out, m64...)
			out = append(out, `","signature":"`...)
			out = base64.StdEncoding.AppendEncode(out, sig)
			out = append(out, `"}`...)
			if err := ws.write(opText, out); err != nil {
				return err
			}
			st.signed.Add(1)
		case protocol.TypeSignCancel:
			st.cancels.Add(1)
		case protocol.TypeError:
			st.errors.Add(1)
			st.lastErr.Store(string(p))
		}
	}
}

// close ends the connection with a normal close frame.
func (h *holder) close() {
	if h.ws == nil {
		return
	}
	_ = h.ws.c.SetWriteDeadline(time.Now().Add(time.Second))
	_ = h.ws.write(opClose, []byte{0x03, 0xe8}) // 1000
	_ = h.ws.c.Close()
}
