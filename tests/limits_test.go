package tests

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/google/uuid"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// frozen refills so slowly that no token comes back during a test; ample is
// never reached by one.
var (
	frozen = func(burst int) config.Limit { return config.Limit{Rate: 0.001, Burst: burst} }
	ample  = config.Limit{Rate: 1000, Burst: 1000}
)

func withLimits(apiKey, publicKey, perIP config.Limit) func(*config.Config) {
	return func(c *config.Config) {
		c.RateLimits.Enabled = true
		c.RateLimits.SignPerAPIKey = apiKey
		c.RateLimits.SignPerPublicKey = publicKey
		c.RateLimits.ConnectionsPerIP = perIP
	}
}

// expectRetryAfter checks the Retry-After header: whole seconds, at least 1.
func expectRetryAfter(t *testing.T, h http.Header) {
	t.Helper()
	v := h.Get("Retry-After")
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("Retry-After %q, want an integer number of seconds >= 1", v)
	}
}

func TestRateLimitPerAPIKey(t *testing.T) {
	const otherKey = "second-api-key-0123456789abcdef"
	r := startRelay(t, func(c *config.Config) {
		withLimits(frozen(2), ample, ample)(c)
		c.APIKeys = config.BareKeys(testAPIKey, otherKey)
	})
	pub, _ := newKey(t)
	body := signBody(pub, []byte("x"), nil)

	// The burst is served (the key is simply not connected), then 429.
	for i := 0; i < 2; i++ {
		expectError(t, r.post(body), http.StatusNotFound, "not_connected")
	}
	got := r.post(body)
	expectError(t, got, http.StatusTooManyRequests, "rate_limited")
	expectRetryAfter(t, got.Header)

	// The bucket belongs to the API key: another key is not limited.
	expectError(t, r.postAuth("Bearer "+otherKey, body), http.StatusNotFound, "not_connected")
	expectError(t, r.post(body), http.StatusTooManyRequests, "rate_limited")
}

func TestRateLimitPerPublicKey(t *testing.T) {
	r := startRelay(t, withLimits(ample, frozen(1), ample))
	h := r.connect(t, nil)
	msg := []byte("first")
	res := r.signAsync(signBody(h.pub, msg, nil))
	h.approve(h.expect(protocol.TypeSignRequest))
	verifyResult(t, awaitResp(t, res), h.pub, msg)

	got := r.post(signBody(h.pub, []byte("second"), nil))
	expectError(t, got, http.StatusTooManyRequests, "rate_limited")
	expectRetryAfter(t, got.Header)
	if _, err := uuid.Parse(got.RequestID); err != nil {
		t.Fatalf("429 for a public key has request_id %q, want the UUID that was made: %s", got.RequestID, got.RawBody)
	}

	// Another public key has its own bucket.
	other, _ := newKey(t)
	expectError(t, r.post(signBody(other, []byte("x"), nil)), http.StatusNotFound, "not_connected")

	// The refused request never reached the key holder: anything queued for
	// it would arrive before the answer to a frame sent now.
	h.sendRaw(websocket.TextMessage, []byte(`{"type":"no_such_type"}`))
	h.expectError(protocol.CodeUnknownType)
}

func TestRateLimitConnectionsPerIP(t *testing.T) {
	r := startRelay(t, withLimits(ample, ample, frozen(2)))
	var live []*holder
	for i := 0; i < 2; i++ {
		live = append(live, r.connect(t, nil))
	}
	conn, res, err := r.dial(t, nil)
	expectRefusedUpgrade(t, conn, res, err, http.StatusTooManyRequests, "rate_limited")
	expectRetryAfter(t, res.Header)

	// Only new connections are limited: the live ones are still served.
	h := live[0]
	got := r.signAsync(signBody(h.pub, []byte("live"), nil))
	h.approve(h.expect(protocol.TypeSignRequest))
	verifyResult(t, awaitResp(t, got), h.pub, []byte("live"))
}

