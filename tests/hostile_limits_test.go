package tests

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/fasthttp/websocket"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// Tests of contract §G, "Limits that a public relay needs". Each names the
// finding of the hostile review that it proves fixed.

// --- finding 5: pending requests bounded per API key and in all -----------

// TestPendingCapsPerAPIKey proves finding 5 (per API key): one API key could
// keep any number of requests pending (only sign.max_pending_per_key existed,
// and a backend can spread requests over many public keys).
// sign.max_pending_per_api_key bounds it with 503 unavailable; another API
// key is not affected, capacity comes back when a request ends, and
// sign.max_pending_per_key still applies on its own.
func TestPendingCapsPerAPIKey(t *testing.T) {
	t.Run("max_pending_per_api_key", func(t *testing.T) {
		r := startRelay(t, func(c *config.Config) {
			hostile(c)
			twoAPIKeys(c)
			c.Sign.MaxPendingPerAPIKey = 3
		})
		h := r.connect(t, nil) // never answers until the end
		var pend []pendingReq
		for i := 0; i < 3; i++ {
			pend = append(pend, r.startPending(t, h, testAPIKey, []byte(fmt.Sprintf("pending %d", i))))
		}
		r.expectRefused(t, testAPIKey, h.pub, []byte("fourth"), http.StatusServiceUnavailable, "unavailable")
		// Another API key has its own bound: its request is delivered.
		other := r.startPending(t, h, secondAPIKey, []byte("other api key"))
		// A request that ends gives its slot back.
		pend[0].endReject(t, h)
		pend[0] = r.startPending(t, h, testAPIKey, []byte("after one ended"))
		r.expectRefused(t, testAPIKey, h.pub, []byte("full again"), http.StatusServiceUnavailable, "unavailable")
		for _, p := range append(pend, other) {
			p.endReject(t, h)
		}
	})
	t.Run("max_pending_per_key still applies", func(t *testing.T) {
		r := startRelay(t, func(c *config.Config) {
			hostile(c)
			twoAPIKeys(c)
			c.Sign.MaxPendingPerKey = 2
			c.Sign.MaxPendingPerAPIKey = 3
		})
		a, b := r.connect(t, nil), r.connect(t, nil)
		p1 := r.startPending(t, a, testAPIKey, []byte("a1"))
		p2 := r.startPending(t, a, testAPIKey, []byte("a2"))
		// The key's bound, although the second API key has nothing pending.
		r.expectRefused(t, secondAPIKey, a.pub, []byte("a3"), http.StatusServiceUnavailable, "unavailable")
		// The first API key's third request, for another key, fits both bounds.
		p3 := r.startPending(t, b, testAPIKey, []byte("b1"))
		// Its fourth does not (per API key), although b has room.
		r.expectRefused(t, testAPIKey, b.pub, []byte("b2"), http.StatusServiceUnavailable, "unavailable")
		p1.endReject(t, a)
		p2.endReject(t, a)
		p3.endReject(t, b)
	})
}

// TestPendingCapsTotal proves finding 5 (in all): the relay had no bound on
// the requests pending in all, so many API keys and public keys together
// could exhaust its memory. sign.max_pending bounds them with 503.
func TestPendingCapsTotal(t *testing.T) {
	r := startRelay(t, func(c *config.Config) {
		hostile(c)
		twoAPIKeys(c)
		c.Sign.MaxPending = 4
		c.Sign.MaxPendingPerAPIKey = 100
		c.Sign.MaxPendingPerKey = 100
	})
	a, b := r.connect(t, nil), r.connect(t, nil)
	pa := []pendingReq{
		r.startPending(t, a, testAPIKey, []byte("a1")),
		r.startPending(t, a, testAPIKey, []byte("a2")),
	}
	pb := []pendingReq{
		r.startPending(t, b, secondAPIKey, []byte("b1")),
		r.startPending(t, b, secondAPIKey, []byte("b2")),
	}
	// Four pending in all: the fifth is refused, whoever asks for whichever key.
	r.expectRefused(t, testAPIKey, b.pub, []byte("fifth"), http.StatusServiceUnavailable, "unavailable")
	r.expectRefused(t, secondAPIKey, a.pub, []byte("fifth"), http.StatusServiceUnavailable, "unavailable")
	// One ends: there is room for one more, and only one.
	pa[0].endReject(t, a)
	pa[0] = r.startPending(t, a, secondAPIKey, []byte("after one ended"))
	r.expectRefused(t, testAPIKey, a.pub, []byte("full again"), http.StatusServiceUnavailable, "unavailable")
	for _, p := range pa {
		p.endReject(t, a)
	}
	for _, p := range pb {
		p.endReject(t, b)
	}
}

