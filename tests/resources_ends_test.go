package tests

import (
	"context"
	"crypto/ed25519"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// Contract v1.1 §C, the ends of a request resource: long polls that wake
// up when the request ends (and not before), sign.result_ttl, and the
// ended states (invalid_signature, timeout, signed, rejected) read and
// replayed. Like resources_test.go, each testXxx runs on one node here and
// on three nodes in cluster_resources_test.go.

// timedResp is an answer and how long it took from the call.
type timedResp struct {
	res     httpResp
	err     error
	elapsed time.Duration
}

// longPoll starts GET /sign/id?wait_ms=ms on r. written is closed once
// the whole request has been written to the connection (httptrace), so
// that a test knows the poll is on its way to the relay; done gets the
// answer and its time.
func (r *relay) longPoll(id, apiKey string, ms int) (written <-chan struct{}, done <-chan timedResp) {
	w := make(chan struct{})
	ch := make(chan timedResp, 1)
	var once sync.Once
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { once.Do(func() { close(w) }) }}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(ms)*time.Millisecond+wait)
		defer cancel()
		start := time.Now()
		res, err := r.call(httptrace.WithClientTrace(ctx, trace), "GET", "/sign/"+id+"?wait_ms="+itoa(ms), apiKey, nil, nil)
		ch <- timedResp{res, err, time.Since(start)}
	}()
	return w, ch
}

// timedGet is GET /sign/id?wait_ms=ms on r, timed.
func (r *relay) timedGet(t *testing.T, id string, ms int) (httpResp, time.Duration) {
	t.Helper()
	start := time.Now()
	res := r.mustCall(t, "GET", "/sign/"+id+"?wait_ms="+itoa(ms), testAPIKey, nil, nil)
	return res, time.Since(start)
}

// pollers are the nodes a test long-polls from: the one that made the
// request (its owner) and another one (the same relay on one node).
func (d deploy) pollers() []*relay { return []*relay{d.api, d.other} }

// --- long poll ---------------------------------------------------------------

func testLongPollWakesOnEnd(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	msg := []byte("wake me when it ends")
	made := d.api.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, nil), nil)
	if made.Status != 202 {
		t.Fatalf("async POST /sign %d %s", made.Status, made.Raw)
	}
	id := made.str("request_id")
	req := h.expect(protocol.TypeSignRequest)

	// (a) A long poll on a pending request answers pending, and only once
	// its wait_ms has passed (the relay's timer starts after the call
	// does, so the elapsed time seen here cannot be shorter).
	for _, n := range d.pollers() {
		got, took := n.timedGet(t, id, 300)
		if got.Status != 200 {
			t.Fatalf("GET wait_ms=300: %d %s", got.Status, got.Raw)
		}
		checkResource(t, got, "pending", h.pub, msg)
		if took < 300*time.Millisecond || took > wait {
			t.Fatalf("GET wait_ms=300 on a pending request answered after %s", took)
		}
	}

	// (b) Long polls with a long wait_ms, made before the holder answers,
	// return the signed resource as soon as it is signed. To have them
	// reach the relay before the answer without sleeping: each is known
	// to have left the client (httptrace WroteRequest), and then a short
	// poll on the same node, sent after it, is read and answered pending
	// (200 ms) before the holder answers. The relay reads its connections
	// concurrently, so the long poll is all but surely waiting by then;
	// and should it still arrive after the answer, it finds the request
	// ended and returns signed at once: a late poll can only make this
	// test pass as the plain read it would then be, never fail it
	// spuriously. What fails it is a long poll that does not wake up (it
	// would answer pending after 20 s, or not before the bound) or one
	// that returns before the end (it would say pending).
	const longMS = 20000
	var polls []<-chan timedResp
	for _, n := range d.pollers() {
		written, done := n.longPoll(id, testAPIKey, longMS)
		select {
		case <-written:
		case r := <-done:
			t.Fatalf("long poll returned before it was sent whole, or while pending: %+v", r)
		case <-time.After(wait):
			t.Fatal("long poll not sent")
		}
		polls = append(polls, done)
	}
	for _, n := range d.pollers() {
		got, _ := n.timedGet(t, id, 200)
		checkResource(t, got, "pending", h.pub, msg)
	}
	for _, done := range polls {
		select {
		case r := <-done:
			t.Fatalf("long poll returned while the request was pending: %d %s (%v)", r.res.Status, r.res.Raw, r.err)
		default:
		}
	}
	h.approve(req)
	var sig string
	for i, done := range polls {
		r := recv(t, done)
		if r.err != nil {
			t.Fatalf("long poll %d: %v after %s", i, r.err, r.elapsed)
		}
		if r.res.Status != 200 {
			t.Fatalf("long poll %d: %d %s", i, r.res.Status, r.res.Raw)
		}
		checkResource(t, r.res, "signed", h.pub, msg)
		// A bound, not a timing: far below wait_ms, far above any answer.
		if r.elapsed >= wait {
			t.Fatalf("long poll %d answered after %s: it did not wake up with the end", i, r.elapsed)
		}
		if sig != "" && r.res.str("signature") != sig {
			t.Fatal("two long polls saw two signatures")
		}
		sig = r.res.str("signature")
	}
	// An ended request is answered at once, whatever wait_ms says.
	for _, n := range d.pollers() {
		got, took := n.timedGet(t, id, 60000)
		checkResource(t, got, "signed", h.pub, msg)
		if took >= wait {
			t.Fatalf("GET wait_ms=60000 on an ended request took %s", took)
		}
	}
}

