package protocol

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"testing"
	"time"
)

// benchKey returns a key pair and a 32-byte message signed by it.
func benchKey(b *testing.B) (ed25519.PublicKey, []byte, []byte) {
	b.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, 32)
	_, _ = rand.Read(msg)
	return pub, msg, ed25519.Sign(priv, msg)
}

// BenchmarkEd25519Verify is the yardstick: the one operation a round trip
// cannot avoid. Compare every other figure with it.
func BenchmarkEd25519Verify(b *testing.B) {
	pub, msg, sig := benchKey(b)
	b.ReportAllocs()
	for b.Loop() {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("valid signature refused")
		}
	}
}

// BenchmarkPublicKeyVerify is the relay's own verify call (length check,
// then ed25519.Verify).
func BenchmarkPublicKeyVerify(b *testing.B) {
	pub, msg, sig := benchKey(b)
	k, _ := PublicKeyFromBytes(pub)
	b.ReportAllocs()
	for b.Loop() {
		if !k.Verify(msg, sig) {
			b.Fatal("valid signature refused")
		}
	}
}

// BenchmarkPublicKeyCheck is the weak-key check that introductions and
// POST /sign add; compare it with BenchmarkEd25519Verify.
func BenchmarkPublicKeyCheck(b *testing.B) {
	pub, _, _ := benchKey(b)
	k, _ := PublicKeyFromBytes(pub)
	b.ReportAllocs()
	for b.Loop() {
		if err := k.Check(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeHolderFrameSignResponse decodes the frame every round trip
// receives: a sign_response for a 32-byte message.
func BenchmarkDecodeHolderFrameSignResponse(b *testing.B) {
	_, msg, sig := benchKey(b)
	frame := []byte(`{"type":"sign_response","request_id":"3f1d2c4b-5a69-4788-9a0b-1c2d3e4f5a6b","message":"` +
		base64.StdEncoding.EncodeToString(msg) + `","signature":"` + base64.StdEncoding.EncodeToString(sig) + `"}`)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		f, err := DecodeHolderFrame(frame)
		if err != nil {
			b.Fatal(err)
		}
		if _, ok := f.(*SignResponse); !ok {
			b.Fatalf("decoded %T", f)
		}
	}
}

// BenchmarkDecodeHolderFrameSignReject decodes the other answer a holder gives.
func BenchmarkDecodeHolderFrameSignReject(b *testing.B) {
	frame := []byte(`{"type":"sign_reject","request_id":"3f1d2c4b-5a69-4788-9a0b-1c2d3e4f5a6b","reason":"user said no"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeHolderFrame(frame); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeSignRequest encodes the frame every round trip sends.
func BenchmarkEncodeSignRequest(b *testing.B) {
	msg := make([]byte, 32)
	_, _ = rand.Read(msg)
	expires := time.Now().Add(time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		if f := EncodeSignRequest("3f1d2c4b-5a69-4788-9a0b-1c2d3e4f5a6b", msg, "", "", expires); len(f) == 0 {
			b.Fatal("empty frame")
		}
	}
}

// BenchmarkDecodeSignBody decodes a POST /sign body with a 32-byte message.
func BenchmarkDecodeSignBody(b *testing.B) {
	pub, msg, _ := benchKey(b)
	body := []byte(`{"public_key":"` + base64.StdEncoding.EncodeToString(pub) + `","message":"` +
		base64.StdEncoding.EncodeToString(msg) + `","timeout_ms":10000}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeSignBody(body); err != nil {
			b.Fatal(err)
		}
	}
}
