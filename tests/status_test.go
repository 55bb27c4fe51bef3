package tests

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
)

// TestBadRequests covers the 400 row of the status table: every malformed
// body is refused before any key holder hears of it.
func TestBadRequests(t *testing.T) {
	r := startRelay(t, nil)
	h := r.connect(t, nil)
	key := b64(h.pub)
	msg := b64([]byte("hello"))
	cases := []struct{ name, body string }{
		{"not JSON", `{"public_key":`},
		{"JSON array", `[1,2]`},
		{"empty body", ``},
		{"null", `null`},
		{"trailing data", `{"public_key":"` + key + `","message":"` + msg + `"} x`},
		{"missing public_key", `{"message":"` + msg + `"}`},
		{"missing message", `{"public_key":"` + key + `"}`},
		{"empty message", `{"public_key":"` + key + `","message":""}`},
		{"key not base64", `{"public_key":"not base64!","message":"` + msg + `"}`},
		{"key url alphabet", `{"public_key":"` + base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32)) + `","message":"` + msg + `"}`},
		{"key without padding", `{"public_key":"` + strings.TrimRight(key, "=") + `","message":"` + msg + `"}`},
		{"key with line break", `{"public_key":"` + key[:10] + `\n` + key[10:] + `","message":"` + msg + `"}`},
		{"key 31 bytes", `{"public_key":"` + b64(make([]byte, 31)) + `","message":"` + msg + `"}`},
		{"key 33 bytes", `{"public_key":"` + b64(make([]byte, 33)) + `","message":"` + msg + `"}`},
		{"key is a number", `{"public_key":5,"message":"` + msg + `"}`},
		{"message not base64", `{"public_key":"` + key + `","message":"***"}`},
		{"reserved prefix", `{"public_key":"` + key + `","message":"` + b64([]byte("signing-relay/v1/introduction:xyz")) + `"}`},
		{"reserved prefix alone", `{"public_key":"` + key + `","message":"` + b64([]byte("signing-relay/")) + `"}`},
		{"timeout 0", `{"public_key":"` + key + `","message":"` + msg + `","timeout_ms":0}`},
		{"timeout negative", `{"public_key":"` + key + `","message":"` + msg + `","timeout_ms":-5}`},
		{"timeout over 60000", `{"public_key":"` + key + `","message":"` + msg + `","timeout_ms":60001}`},
		{"timeout fractional", `{"public_key":"` + key + `","message":"` + msg + `","timeout_ms":1.5}`},
		{"timeout string", `{"public_key":"` + key + `","message":"` + msg + `","timeout_ms":"100"}`},
		{"description 257 chars", `{"public_key":"` + key + `","message":"` + msg + `","description":"` + strings.Repeat("é", 257) + `"}`},
		{"description not string", `{"public_key":"` + key + `","message":"` + msg + `","description":7}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := r.post([]byte(tc.body))
			expectError(t, got, http.StatusBadRequest, "invalid_request")
		})
	}
	// None of them reached the key holder: the next frame is this request.
	res := r.signAsync(signBody(h.pub, []byte("after"), map[string]any{"description": strings.Repeat("é", 256)}))
	req := h.expect("sign_request")
	if req.str("message") != b64([]byte("after")) {
		t.Fatalf("holder saw %v", req)
	}
	h.approve(req)
	verifyResult(t, awaitResp(t, res), h.pub, []byte("after"))
}

func TestUnauthorized(t *testing.T) {
	r := startRelay(t, nil)
	pub, _ := newKey(t)
	body := signBody(pub, []byte("x"), nil)
	for name, auth := range map[string]string{
		"missing":          "",
		"unknown key":      "Bearer not-the-key",
		"prefix of key":    "Bearer " + testAPIKey[:10],
		"wrong scheme":     "Basic " + testAPIKey,
		"scheme only":      "Bearer ",
		"key with suffix":  "Bearer " + testAPIKey + "x",
		"empty token line": "Bearer",
	} {
		t.Run(name, func(t *testing.T) {
			got := r.postAuth(auth, body)
			expectError(t, got, http.StatusUnauthorized, "unauthorized")
		})
	}
	// The scheme is case-insensitive (RFC 9110): a known key passes auth.
	got := r.postAuth("bearer "+testAPIKey, body)
	expectError(t, got, http.StatusNotFound, "not_connected")
	if got.RequestID == "" {
		t.Fatal("404 after a request was made must carry its request_id")
	}
}

func TestRejected(t *testing.T) {
	r := startRelay(t, nil)
	h := r.connect(t, nil)
	res := r.signAsync(signBody(h.pub, []byte("transfer"), nil))
	req := h.expect("sign_request")
	h.reject(req, "user pressed Reject")
	got := awaitResp(t, res)
	expectError(t, got, http.StatusForbidden, "rejected")
	if got.RequestID != req.str("request_id") {
		t.Fatalf("request_id %q, want %q", got.RequestID, req.str("request_id"))
	}
	if got.ErrReason == nil || *got.ErrReason != "user pressed Reject" {
		t.Fatalf("reason not passed on: %s", got.RawBody)
	}
}

func TestTimeoutCancelsOnSocket(t *testing.T) {
	r := startRelay(t, nil)
	h := r.connect(t, nil)
	res := r.signAsync(signBody(h.pub, []byte("slow"), map[string]any{"timeout_ms": 200}))
	req := h.expect("sign_request")
	h.expectCancel(req.str("request_id"), "timeout")
	got := awaitResp(t, res)
	expectError(t, got, http.StatusGatewayTimeout, "timeout")
	if got.RequestID != req.str("request_id") {
		t.Fatalf("request_id %q, want %q", got.RequestID, req.str("request_id"))
	}
	// An answer after the end is refused as not pending.
	h.approve(req)
	h.expectError("unknown_request")
}

func TestInvalidSignatureSingleConnection(t *testing.T) {
	r := startRelay(t, nil)
	for _, tc := range []struct {
		name   string
		answer func(h *holder, req frame) frame
	}{
		{"signature by another key", func(h *holder, req frame) frame {
			_, other := newKey(t)
			msg, _ := base64.StdEncoding.DecodeString(req.str("message"))
			return frame{"signature": b64(ed25519.Sign(other, msg))}
		}},
		{"signature of another message", func(h *holder, req frame) frame {
			return frame{"signature": b64(ed25519.Sign(h.priv, []byte("other")))}
		}},
		{"message differs", func(h *holder, req frame) frame {
			other := []byte("other")
			return frame{"message": b64(other), "signature": b64(ed25519.Sign(h.priv, other))}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := r.connect(t, nil)
			res := r.signAsync(signBody(h.pub, []byte("pay"), nil))
			req := h.expect("sign_request")
			f := frame{"type": "sign_response", "request_id": req.str("request_id"), "message": req.str("message")}
			for k, v := range tc.answer(h, req) {
				f[k] = v
			}
			h.send(f)
			e := h.expectError("invalid_signature")
			if e.str("request_id") != req.str("request_id") {
				t.Fatalf("error without the request_id: %v", e)
			}
			expectError(t, awaitResp(t, res), http.StatusBadGateway, "invalid_signature")
		})
	}
}

func TestMessageTooLarge(t *testing.T) {
	r := startRelay(t, func(c *configT) { c.Sign.MaxMessageBytes = 1024 })
	h := r.connect(t, nil)
	got := r.post(signBody(h.pub, make([]byte, 1025), nil))
	expectError(t, got, http.StatusRequestEntityTooLarge, "message_too_large")
	// A body far over the limit is refused by the HTTP layer in the same shape.
	got = r.post(signBody(h.pub, make([]byte, 64<<10), nil))
	expectError(t, got, http.StatusRequestEntityTooLarge, "message_too_large")
	// Exactly at the limit is fine.
	res := r.signAsync(signBody(h.pub, append([]byte{1}, make([]byte, 1023)...), nil))
	h.approve(h.expect("sign_request"))
	if got := awaitResp(t, res); got.Status != http.StatusOK {
		t.Fatalf("1024 bytes: %d %s", got.Status, got.RawBody)
	}
}
