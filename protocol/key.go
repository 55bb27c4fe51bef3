// Package protocol defines the relay's wire contract (see docs/protocol.md):
// frame types, strict decoding and validation, base64 helpers and the bytes a
// key holder signs to introduce itself. It does no I/O and imports nothing
// else of the project, so every other package and outside client can share it.
package protocol

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"

	"filippo.io/edwards25519"
)

// PublicKey is an Ed25519 public key. It is a comparable value so that it can
// key maps directly, and it can only be made from exactly 32 bytes.
type PublicKey struct{ k [ed25519.PublicKeySize]byte }

// ErrBadBase64 reports a value that is not standard, padded base64.
var ErrBadBase64 = errors.New("is not standard base64 with padding")

// ErrKeyLength reports a public key that does not decode to 32 bytes.
var ErrKeyLength = errors.New("public key must be 32 bytes")

// PublicKeyFromBytes copies b into a PublicKey.
func PublicKeyFromBytes(b []byte) (PublicKey, error) {
	var pk PublicKey
	if len(b) != len(pk.k) {
		return pk, ErrKeyLength
	}
	copy(pk.k[:], b)
	return pk, nil
}

// CheckedPublicKey copies b into a PublicKey and refuses a weak one: it is
// PublicKeyFromBytes followed by Check, for the places that take a key from
// outside (an introduction, a POST /sign body).
func CheckedPublicKey(b []byte) (PublicKey, error) {
	pk, err := PublicKeyFromBytes(b)
	if err != nil {
		return PublicKey{}, err
	}
	if err := pk.Check(); err != nil {
		return PublicKey{}, err
	}
	return pk, nil
}

// ParsePublicKey decodes a key from the wire's base64 form.
func ParsePublicKey(s string) (PublicKey, error) {
	b, err := DecodeBase64(s)
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKeyFromBytes(b)
}

// Bytes returns the raw key as crypto/ed25519 wants it.
func (k PublicKey) Bytes() ed25519.PublicKey { return append(ed25519.PublicKey(nil), k.k[:]...) }

// Array returns the raw key by value, without allocating.
func (k PublicKey) Array() [ed25519.PublicKeySize]byte { return k.k }

// String is the wire form: standard base64 with padding.
func (k PublicKey) String() string { return base64.StdEncoding.EncodeToString(k.k[:]) }

// ShortString is a short, log-friendly prefix of the key ("k:AbCd1234"):
// the first 8 characters of String, which are the base64 of the first 6
// bytes. It is in every request's log line, so it makes one string only.
func (k PublicKey) ShortString() string {
	var b [10]byte
	b[0], b[1] = 'k', ':'
	base64.StdEncoding.Encode(b[2:], k.k[:6])
	return string(b[:])
}

// Verify reports whether sig is a valid Ed25519 signature of msg by k.
func (k PublicKey) Verify(msg, sig []byte) bool {
	return len(sig) == ed25519.SignatureSize && ed25519.Verify(k.k[:], msg, sig)
}

// ErrWeakKey refuses a public key that proves nothing (contract §G): one
// whose signatures can be made without a private key.
var ErrWeakKey = errors.New("public key is not a canonical encoding of a prime-order point")

// Edwards25519 constants of Check, read-only once initialised.
var (
	identityPoint  = edwards25519.NewIdentityPoint()
	scalarZero     = edwards25519.NewScalar()
	scalarMinusOne = func() *edwards25519.Scalar {
		one, err := edwards25519.NewScalar().SetCanonicalBytes(append([]byte{1}, make([]byte, 31)...))
		if err != nil {
			panic("protocol: the scalar 1: " + err.Error())
		}
		return edwards25519.NewScalar().Subtract(edwards25519.NewScalar(), one) // ℓ − 1
	}()
)

