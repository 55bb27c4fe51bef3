// Package tests drives a real relay, started on a free loopback port, over
// raw WebSocket and HTTP exactly as outside clients do. Every clause of
// ../shared/PROTOCOL.md has a test here that fails if the clause breaks.
package tests

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/httpapi"
	"github.com/signrelay/signrelay/protocol"
)

const testAPIKey = "test-api-key-0123456789abcdef"

// wait bounds every blocking step of a test; nothing here sleeps to synchronise.
const wait = 10 * time.Second

type relay struct {
	t       *testing.T
	srv     *httpapi.Server
	cfg     config.Config
	base    string // http://127.0.0.1:port
	ws      string // ws://127.0.0.1:port/ws
	stopped chan struct{}
	client  *http.Client
}

// startRelay runs a relay with test defaults (rate limits off) changed by
// mutate, and shuts it down when the test ends.
func startRelay(t *testing.T, mutate func(*config.Config)) *relay {
	t.Helper()
	return startRelayWith(t, mutate, httpapi.New)
}

// testConfig is the configuration every test relay starts from.
func testConfig(mutate func(*config.Config)) config.Config {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.APIKeys = config.BareKeys(testAPIKey)
	cfg.RateLimits.Enabled = false
	cfg.ShutdownGrace = config.Duration(2 * time.Second)
	if mutate != nil {
		mutate(&cfg)
	}
	return cfg
}

// testLogger is a relay's logger. With SIGNRELAY_TEST_LOG set it writes
// everything to stderr; otherwise it keeps the last warnings and errors
// (the relay's and its embedded NATS server's) and prints them if t fails,
// so that a failure seen only in CI comes with the relay's side of it.
func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("SIGNRELAY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	tail := &logTail{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the relay's last warnings:\n%s", tail)
		}
	})
	return slog.New(slog.NewTextHandler(tail, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// logTail keeps the last lines written to it (slog writes one record per
// Write).
type logTail struct {
	mu    sync.Mutex // guards the following fields
	lines []string
}

const logTailLines = 200

func (l *logTail) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == logTailLines {
		l.lines = append(l.lines[:0], l.lines[1:]...)
	}
	l.lines = append(l.lines, string(p))
	return len(p), nil
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "")
}

// startRelayWith runs a relay built by build (httpapi.New for one node).
func startRelayWith(t *testing.T, mutate func(*config.Config), build func(config.Config, *slog.Logger) (*httpapi.Server, error)) *relay {
	t.Helper()
	cfg := testConfig(mutate)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv, err := build(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	scheme := "http"
	if cfg.TLS.Enabled() {
		scheme = "https"
	}
	r := &relay{
		t: t, srv: srv, cfg: cfg,
		base:    scheme + "://" + ln.Addr().String(),
		ws:      strings.Replace(scheme, "http", "ws", 1) + "://" + ln.Addr().String() + "/ws",
		stopped: make(chan struct{}),
		client:  &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{}},
	}
	go func() {
		defer close(r.stopped)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		r.shutdown()
		r.client.CloseIdleConnections()
	})
	return r
}

// shutdown stops the relay and waits for Serve to return. Harmless twice.
func (r *relay) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_ = r.srv.Shutdown(ctx)
	select {
	case <-r.stopped:
	case <-ctx.Done():
		r.t.Error("relay did not stop")
	}
}

// --- backend side -------------------------------------------------------

