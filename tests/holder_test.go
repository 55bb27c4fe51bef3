package tests

import (
	"crypto/ed25519"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/signrelay/signrelay/protocol"
)

// rawHolder dials and reads the challenge without introducing.
func (r *relay) rawHolder(t *testing.T) (*holder, []byte) {
	t.Helper()
	conn, _, err := r.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	pub, priv := newKey(t)
	h := &holder{t: t, conn: conn, priv: priv, pub: pub}
	nonce, err := protocol.DecodeBase64(h.expect("challenge").str("nonce"))
	if err != nil {
		t.Fatal(err)
	}
	return h, nonce
}

func TestIntroductionFailures(t *testing.T) {
	r := startRelay(t, func(c *configT) { c.WebSocket.IntroductionTimeout = configDuration(300 * time.Millisecond) })
	introSig := func(h *holder, nonce []byte) string {
		return b64(ed25519.Sign(h.priv, protocol.IntroductionMessage(nonce)))
	}
	cases := []struct {
		name string
		act  func(h *holder, nonce []byte)
	}{
		{"signature by another key", func(h *holder, nonce []byte) {
			_, other := newKey(t)
			h.send(frame{"type": "introduction", "public_key": b64(h.pub), "signature": b64(ed25519.Sign(other, protocol.IntroductionMessage(nonce)))})
		}},
		{"wrong nonce", func(h *holder, nonce []byte) {
			h.send(frame{"type": "introduction", "public_key": b64(h.pub), "signature": introSig(h, make([]byte, 32))})
		}},
		{"nonce without context", func(h *holder, nonce []byte) {
			h.send(frame{"type": "introduction", "public_key": b64(h.pub), "signature": b64(ed25519.Sign(h.priv, nonce))})
		}},
		{"bare claim of a key", func(h *holder, nonce []byte) {
			h.send(frame{"type": "introduction", "public_key": b64(h.pub)})
		}},
		{"short key", func(h *holder, nonce []byte) {
			h.send(frame{"type": "introduction", "public_key": b64(h.pub[:31]), "signature": introSig(h, nonce)})
		}},
		{"malformed JSON", func(h *holder, nonce []byte) { h.sendRaw(websocket.TextMessage, []byte(`{"type":`)) }},
		{"binary frame", func(h *holder, nonce []byte) { h.sendRaw(websocket.BinaryMessage, []byte(`{}`)) }},
		{"sign_response first", func(h *holder, nonce []byte) {
			h.send(frame{"type": "sign_response", "request_id": "6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11", "message": "AA==", "signature": b64(make([]byte, 64))})
		}},
		{"unknown type first", func(h *holder, nonce []byte) { h.send(frame{"type": "hello"}) }},
		{"deadline passed", func(h *holder, nonce []byte) {}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, nonce := r.rawHolder(t)
			h.t = t
			tc.act(h, nonce)
			h.expectError("introduction_failed")
			h.expectClose(4401)
			// The key was never registered.
			expectError(t, r.post(signBody(h.pub, []byte("x"), nil)), http.StatusNotFound, "not_connected")
		})
	}
}

