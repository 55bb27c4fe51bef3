package protocol

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"math/big"
	"testing"

	"filippo.io/edwards25519"
)

// smallOrderHex are the canonical encodings of the 8 points of order
// dividing 8, as listed in "Taming the many EdDSAs" (Chalkias et al.).
// TestSmallOrderPoints checks the list against the library.
var smallOrderHex = []string{
	"0100000000000000000000000000000000000000000000000000000000000000", // identity, order 1
	"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // order 2
	"0000000000000000000000000000000000000000000000000000000000000000", // order 4
	"0000000000000000000000000000000000000000000000000000000000000080", // order 4
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", // order 8
	"c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", // order 8
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", // order 8
	"26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85", // order 8
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		t.Fatalf("bad test vector %q", s)
	}
	return b
}

func mustPoint(t testing.TB, b []byte) *edwards25519.Point {
	t.Helper()
	p, err := new(edwards25519.Point).SetBytes(b)
	if err != nil {
		t.Fatalf("%x is not a point: %v", b, err)
	}
	return p
}

func keyOf(t testing.TB, b []byte) PublicKey {
	t.Helper()
	k, err := PublicKeyFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// pointOrder returns the order of p if it divides 8, else 0, by repeated
// addition (independent of MultByCofactor and of Check's scalar product).
func pointOrder(p *edwards25519.Point) int {
	q := edwards25519.NewIdentityPoint()
	for n := 1; n <= 8; n++ {
		q.Add(q, p)
		if q.Equal(edwards25519.NewIdentityPoint()) == 1 {
			return n
		}
	}
	return 0
}

// The list of small-order encodings is exactly the torsion subgroup that
// the library generates from one point of order 8, and Check refuses each.
func TestSmallOrderPoints(t *testing.T) {
	listed := map[string]bool{}
	for _, h := range smallOrderHex {
		b := mustHex(t, h)
		p := mustPoint(t, b)
		if !bytes.Equal(p.Bytes(), b) {
			t.Errorf("%s is not canonical", h)
		}
		if new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) != 1 || pointOrder(p) == 0 {
			t.Errorf("%s is not of small order", h)
		}
		listed[h] = true
		if err := keyOf(t, b).Check(); err != ErrWeakKey {
			t.Errorf("Check(%s) = %v, want ErrWeakKey", h, err)
		}
	}
	// The multiples of a point of order 8 are the 8 torsion points.
	gen := mustPoint(t, mustHex(t, smallOrderHex[4]))
	if pointOrder(gen) != 8 {
		t.Fatalf("generator has order %d", pointOrder(gen))
	}
	generated := map[string]bool{}
	q := edwards25519.NewIdentityPoint()
	for i := 0; i < 8; i++ {
		generated[hex.EncodeToString(q.Bytes())] = true
		q.Add(q, gen)
	}
	if len(generated) != 8 || len(listed) != 8 {
		t.Fatalf("%d generated, %d listed", len(generated), len(listed))
	}
	for h := range generated {
		if !listed[h] {
			t.Errorf("torsion point %s is missing from the list", h)
		}
	}
}

// A "signature" by the identity key is R = identity, S = 0, for any
// message: crypto/ed25519 accepts it, which is why Check must refuse the key.
func TestIdentityKeyForgery(t *testing.T) {
	identity := mustHex(t, smallOrderHex[0])
	sig := append(append([]byte(nil), identity...), make([]byte, 32)...)
	for _, msg := range []string{"pay 1000 to mallory", "anything", ""} {
		if !ed25519.Verify(identity, []byte(msg), sig) {
			t.Fatalf("forgery of %q does not verify; the test's premise is wrong", msg)
		}
	}
	if _, err := CheckedPublicKey(identity); err != ErrWeakKey {
		t.Fatalf("CheckedPublicKey(identity) = %v", err)
	}
}

// fieldP is 2^255 - 19.
var fieldP = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))

// le32 writes n, which must be below 2^256, in 32 little-endian bytes.
func le32(n *big.Int) []byte {
	be := n.FillBytes(make([]byte, 32))
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		be[i], be[j] = be[j], be[i]
	}
	return be
}