// TestPendingCapsBytes proves finding 5 (bytes): the count bounds alone let
// pending requests hold count × max_message_bytes of memory.
// sign.max_pending_bytes_per_api_key and sign.max_pending_bytes bound the
// decoded message bytes pending; a request that would go over is 503, a
// smaller one that fits is accepted, and bytes come back when a request ends.
func TestPendingCapsBytes(t *testing.T) {
	const max = 1000
	big := func(c byte) []byte { return bytes.Repeat([]byte{c}, max) }
	t.Run("per API key", func(t *testing.T) {
		r := startRelay(t, func(c *config.Config) {
			hostile(c)
			twoAPIKeys(c)
			c.Sign.MaxMessageBytes = max
			c.Sign.MaxPendingBytesPerAPIKey = 2500
		})
		h := r.connect(t, nil)
		p := []pendingReq{
			r.startPending(t, h, testAPIKey, big('a')),
			r.startPending(t, h, testAPIKey, big('b')),
		}
		// 2000 pending: 1000 more would be 3000 > 2500.
		r.expectRefused(t, testAPIKey, h.pub, big('c'), http.StatusServiceUnavailable, "unavailable")
		// 400 more is 2400 <= 2500.
		p = append(p, r.startPending(t, h, testAPIKey, bytes.Repeat([]byte{'d'}, 400)))
		// 2400 pending: 200 more would be 2600 > 2500.
		r.expectRefused(t, testAPIKey, h.pub, bytes.Repeat([]byte{'e'}, 200), http.StatusServiceUnavailable, "unavailable")
		// The other API key has its own bytes.
		p = append(p, r.startPending(t, h, secondAPIKey, big('f')))
		// A 1000-byte request ends: 1400 pending, 1000 more fits.
		p[0].endReject(t, h)
		p[0] = r.startPending(t, h, testAPIKey, big('g'))
		for _, x := range p {
			x.endReject(t, h)
		}
	})
	t.Run("in all", func(t *testing.T) {
		r := startRelay(t, func(c *config.Config) {
			hostile(c)
			twoAPIKeys(c)
			c.Sign.MaxMessageBytes = max
			c.Sign.MaxPendingBytes = 2500
		})
		a, b := r.connect(t, nil), r.connect(t, nil)
		p := []pendingReq{
			r.startPending(t, a, testAPIKey, big('a')),
			r.startPending(t, b, secondAPIKey, big('b')),
		}
		// 2000 pending in all: 1000 more is refused for either API key.
		r.expectRefused(t, testAPIKey, b.pub, big('c'), http.StatusServiceUnavailable, "unavailable")
		r.expectRefused(t, secondAPIKey, a.pub, big('c'), http.StatusServiceUnavailable, "unavailable")
		p = append(p, r.startPending(t, b, secondAPIKey, bytes.Repeat([]byte{'d'}, 400)))
		r.expectRefused(t, testAPIKey, a.pub, bytes.Repeat([]byte{'e'}, 200), http.StatusServiceUnavailable, "unavailable")
		// a's 1000 bytes end: 1400 pending, 1000 more fits.
		p[0].endReject(t, a)
		p[0] = r.startPending(t, a, testAPIKey, big('g'))
		p[0].endReject(t, a)
		p[1].endReject(t, b)
		p[2].endReject(t, b)
	})
}

