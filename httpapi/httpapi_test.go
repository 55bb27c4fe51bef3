package httpapi

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"github.com/signrelay/signrelay/protocol"
	"io"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/signing"
)

func TestRealClientIP(t *testing.T) {
	proxies := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32")}
	cases := []struct {
		name, peer, xff string
		trusted         []netip.Prefix
		want            string
	}{
		{"no proxy trusted: header ignored", "127.0.0.1", "1.2.3.4", nil, "127.0.0.1"},
		{"untrusted peer: header ignored", "8.8.8.8", "1.2.3.4", proxies, "8.8.8.8"},
		{"trusted peer, one hop", "127.0.0.1", "1.2.3.4", proxies, "1.2.3.4"},
		{"spoofed left entry ignored", "127.0.0.1", "6.6.6.6, 1.2.3.4", proxies, "1.2.3.4"},
		{"chain of trusted proxies", "127.0.0.1", "1.2.3.4, 10.1.1.1, 10.2.2.2", proxies, "1.2.3.4"},
		{"garbage hop stops the walk", "127.0.0.1", "1.2.3.4, nonsense, 10.1.1.1", proxies, "10.1.1.1"},
		{"empty header", "127.0.0.1", "", proxies, "127.0.0.1"},
		{"IPv4-mapped peer", "::ffff:127.0.0.1", "1.2.3.4", proxies, "1.2.3.4"},
		{"IPv6 client", "127.0.0.1", "2001:db8::1", proxies, "2001:db8::1"},
	}
	for _, tc := range cases {
		got := realClientIP(netip.MustParseAddr(tc.peer), tc.xff, tc.trusted)
		if got.String() != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestKeyedLimiter(t *testing.T) {
	l := newKeyedLimiter(config.Limit{Rate: 0.5, Burst: 2})
	for i := 0; i < 2; i++ {
		if ok, _ := l.allow("a"); !ok {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	ok, retry := l.allow("a")
	if ok || retry < 1 || retry > 2 {
		t.Fatalf("over the burst: ok=%v retry=%d, want refused with 1-2 s", ok, retry)
	}
	if ok, _ := l.allow("b"); !ok {
		t.Fatal("another key shares the bucket")
	}
	var off *keyedLimiter
	if ok, _ := off.allow("x"); !ok {
		t.Fatal("a nil limiter (limits off) refused")
	}
}

func TestAuthenticate(t *testing.T) {
	s := &Server{apiKeys: [][sha256.Size]byte{sha256.Sum256([]byte("first-key-0123456789")), sha256.Sum256([]byte("second-key-0123456789"))}}
	app := fiber.New()
	cases := map[string]int{
		"Bearer first-key-0123456789":     0,
		"bearer second-key-0123456789":    1,
		"BEARER   second-key-0123456789 ": 1,
		"Bearer first-key":                -1,
		"Bearer ":                         -1,
		"Token first-key-0123456789":      -1,
		"":                                -1,
	}
	for header, want := range cases {
		fctx := &fasthttp.RequestCtx{}
		fctx.Request.Header.Set("Authorization", header)
		c := app.AcquireCtx(fctx)
		got, ok := s.authenticate(c)
		app.ReleaseCtx(c)
		if got != want || ok != (want >= 0) {
			t.Errorf("%q: got %d %v, want %d", header, got, ok, want)
		}
	}
}

// Every error of the signing service has a row in the one mapping table.
func TestSignErrorTable(t *testing.T) {
	want := map[error]int{
		signing.ErrNotConnected:             404,
		&signing.RejectedError{Reason: "x"}: 403,
		signing.ErrTimeout:                  504,
		signing.ErrInvalidSignature:         502,
		signing.ErrShuttingDown:             503,
		signing.ErrTooManyPending:           503,
	}
	for err, status := range want {
		if got, _ := mapSignError(err); got != status {
			t.Errorf("%v: %d, want %d", err, got, status)
		}
	}
}

// A handler that panics costs its request a 500 in the contract's shape,
// never the process.
func TestPanicIsRecovered(t *testing.T) {
	cfg := config.Default()
	cfg.APIKeys = config.BareKeys("panic-test-key-0123456789")
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.svc = nil // POST /sign now panics on a nil service
	pub, _, _ := ed25519.GenerateKey(nil)
	body := `{"public_key":"` + base64.StdEncoding.EncodeToString(pub) + `","message":"aGk="}`
	req := httptest.NewRequest("POST", "/sign", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer panic-test-key-0123456789")
	res, err := s.app.Test(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(res.Body)
	if res.StatusCode != 500 || !strings.Contains(string(out), `"code":"internal_error"`) {
		t.Fatalf("%d %s", res.StatusCode, out)
	}
}

// A limiter keeps at most its maximum of buckets: a client choosing new
// keys (IPv6 /64s) cannot make it grow without bound. Refilled buckets are
// swept to make room; when none has refilled, new keys are refused.
func TestKeyedLimiterIsBounded(t *testing.T) {
	k := newKeyedLimiter(config.Limit{Rate: 0.001, Burst: 1})
	k.max = 3
	for _, key := range []string{"a", "b", "c"} {
		if ok, _ := k.allow(key); !ok {
			t.Fatalf("%s refused", key)
		}
	}
	if ok, retry := k.allow("d"); ok || retry < 1 {
		t.Fatalf("a fourth key was admitted (%v, retry %d)", ok, retry)
	}
	if len(k.buckets) != 3 {
		t.Fatalf("%d buckets, want 3", len(k.buckets))
	}
	// Refilled buckets make room, but a full map is swept at most once a
	// second, so new keys cannot buy a walk over every bucket each.
	fast := newKeyedLimiter(config.Limit{Rate: 1e9, Burst: 1})
	fast.max = 2
	for i := 0; i < 100; i++ {
		fast.lastSweep = time.Now().Add(-2 * time.Second)
		if ok, _ := fast.allow(strconv.Itoa(i)); !ok {
			t.Fatalf("key %d refused although every bucket had refilled", i)
		}
		if len(fast.buckets) > 2 {
			t.Fatalf("%d buckets, want at most 2", len(fast.buckets))
		}
	}
	fast.sweepLocked(time.Now())
	fast.allow("x")
	fast.allow("y")
	if ok, _ := fast.allow("z"); ok {
		t.Fatal("a full map was swept twice within a second")
	}
}

// The set of checked keys stays within its size, oldest out first.
func TestKeySetIsBounded(t *testing.T) {
	s := newKeySet(2)
	k := func(b byte) protocol.PublicKey {
		raw := make([]byte, 32)
		raw[0] = b
		pk, _ := protocol.PublicKeyFromBytes(raw)
		return pk
	}
	s.add(k(1))
	s.add(k(2))
	s.add(k(2))
	s.add(k(3))
	if s.has(k(1)) || !s.has(k(2)) || !s.has(k(3)) || len(s.in) != 2 {
		t.Fatalf("set %v", s.in)
	}
}