// Non-canonical encodings of valid points are refused: y + p for the
// y < 19 that are on the curve (with either sign bit), and the sign bit set
// with x = 0 (y = 1 and y = -1).
func TestNonCanonicalKeys(t *testing.T) {
	tried := 0
	for y := int64(0); y < 19; y++ {
		for _, sign := range []byte{0, 0x80} {
			b := le32(new(big.Int).Add(fieldP, big.NewInt(y)))
			b[31] |= sign
			p, err := new(edwards25519.Point).SetBytes(b)
			if err != nil {
				continue // y is not on the curve
			}
			tried++
			if bytes.Equal(p.Bytes(), b) {
				t.Fatalf("%x re-encodes to itself", b)
			}
			if err := keyOf(t, b).Check(); err != ErrWeakKey {
				t.Errorf("Check(%x) = %v, want ErrWeakKey", b, err)
			}
		}
	}
	if tried < 4 {
		t.Fatalf("only %d non-canonical y+p encodings tried", tried)
	}
	for _, h := range []string{
		"0100000000000000000000000000000000000000000000000000000000000080", // identity, sign bit set
		"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", // y = -1, sign bit set
	} {
		b := mustHex(t, h)
		if p := mustPoint(t, b); bytes.Equal(p.Bytes(), b) {
			t.Fatalf("%s re-encodes to itself", h)
		}
		if err := keyOf(t, b).Check(); err != ErrWeakKey {
			t.Errorf("Check(%s) = %v, want ErrWeakKey", h, err)
		}
	}
}

// Bytes that are no point at all are refused.
func TestOffCurveKey(t *testing.T) {
	found := 0
	for y := int64(2); y < 64 && found < 3; y++ {
		b := le32(big.NewInt(y))
		if _, err := new(edwards25519.Point).SetBytes(b); err == nil {
			continue
		}
		found++
		if err := keyOf(t, b).Check(); err != ErrWeakKey {
			t.Errorf("Check(%x) = %v, want ErrWeakKey", b, err)
		}
	}
	if found == 0 {
		t.Fatal("no off-curve encoding found")
	}
}

// A real key plus any non-trivial torsion point is of mixed order.
func TestMixedOrderKeys(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := keyOf(t, pub).Check(); err != nil {
		t.Fatalf("real key refused: %v", err)
	}
	a := mustPoint(t, pub)
	for _, h := range smallOrderHex[1:] {
		mixed := new(edwards25519.Point).Add(a, mustPoint(t, mustHex(t, h)))
		b := mixed.Bytes()
		if err := keyOf(t, b).Check(); err != ErrWeakKey {
			t.Errorf("real key + %s: Check = %v, want ErrWeakKey", h[:8], err)
		}
		// It is not small-order: only the prime-order test catches it.
		if new(edwards25519.Point).MultByCofactor(mixed).Equal(edwards25519.NewIdentityPoint()) == 1 {
			t.Errorf("real key + %s is small-order", h[:8])
		}
	}
}

func TestGeneratedKeysPass(t *testing.T) {
	for i := 0; i < 1000; i++ {
		pub, _, err := ed25519.GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		k, err := CheckedPublicKey(pub)
		if err != nil {
			t.Fatalf("key %x refused: %v", pub, err)
		}
		if !bytes.Equal(k.Bytes(), pub) {
			t.Fatal("CheckedPublicKey changed the key")
		}
	}
	if _, err := CheckedPublicKey(make([]byte, 31)); !errors.Is(err, ErrKeyLength) {
		t.Fatalf("31 bytes: %v", err)
	}
}

// groupOrder is ℓ = 2^252 + 27742317777372353535851937790883648493.
func groupOrder() *big.Int {
	n, _ := new(big.Int).SetString("27742317777372353535851937790883648493", 10)
	return n.Add(n, new(big.Int).Lsh(big.NewInt(1), 252))
}