// --- finding 6: connections per key --------------------------------------

// introduceAndRead dials, introduces priv's key correctly and returns the
// holder with the first frame after the introduction.
func (r *relay) introduceAndRead(t *testing.T, priv ed25519.PrivateKey) (*holder, frame) {
	t.Helper()
	conn, _, err := r.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &holder{t: t, conn: conn, priv: priv, pub: priv.Public().(ed25519.PublicKey)}
	nonce, err := protocol.DecodeBase64(h.expect(protocol.TypeChallenge).str("nonce"))
	if err != nil {
		t.Fatal(err)
	}
	h.send(frame{"type": "introduction", "public_key": b64(h.pub),
		"signature": b64(ed25519.Sign(priv, protocol.IntroductionMessage(nonce)))})
	f, err := h.read()
	if err != nil {
		t.Fatalf("after a correct introduction: %v", err)
	}
	return h, f
}

// expectTooMany checks the refusal of a connection over the key's maximum.
func expectTooMany(t *testing.T, h *holder, f frame) {
	t.Helper()
	if f.str("type") != protocol.TypeError || f.str("code") != "too_many_connections" || f.str("message") == "" {
		t.Fatalf("connection over websocket.max_connections_per_key got %v, want error too_many_connections", f)
	}
	h.expectClose(1013)
}

// TestConnectionsPerKeyCap proves finding 6 (connections per key): any
// number of connections could hold one key, each multiplying the fan-out of
// every request. The one over websocket.max_connections_per_key gets
// too_many_connections and close 1013; the others are not affected, another
// key is not affected, and a slot comes back when a connection closes.
func TestConnectionsPerKeyCap(t *testing.T) {
	r := startRelay(t, func(c *config.Config) {
		hostile(c)
		c.WebSocket.MaxConnectionsPerKey = 2
	})
	a1 := r.connect(t, nil)
	a2 := r.connect(t, a1.priv)
	third, f := r.introduceAndRead(t, a1.priv)
	expectTooMany(t, third, f)

	// Both connections of the key still receive requests.
	res := r.signAsync(signBody(a1.pub, []byte("both"), nil))
	q1, q2 := a1.expectRequest([]byte("both")), a2.expectRequest([]byte("both"))
	a2.approve(q2)
	verifyResult(t, awaitResp(t, res), a1.pub, []byte("both"))
	a1.expectCancel(q1.str("request_id"), protocol.CancelAnsweredElsewhere)

	// Another key is not affected: it has two slots of its own.
	b1 := r.connect(t, nil)
	r.connect(t, b1.priv)

	// One of the key's connections closes: a new one is admitted once the
	// relay has seen it go.
	a1.conn.Close()
	var a3 *holder
	deadline := time.Now().Add(wait)
	for a3 == nil {
		h, f := r.introduceAndRead(t, a1.priv)
		switch {
		case f.str("type") == protocol.TypeIntroduced:
			a3 = h
		case time.Now().After(deadline):
			t.Fatalf("no new connection admitted within %s after one of two closed; last got %v", wait, f)
		default:
			expectTooMany(t, h, f)
		}
	}
	res = r.signAsync(signBody(a1.pub, []byte("after"), nil))
	q2, q3 := a2.expectRequest([]byte("after")), a3.expectRequest([]byte("after"))
	a3.approve(q3)
	verifyResult(t, awaitResp(t, res), a1.pub, []byte("after"))
	a2.expectCancel(q2.str("request_id"), protocol.CancelAnsweredElsewhere)
}

