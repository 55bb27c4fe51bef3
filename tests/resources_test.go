package tests

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// Contract v1.1 §B, §C and §E: named API keys, request resources
// (asynchronous, idempotent, cancellable) and wait_for_holder. Each test
// runs against a deployment: on one node all three roles are one relay; on
// a cluster (cluster_resources_test.go) backends call api, key holders
// connect to hold, and other is a third node that reads and cancels.

type deploy struct {
	api, hold, other *relay
}

func oneNode(t *testing.T, mutate func(*config.Config)) deploy {
	r := startRelay(t, mutate)
	return deploy{r, r, r}
}

const (
	billingKey = "billing-api-key-0123456789abcdef"
	otherKey2  = "other-api-key-0123456789abcdef"
)

// namedKeys configures testAPIKey (bare), billing and a second bare key.
func namedKeys(c *config.Config) {
	c.APIKeys = []config.APIKey{{Key: testAPIKey}, {Name: "billing", Key: billingKey}, {Key: otherKey2}}
}

// httpResp is any HTTP answer of the relay, decoded.
type httpResp struct {
	Status int
	Header http.Header
	Raw    string
	Body   map[string]any
}

func (h httpResp) str(k string) string { s, _ := h.Body[k].(string); return s }

func (h httpResp) errCode() string {
	e, _ := h.Body["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

// call sends method path with apiKey (none when "") and extra headers.
func (r *relay) call(ctx context.Context, method, path, apiKey string, body []byte, hdr map[string]string) (httpResp, error) {
	req, _ := http.NewRequestWithContext(ctx, method, r.base+path, bytes.NewReader(body))
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+apiKey)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := r.client.Do(req)
	if err != nil {
		return httpResp{}, err
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	out := httpResp{Status: res.StatusCode, Header: res.Header, Raw: string(raw)}
	if err := json.Unmarshal(raw, &out.Body); err != nil {
		return out, errors.New("answer is not JSON: " + string(raw))
	}
	return out, nil
}

func (r *relay) mustCall(t *testing.T, method, path, apiKey string, body []byte, hdr map[string]string) httpResp {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*wait)
	defer cancel()
	res, err := r.call(ctx, method, path, apiKey, body, hdr)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return res
}

// callAsync runs mustCall in the background.
func (r *relay) callAsync(t *testing.T, method, path, apiKey string, body []byte, hdr map[string]string) <-chan httpResp {
	ch := make(chan httpResp, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*wait)
		defer cancel()
		res, err := r.call(ctx, method, path, apiKey, body, hdr)
		if err != nil {
			t.Errorf("%s %s: %v", method, path, err)
		}
		ch <- res
	}()
	return ch
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(3 * wait):
		t.Fatal("no answer in time")
	}
	var zero T
	return zero
}

func expectStatus(t *testing.T, r httpResp, status int, code string) {
	t.Helper()
	if r.Status != status || r.errCode() != code {
		t.Fatalf("got %d %q, want %d %q: %s", r.Status, r.errCode(), status, code, r.Raw)
	}
}

// asyncBody is a sign body with "wait": false and extra fields.
func asyncBody(pub ed25519.PublicKey, msg []byte, extra map[string]any) []byte {
	m := map[string]any{"wait": false}
	for k, v := range extra {
		m[k] = v
	}
	return signBody(pub, msg, m)
}

// barrier makes sure every frame the relay queued for h before now has
// been read, and returns them: it sends a frame of an unknown type and
// reads up to the error that answers it.
func (h *holder) barrier() []frame {
	h.t.Helper()
	h.send(frame{"type": "barrier"})
	var got []frame
	for {
		f, err := h.read()
		if err != nil {
			h.t.Fatalf("barrier: %v", err)
		}
		if f.str("type") == protocol.TypeError && f.str("code") == protocol.CodeUnknownType {
			return got
		}
		got = append(got, f)
	}
}