func TestLongPollWakesOnEnd(t *testing.T) { testLongPollWakesOnEnd(t, oneNode(t, nil)) }

// --- sign.result_ttl ---------------------------------------------------------

// shortTTL is the sign.result_ttl of the TTL tests: the configuration's
// minimum is 1 s; 4 s leaves a loaded CI machine (-race, three nodes)
// room for the read and the replay that must come before it passes.
const shortTTL = 4 * time.Second

// ttlConfig is namedKeys with a short sign.result_ttl and a longer
// sign.max_async_timeout than the default.
func ttlConfig(c *config.Config) {
	namedKeys(c)
	c.Sign.ResultTTL = config.Duration(shortTTL)
	c.Sign.MaxAsyncTimeout = config.Duration(20 * time.Minute)
}

// testResultTTL needs a deployment made with ttlConfig.
func testResultTTL(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	msg := []byte("forget me")
	idem := map[string]string{"Idempotency-Key": "ttl-" + b64(h.pub)[:12]}
	made := d.api.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, nil), idem)
	if made.Status != 202 {
		t.Fatalf("async POST /sign %d %s", made.Status, made.Raw)
	}
	id := made.str("request_id")
	req := h.expect(protocol.TypeSignRequest)
	beforeEnd := time.Now() // the request ends after this
	h.approve(req)
	checkResource(t, d.other.mustCall(t, "GET", "/sign/"+id+"?wait_ms=10000", testAPIKey, nil, nil), "signed", h.pub, msg)
	// Within the TTL: kept, and the key replays it.
	rp := d.other.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, nil), idem)
	if rp.Status != 202 || rp.str("request_id") != id || rp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay within the TTL %d %v %s", rp.Status, rp.Header, rp.Raw)
	}
	checkResource(t, rp, "signed", h.pub, msg)

	// Past the TTL: 404 on every node. Polling a condition, bounded.
	deadline := time.Now().Add(shortTTL + wait)
	for _, n := range d.pollers() {
		for {
			got := n.mustCall(t, "GET", "/sign/"+id, testAPIKey, nil, nil)
			if got.Status == 404 {
				expectStatus(t, got, 404, "not_found")
				break
			}
			if got.Status != 200 {
				t.Fatalf("GET while kept: %d %s", got.Status, got.Raw)
			}
			checkResource(t, got, "signed", h.pub, msg)
			if time.Now().After(deadline) {
				t.Fatalf("still readable %s after its end, with result_ttl %s", time.Since(beforeEnd), shortTTL)
			}
			time.Sleep(50 * time.Millisecond) // polling a condition, bounded
		}
		// (Less 5 ms: an end is kept to the millisecond.)
		if since := time.Since(beforeEnd); since < shortTTL-5*time.Millisecond {
			t.Fatalf("forgotten %s after its end, before result_ttl %s", since, shortTTL)
		}
	}
	expectStatus(t, d.other.mustCall(t, "DELETE", "/sign/"+id, testAPIKey, nil, nil), 404, "not_found")

	// The same Idempotency-Key, same fingerprint: a fresh request, and
	// the holder is asked again.
	fresh := d.api.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, nil), idem)
	if fresh.Status != 202 || fresh.str("request_id") == id || fresh.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("after result_ttl the key answered %d %v %s, want a fresh 202", fresh.Status, fresh.Header, fresh.Raw)
	}
	checkResource(t, fresh, "pending", h.pub, msg)
	r2 := h.expect(protocol.TypeSignRequest)
	if r2.str("request_id") != fresh.str("request_id") {
		t.Fatalf("sign_request %v, want %s", r2, fresh.str("request_id"))
	}
	// And that one is the key's request now, on any node: a blocking
	// retry waits for it and gets its outcome.
	retry := d.other.callAsync(t, "POST", "/sign", testAPIKey, signBody(h.pub, msg, nil), idem)
	checkResource(t, d.other.mustCall(t, "GET", "/sign/"+r2.str("request_id"), testAPIKey, nil, nil), "pending", h.pub, msg)
	h.approve(r2)
	res := recv(t, retry)
	if res.Status != 200 || res.str("request_id") != r2.str("request_id") || res.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry of the fresh request %d %v %s", res.Status, res.Header, res.Raw)
	}
	expectStatus(t, d.other.mustCall(t, "GET", "/sign/"+id, testAPIKey, nil, nil), 404, "not_found")
	h.noMore(protocol.TypeSignRequest)
}