// sameShardKey returns a key whose public key agrees with pub in the low six
// bits of byte 8: with the signing service's 64-way sharding by bytes 8–15,
// it shares pub's shard, which is where work done under one key's shard lock
// would stall another key. With any other layout it is just another key.
// The search is bounded (key generation is slow under -race).
func sameShardKey(t *testing.T, pub ed25519.PublicKey) ed25519.PrivateKey {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		p, priv := newKey(t)
		if p[8]&63 == pub[8]&63 || time.Now().After(deadline) {
			return priv
		}
	}
}

// TestFloodOnOneKeyDoesNotStallOthers proves finding 6 (fairness): with many
// connections of one key and many pending requests, each closing connection
// did work proportional to connections × requests under a shard lock, so a
// mass disconnect stalled other keys for seconds. Here 300 connections of
// key A with 64 pending requests close at once while key B signs in a loop:
// every B round trip stays under 2 s, and every A request still ends (504
// at its deadline, since nobody answers).
func TestFloodOnOneKeyDoesNotStallOthers(t *testing.T) {
	const (
		nConns    = 300
		nPending  = 64
		timeoutMS = 4000
		rtBound   = 2 * time.Second
	)
	r := startRelay(t, func(c *config.Config) {
		hostile(c)
		c.WebSocket.MaxConnectionsPerKey = nConns
		c.WebSocket.MaxUnintroducedPerIP = 1024
		c.Sign.MaxPendingPerKey = nPending
	})
	pubA, privA := newKey(t)
	privB := sameShardKey(t, pubA)
	pubB := privB.Public().(ed25519.PublicKey)
	conns := r.connectMany(t, privA, nConns)
	first := &holder{t: t, conn: conns[0], priv: privA, pub: pubA}

	resA := make(chan signResp, nPending)
	for i := 0; i < nPending; i++ {
		body := signBody(pubA, []byte(fmt.Sprintf("flood %d", i)), map[string]any{"timeout_ms": timeoutMS})
		go func() { resA <- r.post(body) }()
	}
	for i := 0; i < nPending; i++ { // all 64 are pending
		if f, err := first.read(); err != nil || f.str("type") != protocol.TypeSignRequest {
			t.Fatalf("after %d of %d sign_requests got %v %v (a request that ended already: a machine too slow for timeout_ms %d?)", i, nPending, f, err, timeoutMS)
		}
	}

	b := r.connect(t, privB)
	stopB := serveApprove(b.conn, privB)
	t.Cleanup(stopB)

	// B signs in a loop until every A request has ended.
	stopLoop := r.roundTripLoop(t, pubB)
	for _, c := range conns {
		c.Close()
	}
	deadline := time.After(timeoutMS*time.Millisecond + wait)
	for i := 0; i < nPending; i++ {
		select {
		case got := <-resA:
			if got.TransportE != nil {
				t.Fatalf("A request %d: %v", i, got.TransportE)
			}
			expectError(t, got, http.StatusGatewayTimeout, "timeout")
		case <-deadline:
			t.Fatalf("only %d of %d requests of the flooded key ended", i, nPending)
		}
	}
	rts := stopLoop()
	checkRoundTrips(t, rts, pubB, rtBound, "while 300 connections of one key closed")
	if len(rts) < 3 {
		t.Fatalf("only %d round trips for key B while key A's requests ran out", len(rts))
	}
}