// noMore fails when h received a frame of type typ since its last read.
func (h *holder) noMore(typ string) {
	h.t.Helper()
	for _, f := range h.barrier() {
		if f.str("type") == typ {
			h.t.Fatalf("unexpected %s: %v", typ, f)
		}
	}
}

func checkResource(t *testing.T, res httpResp, status string, pub ed25519.PublicKey, msg []byte) {
	t.Helper()
	b := res.Body
	if b["status"] != status || res.str("public_key") != b64(pub) || res.str("message") != b64(msg) {
		t.Fatalf("resource %s, want status %s", res.Raw, status)
	}
	for _, k := range []string{"request_id", "created_at", "expires_at", "description", "requester"} {
		if _, ok := b[k]; !ok {
			t.Fatalf("resource without %s: %s", k, res.Raw)
		}
	}
	if _, err := time.Parse(time.RFC3339, res.str("expires_at")); err != nil {
		t.Fatalf("expires_at %q", res.str("expires_at"))
	}
	_, hasDone := b["completed_at"]
	_, hasSig := b["signature"]
	_, hasErr := b["error"]
	switch status {
	case "pending":
		if hasDone || hasSig || hasErr {
			t.Fatalf("pending resource with an end: %s", res.Raw)
		}
	case "signed":
		sig, _ := protocol.DecodeBase64(res.str("signature"))
		if !hasDone || hasErr || !ed25519.Verify(pub, msg, sig) {
			t.Fatalf("signed resource without a valid signature: %s", res.Raw)
		}
	default:
		if !hasDone || hasSig || res.errCode() != status {
			t.Fatalf("ended resource %s: want error.code %s", res.Raw, status)
		}
	}
}

// --- §B ------------------------------------------------------------------

func testNamedRequester(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	for _, tc := range []struct{ key, want string }{{billingKey, "billing"}, {testAPIKey, ""}} {
		msg := []byte("who asks " + tc.want)
		ch := d.api.callAsync(t, "POST", "/sign", tc.key, signBody(h.pub, msg, nil), nil)
		req := h.expect(protocol.TypeSignRequest)
		if got, ok := req["requester"].(string); !ok || got != tc.want {
			t.Fatalf("requester %v, want %q", req["requester"], tc.want)
		}
		h.approve(req)
		if res := recv(t, ch); res.Status != 200 {
			t.Fatalf("POST /sign %d %s", res.Status, res.Raw)
		}
	}
	// The resource says who asked too.
	res := d.api.mustCall(t, "POST", "/sign", billingKey, asyncBody(h.pub, []byte("async who"), nil), nil)
	if res.Status != 202 || res.str("requester") != "billing" {
		t.Fatalf("async resource %d %s", res.Status, res.Raw)
	}
	h.expect(protocol.TypeSignRequest)
}

func TestNamedAPIKeyRequester(t *testing.T) { testNamedRequester(t, oneNode(t, namedKeys)) }

// --- §C: asynchronous requests and GET ------------------------------------

func testAsyncSignAndLongPoll(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	msg := []byte("pay later")
	res := d.api.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, map[string]any{"description": "d", "timeout_ms": 600000}), nil)
	if res.Status != 202 {
		t.Fatalf("async POST /sign %d %s", res.Status, res.Raw)
	}
	id := res.str("request_id")
	if loc := res.Header.Get("Location"); loc != "/sign/"+id {
		t.Fatalf("Location %q, want /sign/%s", loc, id)
	}
	checkResource(t, res, "pending", h.pub, msg)
	exp, _ := time.Parse(time.RFC3339, res.str("expires_at"))
	if until := time.Until(exp); until < 9*time.Minute {
		t.Fatalf("expires_at %s is not ten minutes away", exp)
	}
	req := h.expect(protocol.TypeSignRequest)
	if req.str("request_id") != id || req.str("expires_at") != res.str("expires_at") {
		t.Fatalf("sign_request %v does not match the resource %s", req, res.Raw)
	}

	// GET on the reading node; a short wait on a pending request returns it pending.
	if got := d.other.mustCall(t, "GET", "/sign/"+id+"?wait_ms=50", testAPIKey, nil, nil); got.Status != 200 {
		t.Fatalf("GET %d %s", got.Status, got.Raw)
	} else {
		checkResource(t, got, "pending", h.pub, msg)
	}
	// A long poll returns with the end, not before: had it returned
	// early it would say pending.
	poll := d.other.callAsync(t, "GET", "/sign/"+id+"?wait_ms=60000", testAPIKey, nil, nil)
	h.approve(req)
	got := recv(t, poll)
	if got.Status != 200 {
		t.Fatalf("long poll %d %s", got.Status, got.Raw)
	}
	checkResource(t, got, "signed", h.pub, msg)
	// Ended: readable on every node, with the same signature.
	again := d.api.mustCall(t, "GET", "/sign/"+id, testAPIKey, nil, nil)
	checkResource(t, again, "signed", h.pub, msg)
	if again.str("signature") != got.str("signature") {
		t.Fatal("the signature changed between reads")
	}
}