func TestResultTTL(t *testing.T) { testResultTTL(t, oneNode(t, ttlConfig)) }

// testMaxAsyncTimeout needs a deployment made with ttlConfig
// (sign.max_async_timeout 20m).
func testMaxAsyncTimeout(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	msg := []byte("take your time")
	expectStatus(t, d.api.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, map[string]any{"timeout_ms": 1200001}), nil), 400, "invalid_request")
	res := d.api.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, map[string]any{"timeout_ms": 1200000}), nil)
	if res.Status != 202 {
		t.Fatalf("timeout_ms 1200000 with max_async_timeout 20m: %d %s", res.Status, res.Raw)
	}
	exp, _ := time.Parse(time.RFC3339, res.str("expires_at"))
	if until := time.Until(exp); until < 19*time.Minute || until > 21*time.Minute {
		t.Fatalf("expires_at %s is not twenty minutes away", res.str("expires_at"))
	}
	req := h.expect(protocol.TypeSignRequest)
	if req.str("expires_at") != res.str("expires_at") {
		t.Fatalf("sign_request %v, resource %s", req, res.Raw)
	}
	// The blocking maximum is unchanged.
	expectStatus(t, d.api.mustCall(t, "POST", "/sign", testAPIKey, signBody(h.pub, msg, map[string]any{"timeout_ms": 60001}), nil), 400, "invalid_request")
	if del := d.other.mustCall(t, "DELETE", "/sign/"+res.str("request_id"), testAPIKey, nil, nil); del.Status != 200 {
		t.Fatalf("DELETE %d %s", del.Status, del.Raw)
	}
	h.expectCancel(res.str("request_id"), protocol.CancelCancelled)
}

func TestMaxAsyncTimeoutSetting(t *testing.T) { testMaxAsyncTimeout(t, oneNode(t, ttlConfig)) }