// Check returns ErrWeakKey unless k is the canonical encoding of a point of
// prime order ℓ, the only keys for which a valid signature shows that
// someone holds the private key. It refuses:
//
//   - bytes that are no point of the curve;
//   - non-canonical encodings (y ≥ p, or the sign bit set with x = 0), which
//     edwards25519 and many verifiers accept, so that one point would have
//     several keys;
//   - the 8 small-order points: for the identity, R = identity and S = 0
//     verify for every message; for the others, S = 0 and R one of the
//     small-order points verify for a large share of messages;
//   - mixed-order points, a prime-order point plus a torsion component: one
//     private key then stands behind up to 8 public keys, and verifiers that
//     do and do not multiply by the cofactor disagree about its signatures.
//
// Prime order is tested as [ℓ]P = identity, computed as [ℓ−1]P + P since a
// scalar cannot hold ℓ. A small-order point fails that test too, except the
// identity; [8]P ≠ identity says so explicitly. The arithmetic is
// filippo.io/edwards25519's, in variable time (a public key is public), and
// costs about one signature verification, cheap enough to run on every
// introduction and every POST /sign.
func (k PublicKey) Check() error {
	p, err := new(edwards25519.Point).SetBytes(k.k[:])
	if err != nil {
		return ErrWeakKey
	}
	// SetBytes accepts non-canonical encodings; Bytes writes the canonical one.
	if !bytes.Equal(p.Bytes(), k.k[:]) {
		return ErrWeakKey
	}
	if new(edwards25519.Point).MultByCofactor(p).Equal(identityPoint) == 1 {
		return ErrWeakKey
	}
	q := new(edwards25519.Point).VarTimeDoubleScalarBaseMult(scalarMinusOne, p, scalarZero)
	if q.Add(q, p).Equal(identityPoint) != 1 {
		return ErrWeakKey
	}
	return nil
}

// MarshalJSON encodes the key in its wire form.
func (k PublicKey) MarshalJSON() ([]byte, error) { return json.Marshal(k.String()) }

// UnmarshalJSON decodes the wire form strictly: base64 of exactly 32 bytes.
func (k *PublicKey) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return errors.New("public key must be a base64 string")
	}
	pk, err := ParsePublicKey(s)
	if err != nil {
		return err
	}
	*k = pk
	return nil
}

// DecodeBase64 decodes standard, padded base64 strictly: no line breaks, no
// URL alphabet, no missing padding and no stray bits in the last character.
func DecodeBase64(s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, ErrBadBase64
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, ErrBadBase64
	}
	return b, nil
}

// EncodeBase64 is the wire encoding of binary values.
func EncodeBase64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// Bytes is a binary value carried on the wire as strict standard base64.
// Decoding fails on anything else, so a frame with bad base64 is rejected as a
// whole. A missing or null field leaves it nil; "" gives an empty, non-nil value.
type Bytes []byte

// UnmarshalJSON decodes a JSON string of strict standard base64.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		return nil
	}
	// A JSON string without escapes is its own content: decode it in place.
	if n := len(data); n >= 2 && data[0] == '"' && data[n-1] == '"' && bytes.IndexByte(data[1:n-1], '\\') < 0 {
		raw := data[1 : n-1]
		if bytes.ContainsAny(raw, "\r\n") {
			return ErrBadBase64
		}
		v := make([]byte, base64.StdEncoding.DecodedLen(len(raw)))
		m, err := base64.StdEncoding.Strict().Decode(v, raw)
		if err != nil {
			return ErrBadBase64
		}
		*b = v[:m]
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return errors.New("must be a base64 string")
	}
	v, err := DecodeBase64(s)
	if err != nil {
		return err
	}
	if v == nil {
		v = []byte{}
	}
	*b = v
	return nil
}

// MarshalJSON encodes b as a JSON string of standard base64.
func (b Bytes) MarshalJSON() ([]byte, error) {
	out := make([]byte, 0, base64.StdEncoding.EncodedLen(len(b))+2)
	out = append(out, '"')
	out = base64.StdEncoding.AppendEncode(out, b)
	return append(out, '"'), nil
}