type signResp struct {
	Status     int
	Header     http.Header
	RequestID  string `json:"request_id"`
	PublicKey  string `json:"public_key"`
	Message    string `json:"message"`
	Signature  string `json:"signature"`
	Error      struct{ Code, Message string }
	ErrReason  *string
	RawBody    string
	TransportE error
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func signBody(pub ed25519.PublicKey, msg []byte, extra map[string]any) []byte {
	m := map[string]any{"public_key": b64(pub), "message": b64(msg)}
	for k, v := range extra {
		m[k] = v
	}
	body, _ := json.Marshal(m)
	return body
}

// post sends POST /sign with the test API key and raw body.
func (r *relay) post(body []byte) signResp {
	return r.postAuth("Bearer "+testAPIKey, body)
}

func (r *relay) postAuth(auth string, body []byte) signResp {
	req, _ := http.NewRequest(http.MethodPost, r.base+"/sign", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	res, err := r.client.Do(req)
	if err != nil {
		return signResp{TransportE: err}
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	return parseSignResp(r.t, res, raw)
}

func parseSignResp(t *testing.T, res *http.Response, raw []byte) signResp {
	out := signResp{Status: res.StatusCode, Header: res.Header, RawBody: string(raw)}
	var body struct {
		RequestID string `json:"request_id"`
		PublicKey string `json:"public_key"`
		Message   string `json:"message"`
		Signature string `json:"signature"`
		Error     *struct {
			Code    string  `json:"code"`
			Message string  `json:"message"`
			Reason  *string `json:"reason"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Errorf("response is not JSON (%d): %q", res.StatusCode, raw)
		return out
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	out.RequestID, out.PublicKey, out.Message, out.Signature = body.RequestID, body.PublicKey, body.Message, body.Signature
	if body.Error != nil {
		out.Error.Code, out.Error.Message, out.ErrReason = body.Error.Code, body.Error.Message, body.Error.Reason
		if body.Error.Message == "" {
			t.Errorf("error %q without a message", body.Error.Code)
		}
	} else if res.StatusCode != http.StatusOK {
		t.Errorf("status %d without an error object: %s", res.StatusCode, raw)
	}
	return out
}

// signAsync starts POST /sign and returns where its result will arrive.
func (r *relay) signAsync(body []byte) <-chan signResp {
	ch := make(chan signResp, 1)
	go func() { ch <- r.post(body) }()
	return ch
}

func awaitResp(t *testing.T, ch <-chan signResp) signResp {
	t.Helper()
	select {
	case r := <-ch:
		if r.TransportE != nil {
			t.Fatalf("POST /sign: %v", r.TransportE)
		}
		return r
	case <-time.After(wait + 60*time.Second):
		t.Fatal("POST /sign did not return")
	}
	return signResp{}
}

func expectError(t *testing.T, r signResp, status int, code string) {
	t.Helper()
	if r.Status != status || r.Error.Code != code {
		t.Fatalf("got %d %q (%s), want %d %q", r.Status, r.Error.Code, r.RawBody, status, code)
	}
}

// --- key-holder side ----------------------------------------------------

type frame map[string]any

func (f frame) str(k string) string { s, _ := f[k].(string); return s }

type holder struct {
	t       *testing.T
	conn    *websocket.Conn
	priv    ed25519.PrivateKey
	pub     ed25519.PublicKey
	session string
}

func newKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// dial opens a raw WebSocket to the relay, closed when the test ends.
func (r *relay) dial(t *testing.T, header http.Header) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: wait, TLSClientConfig: r.tlsClientConfig()}
	conn, res, err := d.Dial(r.ws, header)
	if conn != nil {
		t.Cleanup(func() { conn.Close() })
	}
	return conn, res, err
}

// dialHolder opens a WebSocket for priv's key and reads the challenge,
// without introducing it; it returns the challenge's nonce.
func (r *relay) dialHolder(t *testing.T, priv ed25519.PrivateKey) (*holder, []byte) {
	t.Helper()
	conn, _, err := r.dial(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &holder{t: t, conn: conn, priv: priv, pub: priv.Public().(ed25519.PublicKey)}
	ch := h.expect(protocol.TypeChallenge)
	nonce, err := protocol.DecodeBase64(ch.str("nonce"))
	if err != nil || len(nonce) != 32 {
		t.Fatalf("challenge nonce %q", ch.str("nonce"))
	}
	return h, nonce
}

// connect dials and introduces a key holder with priv (a fresh key if nil).
func (r *relay) connect(t *testing.T, priv ed25519.PrivateKey) *holder {
	t.Helper()
	if priv == nil {
		_, priv = newKey(t)
	}
	h, nonce := r.dialHolder(t, priv)
	h.send(frame{"type": "introduction", "public_key": b64(h.pub),
		"signature": b64(ed25519.Sign(priv, protocol.IntroductionMessage(nonce)))})
	intro := h.expect(protocol.TypeIntroduced)
	if intro.str("public_key") != b64(h.pub) {
		t.Fatalf("introduced for %q, want %q", intro.str("public_key"), b64(h.pub))
	}
	h.session = intro.str("session_id")
	return h
}

func (h *holder) send(f frame) {
	h.t.Helper()
	b, _ := json.Marshal(f)
	h.sendRaw(websocket.TextMessage, b)
}

func (h *holder) sendRaw(mt int, b []byte) {
	h.t.Helper()
	_ = h.conn.SetWriteDeadline(time.Now().Add(wait))
	if err := h.conn.WriteMessage(mt, b); err != nil {
		h.t.Fatalf("write: %v", err)
	}
}

// read returns the next frame, or the error that ended the connection.
func (h *holder) read() (frame, error) {
	_ = h.conn.SetReadDeadline(time.Now().Add(wait + 60*time.Second))
	mt, data, err := h.conn.ReadMessage()
	if err != nil {
		return nil, err
	}
	if mt != websocket.TextMessage {
		h.t.Fatalf("relay sent a non-text frame (%d)", mt)
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		h.t.Fatalf("relay sent bad JSON %q", data)
	}
	return f, nil
}

// expect reads the next frame and fails unless it has type typ.
func (h *holder) expect(typ string) frame {
	h.t.Helper()
	f, err := h.read()
	if err != nil {
		h.t.Fatalf("waiting for %s: %v", typ, err)
	}
	if f.str("type") != typ {
		h.t.Fatalf("got %v, want a %s frame", f, typ)
	}
	return f
}

// expectError reads an error frame with code.
func (h *holder) expectError(code string) frame {
	h.t.Helper()
	f := h.expect(protocol.TypeError)
	if f.str("code") != code || f.str("message") == "" {
		h.t.Fatalf("got error %v, want code %q with a message", f, code)
	}
	return f
}

// expectClose reads until the connection ends and checks its close code.
func (h *holder) expectClose(code int) {
	h.t.Helper()
	for {
		_, err := h.read()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			h.t.Fatalf("connection ended with %v, want close code %d", err, code)
		}
		if ce.Code != code {
			h.t.Fatalf("close code %d (%q), want %d", ce.Code, ce.Text, code)
		}
		return
	}
}

// approve signs the request's message and sends sign_response.
func (h *holder) approve(req frame) {
	h.t.Helper()
	msg, err := protocol.DecodeBase64(req.str("message"))
	if err != nil {
		h.t.Fatal(err)
	}
	h.send(frame{"type": "sign_response", "request_id": req.str("request_id"),
		"message": req.str("message"), "signature": b64(ed25519.Sign(h.priv, msg))})
}

func (h *holder) reject(req frame, reason string) {
	h.send(frame{"type": "sign_reject", "request_id": req.str("request_id"), "reason": reason})
}

func (h *holder) expectCancel(requestID, reason string) {
	h.t.Helper()
	f := h.expect(protocol.TypeSignCancel)
	if f.str("request_id") != requestID || f.str("reason") != reason {
		h.t.Fatalf("got cancel %v, want %s for %s", f, reason, requestID)
	}
}

func verifyResult(t *testing.T, r signResp, pub ed25519.PublicKey, msg []byte) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("status %d: %s", r.Status, r.RawBody)
	}
	sig, err := protocol.DecodeBase64(r.Signature)
	if err != nil || !ed25519.Verify(pub, msg, sig) {
		t.Fatalf("signature %q does not verify", r.Signature)
	}
	if r.PublicKey != b64(pub) || r.Message != b64(msg) || r.RequestID == "" {
		t.Fatalf("result fields: %+v", r)
	}
}

type configT = config.Config

func configDuration(d time.Duration) config.Duration { return config.Duration(d) }

func itoa(n int) string { return strconv.Itoa(n) }