func TestAsyncSignAndLongPoll(t *testing.T) { testAsyncSignAndLongPoll(t, oneNode(t, nil)) }

func testResourceVisibility(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	res := d.api.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, []byte("mine"), nil), nil)
	id := res.str("request_id")
	h.expect(protocol.TypeSignRequest)
	for _, tc := range []struct {
		name, path, key string
		status          int
		code            string
	}{
		{"foreign API key", "/sign/" + id, billingKey, 404, "not_found"},
		{"unknown id", "/sign/3f1d2c4b-5a69-4788-9a0b-1c2d3e4f5a6b", testAPIKey, 404, "not_found"},
		{"not a UUID", "/sign/nope", testAPIKey, 400, "invalid_request"},
		{"wait_ms negative", "/sign/" + id + "?wait_ms=-1", testAPIKey, 400, "invalid_request"},
		{"wait_ms too long", "/sign/" + id + "?wait_ms=60001", testAPIKey, 400, "invalid_request"},
		{"wait_ms not a number", "/sign/" + id + "?wait_ms=1s", testAPIKey, 400, "invalid_request"},
		{"wait_ms empty", "/sign/" + id + "?wait_ms=", testAPIKey, 400, "invalid_request"},
		{"no API key", "/sign/" + id, "", 401, "unauthorized"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expectStatus(t, d.other.mustCall(t, "GET", tc.path, tc.key, nil, nil), tc.status, tc.code)
		})
	}
	for _, tc := range []struct {
		key    string
		status int
		code   string
	}{{billingKey, 404, "not_found"}, {"", 401, "unauthorized"}} {
		expectStatus(t, d.other.mustCall(t, "DELETE", "/sign/"+id, tc.key, nil, nil), tc.status, tc.code)
	}
	// Still pending after all that.
	checkResource(t, d.other.mustCall(t, "GET", "/sign/"+id, testAPIKey, nil, nil), "pending", h.pub, []byte("mine"))
}

func TestResourceVisibility(t *testing.T) { testResourceVisibility(t, oneNode(t, namedKeys)) }

func TestAsyncTimeoutBounds(t *testing.T) {
	r := startRelay(t, nil)
	h := r.connect(t, nil)
	msg := []byte("bounds")
	expectStatus(t, r.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, map[string]any{"timeout_ms": 600001}), nil), 400, "invalid_request")
	expectStatus(t, r.mustCall(t, "POST", "/sign", testAPIKey, signBody(h.pub, msg, map[string]any{"timeout_ms": 60001}), nil), 400, "invalid_request")
	expectStatus(t, r.mustCall(t, "POST", "/sign", testAPIKey, signBody(h.pub, msg, map[string]any{"timeout_ms": 60001, "wait": true}), nil), 400, "invalid_request")
	if res := r.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, map[string]any{"timeout_ms": 600000}), nil); res.Status != 202 {
		t.Fatalf("timeout_ms 600000 with wait false: %d %s", res.Status, res.Raw)
	}
	// The errors before a request is made are as in v1.
	_, other := newKey(t)
	expectStatus(t, r.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(other.Public().(ed25519.PublicKey), msg, nil), nil), 404, "not_connected")
}