// TestManyInvalidAnswersBounded proves finding 6 (invalid answers): each
// invalid sign_response re-examined every connection of the key against
// every earlier failure, so many connections answering badly cost
// connections² work. 50 connections of one key each answer one request with
// a signature that does not verify: each gets invalid_signature, the request
// ends 502 only after the last, and it all takes bounded time.
func TestManyInvalidAnswersBounded(t *testing.T) {
	const n = 50
	r := startRelay(t, func(c *config.Config) {
		hostile(c)
		c.WebSocket.MaxConnectionsPerKey = 64
	})
	pub, priv := newKey(t)
	conns := r.connectMany(t, priv, n)
	start := time.Now()
	res := r.signAsync(signBody(pub, []byte("pay"), nil))

	answerBadly := func(conn *websocket.Conn) error {
		req, err := readFrameRaw(conn, wait)
		if err != nil {
			return err
		}
		if req.str("type") != protocol.TypeSignRequest {
			return fmt.Errorf("got %v, want sign_request", req)
		}
		if err := writeFrameRaw(conn, frame{"type": "sign_response", "request_id": req.str("request_id"),
			"message": req.str("message"), "signature": b64(make([]byte, 64))}); err != nil {
			return err
		}
		e, err := readFrameRaw(conn, wait)
		if err != nil {
			return err
		}
		if e.str("type") != protocol.TypeError || e.str("code") != protocol.CodeInvalidSignature || e.str("request_id") != req.str("request_id") {
			return fmt.Errorf("got %v, want error invalid_signature for %s", e, req.str("request_id"))
		}
		return nil
	}
	errs := make(chan error, n-1)
	for _, c := range conns[:n-1] {
		go func() { errs <- answerBadly(c) }()
	}
	for i := 0; i < n-1; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("invalid answer %d: %v", i+1, err)
		}
	}
	select {
	case got := <-res:
		t.Fatalf("request ended %d %s with one connection still to answer", got.Status, got.RawBody)
	default:
	}
	// The last one may still answer, so it is told its signature is
	// invalid (not unknown_request), and that ends the request.
	if err := answerBadly(conns[n-1]); err != nil {
		t.Fatalf("last invalid answer: %v", err)
	}
	expectError(t, awaitWithin(t, res, 10*time.Second), http.StatusBadGateway, "invalid_signature")
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("%d invalid answers took %s", n, d)
	}
}

// --- finding 8: client IP behind proxies -----------------------------------

// TestXForwardedForRules proves finding 8 (contract §G, client IP behind
// proxies): only the first X-Forwarded-For header line was read, so a client
// behind a proxy that appends its own line chose its rate-limit bucket;
// entries with a port were not parsed; IPv6 clients had a bucket per
// address, unlimited by rotating within their /64.
func TestXForwardedForRules(t *testing.T) {
	type step struct {
		xff  []string // one header line per value
		want int      // 101 or 429
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"one line", []step{
			{[]string{"203.0.113.7"}, 101},
			{[]string{"203.0.113.7"}, 429},
		}},
		{"two lines are one list", []step{
			// The client sent 9.9.9.9; the proxy appended the real address as
			// a line of its own.
			{[]string{"9.9.9.9", "203.0.113.8"}, 101},
			{[]string{"203.0.113.8"}, 429},
			{[]string{"9.9.9.9"}, 101},
		}},
		{"trusted proxies are walked past across lines", []step{
			{[]string{"198.51.100.20", "::1, 127.0.0.1"}, 101},
			{[]string{"198.51.100.20"}, 429},
		}},
		{"an entry with a port counts as its address", []step{
			{[]string{"203.0.113.9:5555"}, 101},
			{[]string{"203.0.113.9"}, 429},
		}},
		{"IPv6 by /64", []step{
			{[]string{"2001:db8:1:2::1"}, 101},
			{[]string{"[2001:db8:1:2::ffff]:443"}, 429},
			{[]string{"2001:db8:1:2:ffff:ffff:ffff:ffff"}, 429},
			{[]string{"2001:db8:1:3::1"}, 101},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRelay(t, func(c *config.Config) {
				hostile(c)
				withLimits(ample, ample, frozen(1))(c)
				c.TrustedProxies = []string{"127.0.0.1", "::1"}
			})
			for i, s := range tc.steps {
				hdr := http.Header{"X-Forwarded-For": s.xff}
				conn, res, err := r.dial(t, hdr)
				if s.want == http.StatusSwitchingProtocols {
					if err != nil {
						status := 0
						if res != nil {
							status = res.StatusCode
						}
						t.Fatalf("step %d (X-Forwarded-For lines %q): %v (%d), want the upgrade", i, s.xff, err, status)
					}
					introduceConn(t, conn)
					continue
				}
				if err == nil {
					t.Fatalf("step %d (X-Forwarded-For lines %q): upgraded, want 429 (same client bucket as before)", i, s.xff)
				}
				expectRefusedUpgrade(t, conn, res, err, s.want, "rate_limited")
				expectRetryAfter(t, res.Header)
			}
		})
	}
}