// strongKeyOracle decides what Check decides, computed other ways: the
// encoding is canonical by integer comparison (y < p, and no sign bit on
// x = 0, that is on y = ±1), [8]P by doublings is not the identity, and P is
// in the prime-order subgroup both as [8⁻¹ mod ℓ]([8]P) = P and as
// [ℓ−1]P + P = identity with ℓ−1 from big-integer arithmetic, each through
// the constant-time ScalarMult.
func strongKeyOracle(t testing.TB, b []byte) bool {
	p, err := new(edwards25519.Point).SetBytes(b)
	if err != nil {
		return false
	}
	y := le32ToInt(b)
	sign := y.Bit(255) == 1
	y.SetBit(y, 255, 0)
	if y.Cmp(fieldP) >= 0 {
		return false
	}
	if sign && (y.Cmp(big.NewInt(1)) == 0 || y.Cmp(new(big.Int).Sub(fieldP, big.NewInt(1))) == 0) {
		return false
	}
	id := edwards25519.NewIdentityPoint()
	p8 := new(edwards25519.Point).Double(p)
	p8.Double(p8).Double(p8)
	if p8.Equal(id) == 1 {
		return false
	}
	eight, err := edwards25519.NewScalar().SetCanonicalBytes(le32(big.NewInt(8)))
	if err != nil {
		t.Fatal(err)
	}
	inv8 := edwards25519.NewScalar().Invert(eight)
	viaInverse := new(edwards25519.Point).ScalarMult(inv8, p8).Equal(p) == 1

	lMinus1, err := edwards25519.NewScalar().SetCanonicalBytes(le32(new(big.Int).Sub(groupOrder(), big.NewInt(1))))
	if err != nil {
		t.Fatal(err)
	}
	q := new(edwards25519.Point).ScalarMult(lMinus1, p)
	viaOrder := q.Add(q, p).Equal(id) == 1
	if viaInverse != viaOrder {
		t.Fatalf("%x: the two prime-order tests disagree", b)
	}
	return viaOrder
}

func le32ToInt(b []byte) *big.Int {
	be := make([]byte, len(b))
	for i := range b {
		be[len(b)-1-i] = b[i]
	}
	return new(big.Int).SetBytes(be)
}

// The oracle itself agrees with the fixed cases.
func TestStrongKeyOracle(t *testing.T) {
	for _, h := range smallOrderHex {
		if strongKeyOracle(t, mustHex(t, h)) {
			t.Errorf("oracle accepts %s", h)
		}
	}
	pub, _, _ := ed25519.GenerateKey(nil)
	if !strongKeyOracle(t, pub) {
		t.Error("oracle refuses a real key")
	}
	mixed := new(edwards25519.Point).Add(mustPoint(t, pub), mustPoint(t, mustHex(t, smallOrderHex[4])))
	if strongKeyOracle(t, mixed.Bytes()) {
		t.Error("oracle accepts a mixed-order key")
	}
}

// FuzzPublicKeyCheck: for any 32 bytes Check never panics, answers nil or
// ErrWeakKey, and accepts exactly the canonical encodings of prime-order
// points as strongKeyOracle decides them independently.
func FuzzPublicKeyCheck(f *testing.F) {
	for _, h := range smallOrderHex {
		b, _ := hex.DecodeString(h)
		f.Add(b)
	}
	for _, h := range []string{
		"0100000000000000000000000000000000000000000000000000000000000080",
		"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // identity as 1 + p
		"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = 0 as p
	} {
		b, _ := hex.DecodeString(h)
		f.Add(b)
	}
	pub, _, _ := ed25519.GenerateKey(nil)
	f.Add([]byte(pub))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) != 32 {
			return
		}
		k, _ := PublicKeyFromBytes(data)
		err := k.Check()
		if err != nil && err != ErrWeakKey {
			t.Fatalf("Check(%x) = %v", data, err)
		}
		if strong := strongKeyOracle(t, data); (err == nil) != strong {
			t.Fatalf("Check(%x) = %v, but the oracle says strong=%v", data, err, strong)
		}
		if err == nil {
			if p := mustPoint(t, data); !bytes.Equal(p.Bytes(), data) {
				t.Fatalf("accepted %x re-encodes differently", data)
			}
		}
	})
}