func testAsyncTimeout(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	res := d.api.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, []byte("late"), map[string]any{"timeout_ms": 300}), nil)
	id := res.str("request_id")
	h.expect(protocol.TypeSignRequest)
	h.expectCancel(id, protocol.CancelTimeout)
	got := d.other.mustCall(t, "GET", "/sign/"+id+"?wait_ms=10000", testAPIKey, nil, nil)
	checkResource(t, got, "timeout", h.pub, []byte("late"))
}

func TestAsyncTimeout(t *testing.T) { testAsyncTimeout(t, oneNode(t, nil)) }

// --- §C: DELETE ------------------------------------------------------------

func testCancel(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	h2 := d.api.connect(t, h.priv) // a second recipient, on another node in a cluster
	msg := []byte("take it back")
	idem := map[string]string{"Idempotency-Key": "cancel-" + b64(h.pub)[:10]}
	blocking := d.api.callAsync(t, "POST", "/sign", testAPIKey, signBody(h.pub, msg, nil), idem)
	req := h.expect(protocol.TypeSignRequest)
	h2.expect(protocol.TypeSignRequest)
	id := req.str("request_id")
	// A blocking retry that joins the request (on a cluster, on the node
	// that reads and cancels, so it follows the request from the store).
	// Whether it joins before or after the DELETE, it must get the 409.
	joined := d.other.callAsync(t, "POST", "/sign", testAPIKey, signBody(h.pub, msg, nil), idem)

	res := d.other.mustCall(t, "DELETE", "/sign/"+id, testAPIKey, nil, nil)
	if res.Status != 200 {
		t.Fatalf("DELETE %d %s", res.Status, res.Raw)
	}
	checkResource(t, res, "cancelled", h.pub, msg)
	h.expectCancel(id, protocol.CancelCancelled)
	h2.expectCancel(id, protocol.CancelCancelled)
	expectStatus(t, recv(t, blocking), 409, "cancelled")
	expectStatus(t, recv(t, joined), 409, "cancelled")
	// An idempotent retry of the blocking call gets the same 409.
	expectStatus(t, d.api.mustCall(t, "POST", "/sign", testAPIKey, signBody(h.pub, msg, nil), idem), 409, "cancelled")

	// Again: 200 with the same resource.
	again := d.api.mustCall(t, "DELETE", "/sign/"+id, testAPIKey, nil, nil)
	if again.Status != 200 || again.str("completed_at") != res.str("completed_at") {
		t.Fatalf("second DELETE %d %s, want 200 %s", again.Status, again.Raw, res.Raw)
	}
	// An answer now is too late.
	h.approve(req)
	h.expectError(protocol.CodeUnknownRequest)

	// A request that ended otherwise: 409 not_pending with its id.
	ended := d.api.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, []byte("signed"), nil), nil)
	r1 := h.expect(protocol.TypeSignRequest)
	h2.expect(protocol.TypeSignRequest)
	h.approve(r1)
	h2.expectCancel(r1.str("request_id"), protocol.CancelAnsweredElsewhere)
	checkResource(t, d.other.mustCall(t, "GET", "/sign/"+ended.str("request_id")+"?wait_ms=10000", testAPIKey, nil, nil), "signed", h.pub, []byte("signed"))
	nf := d.other.mustCall(t, "DELETE", "/sign/"+ended.str("request_id"), testAPIKey, nil, nil)
	expectStatus(t, nf, 409, "not_pending")
	if nf.str("request_id") != ended.str("request_id") {
		t.Fatalf("not_pending body %s without the request_id", nf.Raw)
	}
	expectStatus(t, d.other.mustCall(t, "DELETE", "/sign/3f1d2c4b-5a69-4788-9a0b-1c2d3e4f5a6b", testAPIKey, nil, nil), 404, "not_found")
	// A blocking request without an idempotency key is not a resource.
	plain := d.api.callAsync(t, "POST", "/sign", testAPIKey, signBody(h.pub, []byte("plain"), nil), nil)
	pr := h.expect(protocol.TypeSignRequest)
	h2.expect(protocol.TypeSignRequest)
	expectStatus(t, d.other.mustCall(t, "DELETE", "/sign/"+pr.str("request_id"), testAPIKey, nil, nil), 404, "not_found")
	h.approve(pr)
	if res := recv(t, plain); res.Status != 200 {
		t.Fatalf("plain %d %s", res.Status, res.Raw)
	}
}

