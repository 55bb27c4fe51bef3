package tests

import (
	"crypto/ed25519"
	"encoding/hex"
	"net/http"
	"testing"

	"github.com/signrelay/signrelay/protocol"
)

// weakKeys are public keys that are not the canonical encoding of a point of
// prime order: the eight small-order points and non-canonical encodings of
// some of them. crypto/ed25519 accepts every one of them, and for each a
// signature "by" it can be made without any private key (see forge).
var weakKeys = []struct{ name, hex string }{
	{"identity (order 1)", "0100000000000000000000000000000000000000000000000000000000000000"},
	{"(0,-1), order 2", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"},
	{"y = 0, order 4", "0000000000000000000000000000000000000000000000000000000000000000"},
	{"y = 0 with x negative, order 4", "0000000000000000000000000000000000000000000000000000000000000080"},
	{"order 8", "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"},
	{"another of order 8", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"},
	{"identity encoded non-canonically (y = p+1)", "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"},
	{"y = 0 encoded non-canonically (y = p)", "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"},
	{"identity with the sign bit of x = 0 set", "0100000000000000000000000000000000000000000000000000000000000080"},
	{"(0,-1) with the sign bit of x = 0 set", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"},
}

// smallOrderPoints are the canonical encodings of the eight points of small
// order, the candidates for R in a forged signature.
var smallOrderPoints = []string{
	"0100000000000000000000000000000000000000000000000000000000000000",
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	"0000000000000000000000000000000000000000000000000000000000000000",
	"0000000000000000000000000000000000000000000000000000000000000080",
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// forge returns a signature of msg "by" the small-order key pub that
// crypto/ed25519 accepts, made without a private key: S = 0 and R a
// small-order point, so that the check [S]B = R + [k]A holds when R = -[k]A,
// which depends only on k modulo the point's order. For the identity any
// message works with R = identity; for the others some R works for most
// messages. nil when none does for this msg.
func forge(t *testing.T, pub, msg []byte) []byte {
	t.Helper()
	for _, r := range smallOrderPoints {
		sig := append(mustHex(t, r), make([]byte, 32)...)
		if ed25519.Verify(pub, msg, sig) {
			return sig
		}
	}
	return nil
}

// TestWeakKeyIntroduction proves finding 7 (weak keys): a small-order public
// key proves nothing, since signatures "by" it verify without a private key,
// yet the relay accepted an introduction with it, so anyone could pose as
// that key's holder (and answer every request for it). Each weak key, with
// an introduction signature that crypto/ed25519 accepts, gets
// introduction_failed and close 4401; a normal key still works.
func TestWeakKeyIntroduction(t *testing.T) {
	// The forgery for the identity verifies for every message: the refusal
	// below is about the key, not the signature.
	identity := mustHex(t, weakKeys[0].hex)
	universal := append(mustHex(t, "0100000000000000000000000000000000000000000000000000000000000000"), make([]byte, 32)...)
	for _, m := range []string{"", "transfer 1000 EUR", "signing-relay/v1/introduction:anything"} {
		if !ed25519.Verify(identity, []byte(m), universal) {
			t.Fatalf("R = identity, S = 0 does not verify %q under the identity key", m)
		}
	}

	r := startRelay(t, hostile)
	for _, wk := range weakKeys {
		t.Run(wk.name, func(t *testing.T) {
			pub := mustHex(t, wk.hex)
			// A fresh challenge until one can be forged (most can).
			for attempt := 1; ; attempt++ {
				h, nonce := r.rawHolder(t)
				h.t = t
				sig := forge(t, pub, protocol.IntroductionMessage(nonce))
				if sig == nil && attempt < 32 {
					h.conn.Close()
					continue
				}
				if sig == nil {
					t.Logf("no forgery found in %d challenges; sending an arbitrary signature", attempt)
					sig = make([]byte, 64)
				}
				h.send(frame{"type": "introduction", "public_key": b64(pub), "signature": b64(sig)})
				f, err := h.read()
				if err != nil {
					t.Fatalf("after the introduction: %v", err)
				}
				if f.str("type") != protocol.TypeError || f.str("code") != protocol.CodeIntroductionFailed {
					t.Fatalf("introduction with weak key %s and a signature crypto/ed25519 accepts got %v, want introduction_failed", wk.hex, f)
				}
				h.expectClose(protocol.CloseIntroductionFailed)
				return
			}
		})
	}
	t.Run("a normal key still works", func(t *testing.T) {
		h := r.connect(t, nil).on(t)
		res := r.signAsync(signBody(h.pub, []byte("normal"), nil))
		h.approve(h.expectRequest([]byte("normal")))
		verifyResult(t, awaitResp(t, res), h.pub, []byte("normal"))
	})
}

// TestWeakKeySign proves finding 7 (weak keys, backend side): POST /sign
// with a small-order public key was looked up like any key (404), though no
// signature "by" it could mean anything. It is 400 invalid_request.
func TestWeakKeySign(t *testing.T) {
	r := startRelay(t, hostile)
	for _, wk := range weakKeys {
		t.Run(wk.name, func(t *testing.T) {
			body := `{"public_key":"` + b64(mustHex(t, wk.hex)) + `","message":"` + b64([]byte("valid message")) + `","timeout_ms":300}`
			expectError(t, r.post([]byte(body)), http.StatusBadRequest, "invalid_request")
		})
	}
	t.Run("a normal key is looked up", func(t *testing.T) {
		pub, _ := newKey(t)
		expectError(t, r.post(signBody(pub, []byte("valid message"), nil)), http.StatusNotFound, "not_connected")
	})
}