// sign.max_async_timeout and sign.result_ttl are read from the file, and
// values out of their ranges (10m–24h, 1s–168h) are refused naming the key.
func TestConfigAsyncTimeoutAndResultTTL(t *testing.T) {
	load := func(t *testing.T, yaml string) (config.Config, error) {
		p := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(p, []byte("api_keys: [k-0123456789abcdef]\n"+yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return config.Load(p, true, func(string) string { return "" })
	}
	cfg, err := load(t, "sign: { max_async_timeout: 2h, result_ttl: 90s }\n")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Sign.MaxAsyncTimeout.D() != 2*time.Hour || cfg.Sign.ResultTTL.D() != 90*time.Second {
		t.Fatalf("max_async_timeout %s, result_ttl %s", cfg.Sign.MaxAsyncTimeout, cfg.Sign.ResultTTL)
	}
	if d := config.Default().Sign; d.MaxAsyncTimeout.D() != 10*time.Minute || d.ResultTTL.D() != time.Hour {
		t.Fatalf("defaults max_async_timeout %s, result_ttl %s", d.MaxAsyncTimeout, d.ResultTTL)
	}
	for _, v := range []string{"10m", "24h"} {
		if _, err := load(t, "sign: { max_async_timeout: "+v+" }\n"); err != nil {
			t.Fatalf("max_async_timeout %s refused: %v", v, err)
		}
	}
	for _, v := range []string{"1s", "168h"} {
		if _, err := load(t, "sign: { result_ttl: "+v+" }\n"); err != nil {
			t.Fatalf("result_ttl %s refused: %v", v, err)
		}
	}
	for _, tc := range []struct{ key, value string }{
		{"max_async_timeout", "9m59s"},
		{"max_async_timeout", "24h1s"},
		{"max_async_timeout", "0s"},
		{"max_async_timeout", "-10m"},
		{"result_ttl", "999ms"},
		{"result_ttl", "168h1s"},
		{"result_ttl", "0s"},
		{"result_ttl", "-1h"},
	} {
		_, err := load(t, "sign: { "+tc.key+": "+tc.value+" }\n")
		if err == nil || !strings.Contains(err.Error(), "sign."+tc.key) {
			t.Errorf("%s %s: error %v, want one naming sign.%s", tc.key, tc.value, err, tc.key)
		}
	}
}

// --- ended states, read and replayed ------------------------------------------

// badAnswer sends a sign_response for req whose signature does not verify.
func (h *holder) badAnswer(req frame) {
	h.t.Helper()
	h.send(frame{"type": "sign_response", "request_id": req.str("request_id"), "message": req.str("message"), "signature": b64(make([]byte, 64))})
}

// expectReplay checks that a replay answered like first, marked replayed.
func expectReplay(t *testing.T, first, replay httpResp) {
	t.Helper()
	if replay.Status != first.Status || replay.Raw != first.Raw || replay.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay %d %s (Idempotent-Replayed %q), want %d %s replayed", replay.Status, replay.Raw, replay.Header.Get("Idempotent-Replayed"), first.Status, first.Raw)
	}
}

// expectAsyncReplay checks that an asynchronous replay with idem answers
// 202 with id's resource in the ended status.
func expectAsyncReplay(t *testing.T, r *relay, body []byte, idem map[string]string, id, status string, h *holder, msg []byte) httpResp {
	t.Helper()
	res := r.mustCall(t, "POST", "/sign", testAPIKey, body, idem)
	if res.Status != 202 || res.str("request_id") != id || res.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("async replay %d %v %s, want 202 for %s replayed", res.Status, res.Header, res.Raw, id)
	}
	checkResource(t, res, status, h.pub, msg)
	return res
}

// A 502: the only connection answers with a bad signature. The resource
// says invalid_signature, and the key replays the 502.
func testInvalidSignatureResource(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	msg := []byte("badly signed")
	body := signBody(h.pub, msg, nil)
	idem := map[string]string{"Idempotency-Key": "invalid-" + b64(h.pub)[:12]}
	first := d.api.callAsync(t, "POST", "/sign", testAPIKey, body, idem)
	req := h.expect(protocol.TypeSignRequest)
	id := req.str("request_id")
	h.badAnswer(req)
	h.expectError(protocol.CodeInvalidSignature)
	a := recv(t, first)
	expectStatus(t, a, 502, "invalid_signature")
	expectStoredEnd(t, d, a, id, "invalid_signature", h.pub, msg, body, idem)
	expectAsyncReplay(t, d.other, asyncBody(h.pub, msg, nil), idem, id, "invalid_signature", h, msg)
	// Ended: a good answer now is too late and changes nothing.
	h.approve(req)
	h.expectError(protocol.CodeUnknownRequest)
	expectReplay(t, a, d.other.mustCall(t, "POST", "/sign", testAPIKey, body, idem))
	expectStatus(t, d.other.mustCall(t, "DELETE", "/sign/"+id, testAPIKey, nil, nil), 409, "not_pending")
	h.noMore(protocol.TypeSignRequest)
}

func TestInvalidSignatureResource(t *testing.T) { testInvalidSignatureResource(t, oneNode(t, nil)) }

// A stored 504: nobody answers before the deadline; the key replays it.
func testTimeoutReplayed(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	msg := []byte("too slow")
	body := signBody(h.pub, msg, map[string]any{"timeout_ms": 300})
	idem := map[string]string{"Idempotency-Key": "timeout-" + b64(h.pub)[:12]}
	first := d.api.callAsync(t, "POST", "/sign", testAPIKey, body, idem)
	req := h.expect(protocol.TypeSignRequest)
	id := req.str("request_id")
	h.expectCancel(id, protocol.CancelTimeout)
	a := recv(t, first)
	expectStatus(t, a, 504, "timeout")
	// Replayed, not made again: no holder is asked, nobody waits 300 ms.
	expectStoredEnd(t, d, a, id, "timeout", h.pub, msg, body, idem)
	expectAsyncReplay(t, d.other, asyncBody(h.pub, msg, map[string]any{"timeout_ms": 300}), idem, id, "timeout", h, msg)
	// An answer after the deadline is too late and changes nothing.
	h.approve(req)
	h.expectError(protocol.CodeUnknownRequest)
	expectReplay(t, a, d.other.mustCall(t, "POST", "/sign", testAPIKey, body, idem))
	h.noMore(protocol.TypeSignRequest)
}