func TestCancel(t *testing.T) { testCancel(t, oneNode(t, nil)) }

// --- §C: Idempotency-Key ----------------------------------------------------

func testIdempotentReplay(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	msg := []byte("once only")
	body := signBody(h.pub, msg, map[string]any{"description": "pay"})
	idem := map[string]string{"Idempotency-Key": "order-42-" + b64(h.pub)[:8]}
	first := d.api.callAsync(t, "POST", "/sign", testAPIKey, body, idem)
	req := h.expect(protocol.TypeSignRequest)
	// Replayed while pending, on another node and asynchronously (wait is
	// not in the fingerprint): the same request, nobody asked again.
	second := d.other.callAsync(t, "POST", "/sign", testAPIKey, body, idem)
	async := d.other.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, msg, map[string]any{"description": "pay"}), idem)
	if async.Status != 202 || async.str("request_id") != req.str("request_id") || async.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("async replay %d %s %v", async.Status, async.Raw, async.Header)
	}
	h.noMore(protocol.TypeSignRequest)
	h.approve(req)
	a, b := recv(t, first), recv(t, second)
	if a.Status != 200 || b.Status != 200 || a.Raw != b.Raw {
		t.Fatalf("first %d %s, replay %d %s: want the same 200", a.Status, a.Raw, b.Status, b.Raw)
	}
	if a.Header.Get("Idempotent-Replayed") != "" || b.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("Idempotent-Replayed first %q replay %q", a.Header.Get("Idempotent-Replayed"), b.Header.Get("Idempotent-Replayed"))
	}
	// After the end: the stored outcome, same status and body.
	c := d.other.mustCall(t, "POST", "/sign", testAPIKey, body, idem)
	if c.Status != 200 || c.Raw != a.Raw || c.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay after the end %d %s", c.Status, c.Raw)
	}
	// Another fingerprint: 422 naming the request.
	for _, other := range [][]byte{
		signBody(h.pub, []byte("something else"), map[string]any{"description": "pay"}),
		signBody(h.pub, msg, map[string]any{"description": "pay", "timeout_ms": 1234}),
		signBody(h.pub, msg, map[string]any{"description": "pay", "wait_for_holder": true}),
	} {
		res := d.api.mustCall(t, "POST", "/sign", testAPIKey, other, idem)
		expectStatus(t, res, 422, "idempotency_key_reused")
		if res.str("request_id") != req.str("request_id") {
			t.Fatalf("422 %s does not name %s", res.Raw, req.str("request_id"))
		}
	}
	// The key is the API key's own: another API key with it makes its own request.
	fresh := d.api.callAsync(t, "POST", "/sign", billingKey, body, idem)
	r2 := h.expect(protocol.TypeSignRequest)
	if r2.str("request_id") == req.str("request_id") {
		t.Fatal("another API key's idempotency key joined this key's request")
	}
	h.reject(r2, "no")
	expectStatus(t, recv(t, fresh), 403, "rejected")
	// A rejected outcome replays as the same 403, reason included.
	rej := d.other.mustCall(t, "POST", "/sign", billingKey, body, idem)
	expectStatus(t, rej, 403, "rejected")
	if !strings.Contains(rej.Raw, `"reason":"no"`) {
		t.Fatalf("replayed 403 %s without the reason", rej.Raw)
	}
}

func TestIdempotentReplay(t *testing.T) { testIdempotentReplay(t, oneNode(t, namedKeys)) }