func TestRateLimitClientIPBehindProxy(t *testing.T) {
	type dialStep struct {
		xff  string // X-Forwarded-For sent, "" for none
		want int    // 101 or 429
	}
	for _, tc := range []struct {
		name    string
		trusted []string
		steps   []dialStep
	}{
		{
			name:    "trusted proxy: each forwarded client has its own bucket",
			trusted: []string{"127.0.0.1"},
			steps: []dialStep{
				{"203.0.113.1", 101},
				{"203.0.113.1", 429},
				{"203.0.113.2", 101},
				{"203.0.113.2", 429},
				// A client cannot escape by prepending a spoofed hop: the
				// rightmost untrusted address is the client.
				{"198.51.100.9, 203.0.113.1", 429},
				{"", 101}, // the proxy's own requests are the proxy's bucket
			},
		},
		{
			name:    "trusted proxy CIDR",
			trusted: []string{"127.0.0.0/8"},
			steps: []dialStep{
				{"203.0.113.1", 101},
				{"203.0.113.3", 101},
				{"203.0.113.3", 429},
			},
		},
		{
			name:    "no trusted proxy: X-Forwarded-For is ignored",
			trusted: nil,
			steps: []dialStep{
				{"203.0.113.1", 101},
				{"203.0.113.2", 429},
				{"198.51.100.7", 429},
				{"", 429},
			},
		},
		{
			name:    "another proxy is trusted, not this peer",
			trusted: []string{"10.0.0.1"},
			steps: []dialStep{
				{"203.0.113.1", 101},
				{"203.0.113.2", 429},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRelay(t, func(c *config.Config) {
				withLimits(ample, ample, frozen(1))(c)
				c.TrustedProxies = tc.trusted
			})
			for i, s := range tc.steps {
				hdr := http.Header{}
				if s.xff != "" {
					hdr.Set("X-Forwarded-For", s.xff)
				}
				conn, res, err := r.dial(t, hdr)
				switch s.want {
				case http.StatusSwitchingProtocols:
					if err != nil {
						t.Fatalf("step %d (X-Forwarded-For %q): %v, want upgrade", i, s.xff, err)
					}
					introduceConn(t, conn)
				default:
					expectRefusedUpgrade(t, conn, res, err, s.want, "rate_limited")
				}
			}
		})
	}
}

func TestMaxPendingPerKey(t *testing.T) {
	r := startRelay(t, func(c *config.Config) { c.Sign.MaxPendingPerKey = 2 })
	h := r.connect(t, nil)
	var res []<-chan signResp
	var reqs []frame
	for i := 0; i < 2; i++ {
		res = append(res, r.signAsync(signBody(h.pub, []byte{'m', byte('0' + i)}, nil)))
		reqs = append(reqs, h.expect(protocol.TypeSignRequest))
	}
	// Both are pending now: the third is refused at once.
	expectError(t, r.post(signBody(h.pub, []byte("third"), nil)), http.StatusServiceUnavailable, "unavailable")
	// The limit is per key: another key is not affected.
	other := r.connect(t, nil)
	resOther := r.signAsync(signBody(other.pub, []byte("other key"), nil))
	other.approve(other.expect(protocol.TypeSignRequest))
	verifyResult(t, awaitResp(t, resOther), other.pub, []byte("other key"))

	// Answering frees the slots.
	for i := range reqs {
		h.approve(reqs[i])
		verifyResult(t, awaitResp(t, res[i]), h.pub, []byte{'m', byte('0' + i)})
	}
	next := r.signAsync(signBody(h.pub, []byte("fourth"), nil))
	h.approve(h.expect(protocol.TypeSignRequest))
	verifyResult(t, awaitResp(t, next), h.pub, []byte("fourth"))
}

func TestMessageSizeLimits(t *testing.T) {
	const limit = 1024
	r := startRelay(t, func(c *config.Config) { c.Sign.MaxMessageBytes = limit })
	h := r.connect(t, nil)

	t.Run("exactly max_message_bytes is sent to the key holder", func(t *testing.T) {
		h := h.on(t)
		msg := bytes.Repeat([]byte{0xA5}, limit)
		res := r.signAsync(signBody(h.pub, msg, nil))
		req := h.expect(protocol.TypeSignRequest)
		if req.str("message") != b64(msg) {
			t.Fatalf("sign_request carries %d base64 chars, want the %d-byte message", len(req.str("message")), limit)
		}
		h.approve(req)
		verifyResult(t, awaitResp(t, res), h.pub, msg)
	})
	// Refused bodies name a key with no connection: should one be accepted
	// by mistake it fails fast with 404 instead of waiting for an answer.
	absent, _ := newKey(t)
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"message of max_message_bytes+1", signBody(absent, bytes.Repeat([]byte{1}, limit+1), nil)},
		{"message far over the limit", signBody(absent, bytes.Repeat([]byte{1}, 8*limit), nil)},
		// A small message in a body over the body limit (the largest
		// message's base64 plus some KiB for the other fields). Kept under
		// the socket buffers: a much larger body may see the relay close the
		// connection before the client has written it all.
		{"body over the body limit", signBody(absent, []byte("small"), map[string]any{"padding": strings.Repeat("p", 24<<10)})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expectError(t, r.post(tc.body), http.StatusRequestEntityTooLarge, "message_too_large")
		})
	}
}