func TestIntroducedConnectionErrors(t *testing.T) {
	r := startRelay(t, nil)
	h := r.connect(t, nil)
	unknownID := "6f1c0a4e-3f0b-4a4e-9a53-2f6c1b2d8e11"
	cases := []struct {
		name, code, requestID string
		send                  func()
	}{
		{"unknown type", "unknown_type", "", func() { h.send(frame{"type": "hello"}) }},
		{"malformed JSON", "malformed_frame", "", func() { h.sendRaw(websocket.TextMessage, []byte(`{"type":"sign_reject",`)) }},
		{"not an object", "malformed_frame", "", func() { h.sendRaw(websocket.TextMessage, []byte(`"sign_reject"`)) }},
		{"type missing", "malformed_frame", "", func() { h.send(frame{"request_id": unknownID}) }},
		{"type not a string", "malformed_frame", "", func() { h.send(frame{"type": 7}) }},
		{"binary frame", "malformed_frame", "", func() { h.sendRaw(websocket.BinaryMessage, []byte(`{"type":"sign_reject"}`)) }},
		{"request_id missing", "malformed_frame", "", func() { h.send(frame{"type": "sign_reject"}) }},
		{"request_id not a uuid", "malformed_frame", "", func() { h.send(frame{"type": "sign_reject", "request_id": "nope"}) }},
		{"signature wrong length", "malformed_frame", unknownID, func() {
			h.send(frame{"type": "sign_response", "request_id": unknownID, "message": "AA==", "signature": b64(make([]byte, 63))})
		}},
		{"signature bad base64", "malformed_frame", unknownID, func() {
			h.send(frame{"type": "sign_response", "request_id": unknownID, "message": "AA==", "signature": "%%"})
		}},
		{"unknown request (response)", "unknown_request", unknownID, func() {
			h.send(frame{"type": "sign_response", "request_id": unknownID, "message": "AA==", "signature": b64(make([]byte, 64))})
		}},
		{"unknown request (reject)", "unknown_request", unknownID, func() {
			h.send(frame{"type": "sign_reject", "request_id": unknownID, "reason": ""})
		}},
		{"second introduction", "already_introduced", "", func() {
			h.send(frame{"type": "introduction", "public_key": b64(h.pub), "signature": b64(make([]byte, 64))})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h.t = t
			tc.send()
			e := h.expectError(tc.code)
			if e.str("request_id") != tc.requestID {
				t.Fatalf("request_id %q, want %q", e.str("request_id"), tc.requestID)
			}
		})
	}
	// The connection stayed open and still signs; unknown fields are ignored.
	h.t = t
	res := r.signAsync(signBody(h.pub, []byte("still here"), nil))
	req := h.expect("sign_request")
	msg, _ := protocol.DecodeBase64(req.str("message"))
	h.send(frame{"type": "sign_response", "request_id": req.str("request_id"), "message": req.str("message"),
		"signature": b64(ed25519.Sign(h.priv, msg)), "x-future-field": []int{1, 2}})
	verifyResult(t, awaitResp(t, res), h.pub, msg)
}

// TestRequestIDOfAnotherConnection: a connection may only answer what was
// sent to it, even with a valid signature for a request of another key.
func TestRequestIDOfAnotherConnection(t *testing.T) {
	r := startRelay(t, nil)
	a := r.connect(t, nil)
	b := r.connect(t, nil)
	res := r.signAsync(signBody(a.pub, []byte("for a"), map[string]any{"timeout_ms": 5000}))
	req := a.expect("sign_request")
	msg, _ := protocol.DecodeBase64(req.str("message"))
	b.send(frame{"type": "sign_response", "request_id": req.str("request_id"), "message": req.str("message"), "signature": b64(ed25519.Sign(b.priv, msg))})
	b.expectError("unknown_request")
	b.send(frame{"type": "sign_reject", "request_id": req.str("request_id")})
	b.expectError("unknown_request")
	a.approve(req)
	verifyResult(t, awaitResp(t, res), a.pub, msg)
}

func TestFanOutFirstAnswerWins(t *testing.T) {
	r := startRelay(t, nil)
	a := r.connect(t, nil)
	b := r.connect(t, a.priv)
	if a.session == b.session {
		t.Fatal("two connections share a session id")
	}
	res := r.signAsync(signBody(a.pub, []byte("both see this"), nil))
	ra, rb := a.expect("sign_request"), b.expect("sign_request")
	if ra.str("request_id") != rb.str("request_id") || ra.str("expires_at") != rb.str("expires_at") {
		t.Fatalf("the two connections got different requests: %v %v", ra, rb)
	}
	b.approve(rb)
	verifyResult(t, awaitResp(t, res), a.pub, []byte("both see this"))
	a.expectCancel(ra.str("request_id"), "answered_elsewhere")
	// The late answer from a is no longer pending.
	a.approve(ra)
	a.expectError("unknown_request")
}

func TestRejectOnOneOfSeveral(t *testing.T) {
	r := startRelay(t, nil)
	a := r.connect(t, nil)
	b := r.connect(t, a.priv)
	res := r.signAsync(signBody(a.pub, []byte("no thanks"), nil))
	ra := a.expect("sign_request")
	b.expect("sign_request")
	a.reject(ra, "")
	expectError(t, awaitResp(t, res), http.StatusForbidden, "rejected")
	b.expectCancel(ra.str("request_id"), "answered_elsewhere")
}

func TestInvalidSignatureWithAnotherConnectionLeft(t *testing.T) {
	r := startRelay(t, nil)
	a := r.connect(t, nil)
	b := r.connect(t, a.priv)
	res := r.signAsync(signBody(a.pub, []byte("careful"), nil))
	ra, rb := a.expect("sign_request"), b.expect("sign_request")
	a.send(frame{"type": "sign_response", "request_id": ra.str("request_id"), "message": ra.str("message"), "signature": b64(make([]byte, 64))})
	a.expectError("invalid_signature")
	// b may still answer: the request is not over.
	b.approve(rb)
	verifyResult(t, awaitResp(t, res), a.pub, []byte("careful"))
}