// --- finding 11: smaller ones ----------------------------------------------

// TestAuthFailuresRateLimited proves finding 11a: wrong API keys could be
// tried without limit. Past rate_limits.auth_failures_per_ip, missing or
// wrong keys get 429 with Retry-After; the right key is never refused for it.
func TestAuthFailuresRateLimited(t *testing.T) {
	r := startRelay(t, func(c *config.Config) {
		hostile(c)
		withLimits(ample, ample, ample)(c)
		c.RateLimits.AuthFailuresPerIP = frozen(3)
	})
	pub, _ := newKey(t)
	body := signBody(pub, []byte("x"), nil)
	for _, auth := range []string{"Bearer wrong-key", "", "Basic " + testAPIKey} {
		expectError(t, r.postAuth(auth, body), http.StatusUnauthorized, "unauthorized")
	}
	for _, auth := range []string{"Bearer wrong-key", ""} {
		got := r.postAuth(auth, body)
		expectError(t, got, http.StatusTooManyRequests, "rate_limited")
		expectRetryAfter(t, got.Header)
	}
	for i := 0; i < 2; i++ {
		expectError(t, r.post(body), http.StatusNotFound, "not_connected")
	}
}

// TestRejectReasonBounded proves finding 11b: a key holder's sign_reject
// reason was passed to the backend whole (up to a frame, 256 KiB). The 403
// body carries at most its first 256 characters.
func TestRejectReasonBounded(t *testing.T) {
	r := startRelay(t, hostile)
	h := r.connect(t, nil)
	var ascii strings.Builder
	for i := 0; ascii.Len() < 200000; i++ {
		fmt.Fprintf(&ascii, "%d;", i)
	}
	for name, reason := range map[string]string{
		"200000 ASCII characters":    ascii.String()[:200000],
		"120000 two-byte characters": strings.Repeat("é", 120000),
	} {
		t.Run(name, func(t *testing.T) {
			h := h.on(t)
			res := r.signAsync(signBody(h.pub, []byte("no"), nil))
			h.reject(h.expectRequest([]byte("no")), reason)
			got := awaitResp(t, res)
			expectError(t, got, http.StatusForbidden, "rejected")
			if got.ErrReason == nil {
				t.Fatalf("no error.reason: %.300s", got.RawBody)
			}
			sent := *got.ErrReason
			if n := utf8.RuneCountInString(sent); n > 256 || n == 0 || !utf8.ValidString(sent) || !strings.HasPrefix(reason, sent) {
				t.Fatalf("error.reason has %d characters (%d bytes, valid UTF-8 %v, prefix of the reason sent %v); want the first at most 256 characters",
					n, len(sent), utf8.ValidString(sent), strings.HasPrefix(reason, sent))
			}
		})
	}
}

