package tests

import (
	"net/http"
	"testing"

	"github.com/signrelay/signrelay/protocol"
)

func TestSignRoundTrip(t *testing.T) {
	r := startRelay(t, nil)
	h := r.connect(t, nil)
	msg := []byte("pay 10 EUR to Alice")
	res := r.signAsync(signBody(h.pub, msg, map[string]any{"description": "payment #1"}))

	req := h.expect(protocol.TypeSignRequest)
	if req.str("message") != b64(msg) || req.str("description") != "payment #1" {
		t.Fatalf("sign_request %v", req)
	}
	if req.str("request_id") == "" || req.str("expires_at") == "" {
		t.Fatalf("sign_request without id or expiry: %v", req)
	}
	h.approve(req)
	got := awaitResp(t, res)
	verifyResult(t, got, h.pub, msg)
	if got.RequestID != req.str("request_id") {
		t.Fatalf("request_id %q, sign_request had %q", got.RequestID, req.str("request_id"))
	}
}

func TestNotConnected(t *testing.T) {
	r := startRelay(t, nil)
	pub, _ := newKey(t)
	got := r.post(signBody(pub, []byte("x"), nil))
	expectError(t, got, http.StatusNotFound, "not_connected")
}