func testIdempotentConcurrentRetries(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	msg := []byte("racing retries")
	body := signBody(h.pub, msg, nil)
	idem := map[string]string{"Idempotency-Key": "race-" + b64(h.pub)[:12]}
	const n = 8
	var wg sync.WaitGroup
	results := make(chan httpResp, n)
	for i := 0; i < n; i++ {
		node := d.api
		if i%2 == 1 {
			node = d.other
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- recv(t, node.callAsync(t, "POST", "/sign", testAPIKey, body, idem))
		}()
	}
	// A call that arrives after the answer replays the stored outcome: in
	// every order there is one request and one answer.
	req := h.expect(protocol.TypeSignRequest)
	h.approve(req)
	wg.Wait()
	close(results)
	sigs := map[string]bool{}
	for res := range results {
		if res.Status != 200 {
			t.Fatalf("retry %d %s", res.Status, res.Raw)
		}
		sigs[res.Raw] = true
	}
	if len(sigs) != 1 {
		t.Fatalf("%d different answers to one idempotency key", len(sigs))
	}
	h.noMore(protocol.TypeSignRequest)
}

func TestIdempotentConcurrentRetries(t *testing.T) {
	testIdempotentConcurrentRetries(t, oneNode(t, nil))
}

func testIdempotencyNothingRecordedOnEarlyFailure(t *testing.T, d deploy) {
	pub, priv := newKey(t)
	msg := []byte("try again")
	body := signBody(pub, msg, nil)
	idem := map[string]string{"Idempotency-Key": "early-" + b64(pub)[:12]}
	expectStatus(t, d.api.mustCall(t, "POST", "/sign", testAPIKey, body, idem), 404, "not_connected")
	expectStatus(t, d.api.mustCall(t, "POST", "/sign", testAPIKey, []byte(`{"public_key":1}`), idem), 400, "invalid_request")
	expectStatus(t, d.api.mustCall(t, "POST", "/sign", "wrong-key-0123456789abcdef", body, idem), 401, "unauthorized")
	// Nothing was recorded: with a holder now, the same key makes a fresh request.
	h := d.hold.connect(t, priv)
	ch := d.api.callAsync(t, "POST", "/sign", testAPIKey, body, idem)
	h.approve(h.expect(protocol.TypeSignRequest))
	res := recv(t, ch)
	if res.Status != 200 || res.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("fresh request %d %s replayed=%q", res.Status, res.Raw, res.Header.Get("Idempotent-Replayed"))
	}
}

func TestIdempotencyNothingRecordedOnEarlyFailure(t *testing.T) {
	testIdempotencyNothingRecordedOnEarlyFailure(t, oneNode(t, nil))
}

func TestIdempotencyKeyValues(t *testing.T) {
	r := startRelay(t, nil)
	h := r.connect(t, nil)
	body := signBody(h.pub, []byte("k"), nil)
	for _, bad := range []string{"", "in side", "tab\there", "é", strings.Repeat("k", 256)} {
		expectStatus(t, r.mustCall(t, "POST", "/sign", testAPIKey, body, map[string]string{"Idempotency-Key": bad}), 400, "invalid_request")
	}
	res := r.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, []byte("k"), nil), map[string]string{"Idempotency-Key": strings.Repeat("~", 255)})
	if res.Status != 202 {
		t.Fatalf("255 visible characters: %d %s", res.Status, res.Raw)
	}
}

// A blocking caller that goes away does not end an idempotent request; a
// retry with the key picks it up. Without a key it ends (requester_gone).
func testIdempotentCallerGone(t *testing.T, d deploy) {
	h := d.hold.connect(t, nil)
	msg := []byte("keep going")
	body := signBody(h.pub, msg, nil)
	idem := map[string]string{"Idempotency-Key": "gone-" + b64(h.pub)[:12]}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := d.api.call(ctx, "POST", "/sign", testAPIKey, body, idem)
		done <- err
	}()
	req := h.expect(protocol.TypeSignRequest)
	cancel()
	if err := recv(t, done); err == nil {
		t.Fatal("the cancelled call got an answer")
	}
	// The request is still pending (no sign_cancel), and the retry gets it.
	checkResource(t, d.other.mustCall(t, "GET", "/sign/"+req.str("request_id"), testAPIKey, nil, nil), "pending", h.pub, msg)
	retry := d.other.callAsync(t, "POST", "/sign", testAPIKey, body, idem)
	checkResource(t, d.other.mustCall(t, "GET", "/sign/"+req.str("request_id"), testAPIKey, nil, nil), "pending", h.pub, msg)
	h.noMore(protocol.TypeSignCancel)
	h.approve(req)
	res := recv(t, retry)
	if res.Status != 200 || res.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry %d %s", res.Status, res.Raw)
	}
}