func TestInvalidSignatureThenLastGoodConnectionLeaves(t *testing.T) {
	r := startRelay(t, nil)
	a := r.connect(t, nil)
	b := r.connect(t, a.priv)
	res := r.signAsync(signBody(a.pub, []byte("careful"), nil))
	ra := a.expect("sign_request")
	b.expect("sign_request")
	a.send(frame{"type": "sign_response", "request_id": ra.str("request_id"), "message": ra.str("message"), "signature": b64(make([]byte, 64))})
	a.expectError("invalid_signature")
	b.conn.Close() // nobody who may still answer is left
	expectError(t, awaitResp(t, res), http.StatusBadGateway, "invalid_signature")
}

func TestRequesterGone(t *testing.T) {
	r := startRelay(t, nil)
	h := r.connect(t, nil)
	// A raw HTTP/1.1 request on a TCP connection the backend then closes.
	c, err := net.Dial("tcp", strings.TrimPrefix(r.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	body := string(signBody(h.pub, []byte("abandoned"), nil))
	_, err = c.Write([]byte("POST /sign HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer " + testAPIKey +
		"\r\nContent-Type: application/json\r\nContent-Length: " + itoa(len(body)) + "\r\n\r\n" + body))
	if err != nil {
		t.Fatal(err)
	}
	req := h.expect("sign_request")
	c.Close()
	h.expectCancel(req.str("request_id"), "requester_gone")
	h.approve(req)
	h.expectError("unknown_request")
}

func TestHolderReconnectGetsPendingRequest(t *testing.T) {
	r := startRelay(t, nil)
	a := r.connect(t, nil)
	res := r.signAsync(signBody(a.pub, []byte("still waiting"), nil))
	first := a.expect("sign_request")
	a.conn.Close() // the tab reloads: the key has no live connection now
	b := r.connect(t, a.priv)
	again := b.expect("sign_request")
	for _, k := range []string{"request_id", "expires_at", "message", "description"} {
		if first.str(k) != again.str(k) {
			t.Fatalf("%s changed on redelivery: %q -> %q", k, first.str(k), again.str(k))
		}
	}
	b.approve(again)
	verifyResult(t, awaitResp(t, res), a.pub, []byte("still waiting"))
}

func TestSecondDeviceGetsPendingRequest(t *testing.T) {
	r := startRelay(t, nil)
	a := r.connect(t, nil)
	res := r.signAsync(signBody(a.pub, []byte("phone joins"), nil))
	first := a.expect("sign_request")
	b := r.connect(t, a.priv)
	again := b.expect("sign_request")
	if first.str("request_id") != again.str("request_id") || first.str("expires_at") != again.str("expires_at") {
		t.Fatalf("redelivered %v, first %v", again, first)
	}
	b.approve(again)
	verifyResult(t, awaitResp(t, res), a.pub, []byte("phone joins"))
	a.expectCancel(first.str("request_id"), "answered_elsewhere")
}

func TestLastHolderLeavesThenTimeout(t *testing.T) {
	r := startRelay(t, nil)
	a := r.connect(t, nil)
	res := r.signAsync(signBody(a.pub, []byte("nobody home"), map[string]any{"timeout_ms": 300}))
	a.expect("sign_request")
	a.conn.Close()
	// Not failed at once (would be 404 or 502): it waits for the deadline.
	expectError(t, awaitResp(t, res), http.StatusGatewayTimeout, "timeout")
}

func TestExpiresAtMatchesTimeout(t *testing.T) {
	r := startRelay(t, nil)
	h := r.connect(t, nil)
	before := time.Now()
	res := r.signAsync(signBody(h.pub, []byte("when"), map[string]any{"timeout_ms": 30000}))
	req := h.expect("sign_request")
	exp, err := time.Parse(time.RFC3339Nano, req.str("expires_at"))
	if err != nil || !strings.HasSuffix(req.str("expires_at"), "Z") {
		t.Fatalf("expires_at %q is not RFC 3339 UTC: %v", req.str("expires_at"), err)
	}
	if d := exp.Sub(before); d < 29*time.Second || d > 31*time.Second {
		t.Fatalf("expires_at %s is %s after the request, want about 30s", exp, d)
	}
	h.reject(req, "")
	awaitResp(t, res)
}
