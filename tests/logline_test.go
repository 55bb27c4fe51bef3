package tests

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/httpapi"
	"github.com/signrelay/signrelay/protocol"
)

// infoLines keeps a relay's info log as JSON records.
type infoLines struct {
	mu  sync.Mutex // guards the following field
	buf bytes.Buffer
}

func (l *infoLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// with returns the records whose msg is msg and whose code is code.
func (l *infoLines) with(t *testing.T, msg, code string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["msg"] == msg && rec["code"] == code {
			out = append(out, rec)
		}
	}
	return out
}

// one returns the only record of msg with code, and checks its fields.
func (l *infoLines) one(t *testing.T, msg, code string, status int, requestID, requester, key string) {
	t.Helper()
	recs := l.with(t, msg, code)
	if len(recs) != 1 {
		t.Fatalf("%d %q lines with code %s, want 1", len(recs), msg, code)
	}
	r := recs[0]
	if r["level"] != "INFO" || r["status"] != float64(status) || r["request_id"] != requestID ||
		r["requester"] != requester || r["key"] != key {
		t.Fatalf("%q line %v, want status %d request_id %q requester %q key %q", msg, r, status, requestID, requester, key)
	}
	if _, ok := r["ms"].(float64); !ok {
		t.Fatalf("%q line %v without its duration", msg, r)
	}
}

func startLoggedRelay(t *testing.T, mutate func(*config.Config)) (*relay, *infoLines) {
	t.Helper()
	lines := &infoLines{}
	log := slog.New(slog.NewJSONHandler(lines, &slog.HandlerOptions{Level: slog.LevelInfo}))
	r := startRelayWith(t, func(c *config.Config) {
		namedKeys(c)
		if mutate != nil {
			mutate(c)
		}
	}, func(cfg config.Config, _ *slog.Logger) (*httpapi.Server, error) { return httpapi.New(cfg, log) })
	return r, lines
}

func short(pub []byte) string {
	k, _ := protocol.PublicKeyFromBytes(pub)
	return k.ShortString()
}

// Issue 10: one info line on every outcome of POST /sign, with the request
// id, the requester's name, the key's short form, status, code and
// duration: "sign ended" once per request made, "sign refused" for a call
// no request came of.
func TestInfoLineOnEveryOutcome(t *testing.T) {
	r, lines := startLoggedRelay(t, func(c *config.Config) { c.Sign.MaxMessageBytes = 1024 })
	h := r.connect(t, nil)

	// Signed, and an idempotent replay of it: one request, one line.
	idem := map[string]string{"Idempotency-Key": "logged-" + b64(h.pub)[:8]}
	ch := r.callAsync(t, "POST", "/sign", billingKey, signBody(h.pub, []byte("signed"), nil), idem)
	req := h.expect(protocol.TypeSignRequest)
	h.approve(req)
	expectStatus(t, recv(t, ch), 200, "")
	expectStatus(t, r.mustCall(t, "POST", "/sign", billingKey, signBody(h.pub, []byte("signed"), nil), idem), 200, "")
	lines.one(t, "sign ended", "ok", 200, req.str("request_id"), "billing", short(h.pub))

	// Rejected.
	ch = r.callAsync(t, "POST", "/sign", billingKey, signBody(h.pub, []byte("rejected"), nil), nil)
	req = h.expect(protocol.TypeSignRequest)
	h.reject(req, "no")
	expectStatus(t, recv(t, ch), 403, "rejected")
	lines.one(t, "sign ended", "rejected", 403, req.str("request_id"), "billing", short(h.pub))

	// Refused before a request was made.
	absent, _ := newKey(t)
	nc := r.mustCall(t, "POST", "/sign", billingKey, signBody(absent, []byte("x"), nil), nil)
	expectStatus(t, nc, 404, "not_connected")
	lines.one(t, "sign refused", "not_connected", 404, nc.str("request_id"), "billing", short(absent))
	expectStatus(t, r.mustCall(t, "POST", "/sign", "wrong-key-0123456789abcdef", signBody(h.pub, []byte("x"), nil), nil), 401, "unauthorized")
	lines.one(t, "sign refused", "unauthorized", 401, "", "", "")
	expectStatus(t, r.mustCall(t, "POST", "/sign", billingKey, []byte(`{"public_key":"`+b64(h.pub)+`","message":"a\nb"}`), nil), 400, "invalid_request")
	lines.one(t, "sign refused", "invalid_request", 400, "", "billing", "")
	expectStatus(t, r.mustCall(t, "POST", "/sign", billingKey, signBody(h.pub, make([]byte, 1025), nil), nil), http.StatusRequestEntityTooLarge, "message_too_large")
	// And over the HTTP layer's body limit, refused before the handler.
	expectStatus(t, r.mustCall(t, "POST", "/sign", billingKey, signBody(h.pub, make([]byte, 64<<10), nil), nil), http.StatusRequestEntityTooLarge, "message_too_large")
	if n := len(lines.with(t, "sign refused", "message_too_large")); n != 2 {
		t.Fatalf("%d lines for two 413s: %s", n, lines.buf.String())
	}
}

// The line says what the caller got: a signature withheld because its
// audit line could not be written is a 503, not a 200.
func TestInfoLineWhenAuditFails(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	r, lines := startLoggedRelay(t, func(c *config.Config) { c.Audit.Path = "/dev/full"; c.Audit.Fsync = "never" })
	h := r.connect(t, nil)
	ch := r.callAsync(t, "POST", "/sign", billingKey, signBody(h.pub, []byte("unrecorded"), nil), nil)
	req := h.expect(protocol.TypeSignRequest)
	h.approve(req)
	expectStatus(t, recv(t, ch), 503, "unavailable")
	lines.one(t, "sign ended", "unavailable", 503, req.str("request_id"), "billing", short(h.pub))
	if n := len(lines.with(t, "sign ended", "ok")); n != 0 {
		t.Fatalf("%d lines say ok for a withheld signature", n)
	}
}

// A client IP that keeps guessing API keys: each 401 has its info line,
// the 429s after them do not (a stranger must not write the info log as
// fast as they send); a right key's 429 does.
func TestInfoLineRateLimitedGuesses(t *testing.T) {
	r, lines := startLoggedRelay(t, func(c *config.Config) {
		c.RateLimits.Enabled = true
		c.RateLimits.AuthFailuresPerIP = config.Limit{Rate: 0.001, Burst: 2}
		c.RateLimits.SignPerAPIKey = config.Limit{Rate: 0.001, Burst: 1}
	})
	pub, _ := newKey(t)
	for i := 0; i < 2; i++ {
		expectStatus(t, r.mustCall(t, "POST", "/sign", "wrong-key-0123456789abcdef", signBody(pub, []byte("x"), nil), nil), 401, "unauthorized")
	}
	for i := 0; i < 3; i++ {
		expectStatus(t, r.mustCall(t, "POST", "/sign", "wrong-key-0123456789abcdef", signBody(pub, []byte("x"), nil), nil), 429, "rate_limited")
	}
	if n := len(lines.with(t, "sign refused", "unauthorized")); n != 2 {
		t.Fatalf("%d info lines for two 401s", n)
	}
	// The right key, over its own limit: logged, with who asked.
	expectStatus(t, r.mustCall(t, "POST", "/sign", billingKey, signBody(pub, []byte("x"), nil), nil), 404, "not_connected")
	expectStatus(t, r.mustCall(t, "POST", "/sign/", billingKey, signBody(pub, []byte("x"), nil), nil), 429, "rate_limited")
	lines.one(t, "sign refused", "rate_limited", 429, "", "billing", "")
}