func TestIdempotentCallerGone(t *testing.T) { testIdempotentCallerGone(t, oneNode(t, nil)) }

// --- §C: wait_for_holder -----------------------------------------------------

func testWaitForHolder(t *testing.T, d deploy) {
	pub, priv := newKey(t)
	msg := []byte("when you are back")
	res := d.api.mustCall(t, "POST", "/sign", billingKey, asyncBody(pub, msg, map[string]any{"wait_for_holder": true}), nil)
	if res.Status != 202 {
		t.Fatalf("async wait_for_holder %d %s", res.Status, res.Raw)
	}
	blocking := d.api.callAsync(t, "POST", "/sign", billingKey, signBody(pub, []byte("blocking too"), map[string]any{"wait_for_holder": true}), nil)
	// The blocking call is pending before the holder arrives: its own
	// request_id is not known here, so wait until the relay counts two
	// requests by reading the async one (made first) and then connecting.
	checkResource(t, d.other.mustCall(t, "GET", "/sign/"+res.str("request_id"), billingKey, nil, nil), "pending", pub, msg)
	h := d.hold.connect(t, priv)
	got := map[string]frame{}
	for len(got) < 2 {
		f := h.expect(protocol.TypeSignRequest)
		if f.str("requester") != "billing" {
			t.Fatalf("redelivered request %v without its requester", f)
		}
		got[f.str("request_id")] = f
	}
	a, ok := got[res.str("request_id")]
	if !ok || a.str("expires_at") != res.str("expires_at") {
		t.Fatalf("async request not redelivered as made: %v", got)
	}
	for _, f := range got {
		h.approve(f)
	}
	if b := recv(t, blocking); b.Status != 200 {
		t.Fatalf("blocking wait_for_holder %d %s", b.Status, b.Raw)
	}
	checkResource(t, d.other.mustCall(t, "GET", "/sign/"+res.str("request_id")+"?wait_ms=10000", billingKey, nil, nil), "signed", pub, msg)
}

func TestWaitForHolder(t *testing.T) { testWaitForHolder(t, oneNode(t, namedKeys)) }

// A request that waits for a holder ends at its deadline like any other.
func TestWaitForHolderTimeout(t *testing.T) {
	r := startRelay(t, nil)
	pub, _ := newKey(t)
	res := r.mustCall(t, "POST", "/sign", testAPIKey, signBody(pub, []byte("nobody"), map[string]any{"wait_for_holder": true, "timeout_ms": 200}), nil)
	expectStatus(t, res, 504, "timeout")
}

// Shutdown ends pending resources as unavailable, readable until the end.
func TestAsyncShutdownIsUnavailable(t *testing.T) {
	r := startRelay(t, nil)
	h := r.connect(t, nil)
	res := r.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, []byte("bye"), nil), nil)
	id := res.str("request_id")
	h.expect(protocol.TypeSignRequest)
	poll := r.callAsync(t, "GET", "/sign/"+id+"?wait_ms=60000", testAPIKey, nil, nil)
	go r.shutdown()
	h.expectCancel(id, protocol.CancelShutdown)
	got := recv(t, poll)
	if got.Status == 200 {
		checkResource(t, got, "unavailable", h.pub, []byte("bye"))
	} else if got.Status != 0 {
		t.Fatalf("long poll during shutdown %d %s", got.Status, got.Raw)
	}
}