func TestTimeoutReplayed(t *testing.T) { testTimeoutReplayed(t, oneNode(t, nil)) }

// An asynchronous request replayed asynchronously after its end answers
// 202 with the ended resource; a blocking replay gets the stored outcome.
func testAsyncReplayAfterEnd(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	for _, tc := range []struct {
		status   string
		answer   func(frame)
		blocking int
	}{
		{"signed", h.approve, 200},
		{"rejected", func(f frame) { h.reject(f, "not today") }, 403},
	} {
		msg := []byte("async then " + tc.status)
		extra := map[string]any{"description": "replay " + tc.status}
		idem := map[string]string{"Idempotency-Key": "async-end-" + tc.status + "-" + b64(h.pub)[:12]}
		made := d.api.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, extra), idem)
		if made.Status != 202 || made.Header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("first async POST %d %v %s", made.Status, made.Header, made.Raw)
		}
		id := made.str("request_id")
		req := h.expect(protocol.TypeSignRequest)
		tc.answer(req)
		ended := d.other.mustCall(t, "GET", "/sign/"+id+"?wait_ms=10000", testAPIKey, nil, nil)
		checkResource(t, ended, tc.status, h.pub, msg)
		for _, n := range d.pollers() {
			rp := expectAsyncReplay(t, n, asyncBody(h.pub, msg, extra), idem, id, tc.status, h, msg)
			if rp.str("completed_at") != ended.str("completed_at") || rp.str("signature") != ended.str("signature") {
				t.Fatalf("async replay %s, resource %s", rp.Raw, ended.Raw)
			}
			if tc.status == "rejected" && !strings.Contains(rp.Raw, `"reason":"not today"`) {
				t.Fatalf("rejected replay %s without the reason", rp.Raw)
			}
		}
		// The blocking form of the same request gets what a blocking
		// first call would have got.
		b := d.other.mustCall(t, "POST", "/sign", testAPIKey, signBody(h.pub, msg, extra), idem)
		if b.Status != tc.blocking || b.str("request_id") != id || b.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("blocking replay %d %v %s, want %d for %s replayed", b.Status, b.Header, b.Raw, tc.blocking, id)
		}
		switch tc.status {
		case "signed":
			if b.str("signature") != ended.str("signature") || b.str("public_key") != b64(h.pub) || b.str("message") != b64(msg) {
				t.Fatalf("blocking replay %s, resource %s", b.Raw, ended.Raw)
			}
		case "rejected":
			expectStatus(t, b, 403, "rejected")
			if !strings.Contains(b.Raw, `"reason":"not today"`) {
				t.Fatalf("blocking replay %s without the reason", b.Raw)
			}
		}
	}
	h.noMore(protocol.TypeSignRequest)
}

func TestAsyncReplayAfterEnd(t *testing.T) { testAsyncReplayAfterEnd(t, oneNode(t, nil)) }

// expectStoredEnd checks a request whose blocking call ended with first:
// it reads as status on every node that reads, and the same call replays
// first there.
func expectStoredEnd(t *testing.T, d deploy, first httpResp, id, status string, pub ed25519.PublicKey, msg, body []byte, idem map[string]string) {
	t.Helper()
	if first.str("request_id") != id || first.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("first %d %v %s for %s", first.Status, first.Header, first.Raw, id)
	}
	for _, n := range d.pollers() {
		got := n.mustCall(t, "GET", "/sign/"+id+"?wait_ms=10000", testAPIKey, nil, nil)
		if got.Status != 200 {
			t.Fatalf("GET %d %s", got.Status, got.Raw)
		}
		checkResource(t, got, status, pub, msg)
	}
	for _, n := range d.pollers() {
		expectReplay(t, first, n.mustCall(t, "POST", "/sign", testAPIKey, body, idem))
	}
}