// TestExactFieldNames proves finding 11c: JSON field names matched case-
// insensitively and a duplicated field silently took its last value, so a
// frame or body could mean one thing to the relay and another to a proxy or
// log reader in front of it. Names must match exactly (another case is an
// unknown, ignored field) and a duplicated field is invalid.
func TestExactFieldNames(t *testing.T) {
	r := startRelay(t, hostile)
	t.Run("introduction", func(t *testing.T) {
		_, other := newKey(t)
		otherKey := b64(other.Public().(ed25519.PublicKey))
		for _, tc := range []struct {
			name string
			json func(key, sig string) string
			ok   bool
		}{
			{"TYPE in capitals", func(key, sig string) string {
				return `{"TYPE":"introduction","public_key":"` + key + `","signature":"` + sig + `"}`
			}, false},
			{"Public_Key in another case", func(key, sig string) string {
				return `{"type":"introduction","Public_Key":"` + key + `","signature":"` + sig + `"}`
			}, false},
			{"public_key twice, the valid one first", func(key, sig string) string {
				return `{"type":"introduction","public_key":"` + key + `","public_key":"` + otherKey + `","signature":"` + sig + `"}`
			}, false},
			{"public_key twice, the valid one last", func(key, sig string) string {
				return `{"type":"introduction","public_key":"` + otherKey + `","public_key":"` + key + `","signature":"` + sig + `"}`
			}, false},
			{"signature twice", func(key, sig string) string {
				return `{"type":"introduction","public_key":"` + key + `","signature":"` + sig + `","signature":"` + sig + `"}`
			}, false},
			{"PUBLIC_KEY beside public_key is an unknown field", func(key, sig string) string {
				return `{"type":"introduction","public_key":"` + key + `","signature":"` + sig + `","PUBLIC_KEY":"` + otherKey + `"}`
			}, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				h, nonce := r.rawHolder(t)
				h.t = t
				sig := b64(ed25519.Sign(h.priv, protocol.IntroductionMessage(nonce)))
				h.sendRaw(websocket.TextMessage, []byte(tc.json(b64(h.pub), sig)))
				if tc.ok {
					h.expect(protocol.TypeIntroduced)
					return
				}
				h.expectError(protocol.CodeIntroductionFailed)
				h.expectClose(protocol.CloseIntroductionFailed)
			})
		}
	})
	t.Run("POST /sign", func(t *testing.T) {
		h := r.connect(t, nil).on(t)
		key, msg, other := b64(h.pub), b64([]byte("meant")), b64([]byte("smuggled"))
		for name, body := range map[string]string{
			"PUBLIC_KEY in capitals":  `{"PUBLIC_KEY":"` + key + `","message":"` + msg + `","timeout_ms":300}`,
			"Message in another case": `{"public_key":"` + key + `","Message":"` + msg + `","timeout_ms":300}`,
			"message twice":           `{"public_key":"` + key + `","message":"` + other + `","message":"` + msg + `","timeout_ms":300}`,
			"public_key twice":        `{"public_key":"` + key + `","public_key":"` + key + `","message":"` + msg + `","timeout_ms":300}`,
		} {
			t.Run(name, func(t *testing.T) {
				expectError(t, r.post([]byte(body)), http.StatusBadRequest, "invalid_request")
			})
		}
		// None of them reached the holder.
		h.expectNoFrame()
		// A field in another case is an unknown field, ignored: it does not
		// replace the real one.
		res := r.signAsync([]byte(`{"public_key":"` + key + `","message":"` + msg + `","MESSAGE":"` + other + `","timeout_ms":5000}`))
		h.approve(h.expectRequest([]byte("meant")))
		verifyResult(t, awaitResp(t, res), h.pub, []byte("meant"))
	})
}

// TestPublicKeyBucketPerAPIKey proves finding 11d: the sign_per_public_key
// bucket was shared by every API key and was spent before the key was known
// to be connected, so any API key (or requests for an absent key) could
// lock everyone out of a public key. The bucket is per (API key, public
// key) and counts only requests that reach a holder.
func TestPublicKeyBucketPerAPIKey(t *testing.T) {
	r := startRelay(t, func(c *config.Config) {
		hostile(c)
		twoAPIKeys(c)
		withLimits(ample, frozen(1), ample)(c)
	})
	absent, _ := newKey(t)
	for i := 0; i < 2; i++ {
		expectError(t, r.post(signBody(absent, []byte("x"), nil)), http.StatusNotFound, "not_connected")
	}
	h := r.connect(t, nil)
	res := r.signAsync(signBody(h.pub, []byte("first"), nil))
	h.approve(h.expectRequest([]byte("first")))
	verifyResult(t, awaitResp(t, res), h.pub, []byte("first"))

	got := r.expectRefused(t, testAPIKey, h.pub, []byte("second"), http.StatusTooManyRequests, "rate_limited")
	expectRetryAfter(t, got.Header)

	// The other API key has its own bucket for this public key; the refused
	// request never reached the holder (this one is its next frame).
	res = r.signAsyncKey(secondAPIKey, signBody(h.pub, []byte("other api key"), nil))
	h.approve(h.expectRequest([]byte("other api key")))
	verifyResult(t, awaitResp(t, res), h.pub, []byte("other api key"))
}