// paddedFrame returns a JSON text frame of exactly size bytes with the given
// fields and an ignored padding field.
func paddedFrame(t *testing.T, f frame, size int) []byte {
	t.Helper()
	f["padding"] = ""
	base, _ := json.Marshal(f)
	if len(base) > size {
		t.Fatalf("frame %s is already over %d bytes", base, size)
	}
	f["padding"] = strings.Repeat("x", size-len(base))
	out, _ := json.Marshal(f)
	if len(out) != size {
		t.Fatalf("padded frame is %d bytes, want %d", len(out), size)
	}
	return out
}

func TestFrameSizeLimit(t *testing.T) {
	const limit = 1024
	r := startRelay(t, func(c *config.Config) { c.WebSocket.MaxFrameBytes = limit })

	// introduce answers the challenge on a raw connection with the
	// introduction padded to size bytes.
	introduce := func(t *testing.T, size int) *holder {
		conn, _, err := r.dial(t, nil)
		if err != nil {
			t.Fatal(err)
		}
		pub, priv := newKey(t)
		h := &holder{t: t, conn: conn, priv: priv, pub: pub}
		ch := h.expect(protocol.TypeChallenge)
		nonce, _ := protocol.DecodeBase64(ch.str("nonce"))
		sig := b64(ed25519.Sign(priv, protocol.IntroductionMessage(nonce)))
		h.sendRaw(websocket.TextMessage, paddedFrame(t, frame{"type": "introduction", "public_key": b64(pub), "signature": sig}, size))
		return h
	}

	t.Run("before introduction: exactly the limit is read", func(t *testing.T) {
		h := introduce(t, limit)
		h.expect(protocol.TypeIntroduced)
	})
	t.Run("before introduction: one byte over closes with 1009", func(t *testing.T) {
		h := introduce(t, limit+1)
		h.expectCloseNow(protocol.CloseMessageTooBig)
	})
	t.Run("after introduction: exactly the limit is read", func(t *testing.T) {
		h := r.connect(t, nil)
		h.sendRaw(websocket.TextMessage, paddedFrame(t, frame{"type": "no_such_type"}, limit))
		h.expectError(protocol.CodeUnknownType)
		// Still connected and served.
		res := r.signAsync(signBody(h.pub, []byte("still here"), nil))
		h.approve(h.expect(protocol.TypeSignRequest))
		verifyResult(t, awaitResp(t, res), h.pub, []byte("still here"))
	})
	t.Run("after introduction: one byte over closes with 1009", func(t *testing.T) {
		h := r.connect(t, nil)
		h.sendRaw(websocket.TextMessage, paddedFrame(t, frame{"type": "sign_reject", "request_id": uuid.NewString()}, limit+1))
		h.expectCloseNow(protocol.CloseMessageTooBig)
		// The closed connection is out of the registry.
		h.awaitTCPClose()
		expectError(t, r.post(signBody(h.pub, []byte("x"), nil)), http.StatusNotFound, "not_connected")
	})
}

func TestBadFramesCloseWith1008(t *testing.T) {
	r := startRelay(t, nil)
	bad := []byte(`{"type":"no_such_type"}`)

	t.Run("a few bad frames: errors, connection stays", func(t *testing.T) {
		h := r.connect(t, nil)
		for i := 0; i < 5; i++ {
			h.sendRaw(websocket.TextMessage, bad)
			h.expectError(protocol.CodeUnknownType)
		}
		res := r.signAsync(signBody(h.pub, []byte("still served"), nil))
		h.approve(h.expect(protocol.TypeSignRequest))
		verifyResult(t, awaitResp(t, res), h.pub, []byte("still served"))
	})

	t.Run("a flood of bad frames: 1008", func(t *testing.T) {
		const sent = 40
		h := r.connect(t, nil)
		_ = h.conn.SetWriteDeadline(time.Now().Add(wait))
		for i := 0; i < sent; i++ {
			// The relay may close while we write; what it sent is read below.
			if err := h.conn.WriteMessage(websocket.TextMessage, bad); err != nil {
				break
			}
		}
		errorsSeen := 0
		for {
			f, err := h.read()
			if err == nil {
				if f.str("type") != protocol.TypeError || f.str("code") != protocol.CodeUnknownType {
					t.Fatalf("got %v, want unknown_type errors then close 1008", f)
				}
				errorsSeen++
				continue
			}
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != protocol.ClosePolicyViolation {
				t.Fatalf("after %d error frames the connection ended with %v, want close 1008", errorsSeen, err)
			}
			break
		}
		h.awaitTCPClose()
		// The relay tolerates a burst of 20 before closing.
		if errorsSeen < 20 || errorsSeen >= sent {
			t.Fatalf("%d error frames before 1008 for %d bad frames; want at least the burst of 20 and a close before the end", errorsSeen, sent)
		}
		expectError(t, r.post(signBody(h.pub, []byte("x"), nil)), http.StatusNotFound, "not_connected")
	})
}