// TestQueueOverflowDoesNotBlockSender proves finding 11e: when a key
// holder's send queue overflowed, the goroutine that queued the frame (a
// POST /sign's) wrote the close frame itself, waiting up to 1 s per stuck
// connection for the socket. Four connections of one key that never read
// are overflowed (all four in the same fan-out, as they get the same frames,
// which cost the old code 4 s): every POST for that key (timeout_ms 10)
// returns within 2 s, a healthy key's round trips stay under 2 s throughout,
// and the stuck connections are dropped (404).
func TestQueueOverflowDoesNotBlockSender(t *testing.T) {
	const (
		stuckConns = 4
		bound      = 2 * time.Second
	)
	r := startRelay(t, func(c *config.Config) {
		hostile(c)
		c.WebSocket.SendQueue = 8 // the minimum; raised to 2×1+32 by the relay
		c.Sign.MaxPendingPerKey = 1
		c.Sign.MaxMessageBytes = stuckMessageBytes
	})
	stuckPub, stuckPriv := newKey(t)
	for i := 0; i < stuckConns; i++ {
		conn, _, err := r.dialRaw(nil, true)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if err := introduceRaw(conn, stuckPriv); err != nil {
			t.Fatal(err)
		}
		// and never read again
	}
	healthy := r.connect(t, nil)
	stopHealthy := serveApprove(healthy.conn, healthy.priv)
	t.Cleanup(stopHealthy)

	stopLoop := r.roundTripLoop(t, healthy.pub)

	// Each request is a sign_request and a sign_cancel for every stuck
	// connection: the first few fill its socket, the next its queue.
	msg := make([]byte, stuckMessageBytes)
	if _, err := rand.Read(msg); err != nil {
		t.Fatal(err)
	}
	const timeoutMS = 10
	body := signBody(stuckPub, msg, map[string]any{"timeout_ms": timeoutMS})
	deadline := time.Now().Add(wait)
	var slowest time.Duration
	for i := 0; ; i++ {
		start := time.Now()
		got := r.post(body)
		d := time.Since(start)
		slowest = max(slowest, d)
		if got.TransportE != nil {
			t.Fatalf("POST %d for the stuck key: %v", i, got.TransportE)
		}
		if d > bound {
			t.Fatalf("POST %d for the stuck key took %s with timeout_ms %d (%d %s): the sender was blocked by the overflow",
				i, d, timeoutMS, got.Status, got.Error.Code)
		}
		if got.Status == http.StatusNotFound {
			t.Logf("stuck connections dropped after %d requests; slowest POST for them %s", i+1, slowest)
			break
		}
		if got.Status != http.StatusGatewayTimeout {
			t.Fatalf("POST %d for the stuck key: %d %s, want 504 until its connections are dropped, then 404", i, got.Status, got.RawBody)
		}
		if i > 500 || time.Now().After(deadline) {
			t.Fatalf("the stuck connections were not dropped after %d requests", i+1)
		}
	}
	rts := stopLoop()
	checkRoundTrips(t, rts, healthy.pub, bound, "while another key's queues overflowed")
	if len(rts) == 0 {
		t.Fatal("no round trip for the healthy key completed")
	}
}
