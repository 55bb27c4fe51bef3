package clusterproc

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"
)

// call makes method path on r with the test API key and decodes the JSON.
func (r *relay) call(t *testing.T, method, path string, body []byte, hdr map[string]string) (int, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, r.base+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := r.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s on %s: %v", method, path, r.name, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s on %s: %d %q", method, path, r.name, res.StatusCode, raw)
	}
	return res.StatusCode, out
}

// signLater makes an asynchronous request on r for h's key ("wait":
// false, 60 s), with the Idempotency-Key idemKey unless that is "", and
// returns its request_id and expires_at from the 202.
func (r *relay) signLater(t *testing.T, h *holder, what, idemKey string) (id, expires string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"public_key": b64(h.pub), "message": b64(randomMessage(what)), "wait": false, "timeout_ms": 60000})
	hdr := map[string]string{}
	if idemKey != "" {
		hdr["Idempotency-Key"] = idemKey
	}
	status, res := r.call(t, "POST", "/sign", body, hdr)
	if status != http.StatusAccepted {
		t.Fatalf("async POST /sign on %s: %d %v", r.name, status, res)
	}
	id, _ = res["request_id"].(string)
	expires, _ = res["expires_at"].(string)
	if id == "" || expires == "" {
		t.Fatalf("async POST /sign on %s: 202 %v without request_id or expires_at", r.name, res)
	}
	return id, expires
}

// takeoverLimit is §A.7's bound: the asynchronous requests of a node that
// dies are taken over by another node within 10 s.
const takeoverLimit = 10 * time.Second

// awaitTakenOver connects priv's key on node, again each time a second
// passes without a frame, until a connection is handed request id (which
// happens once a node has taken the request over: a connection introduced
// while it is pending receives it, §A.3). It fails unless that happens
// within takeoverLimit of killed, and returns the sign_request, the
// connection that got it (the others are closed) and the time since
// killed.
func awaitTakenOver(t *testing.T, node *relay, priv ed25519.PrivateKey, id string, killed time.Time) (frame, *holder, time.Duration) {
	t.Helper()
	deadline := killed.Add(takeoverLimit)
	for time.Now().Before(deadline) {
		h := node.connect(t, priv)
		for {
			f, err := h.next(min(time.Second, time.Until(deadline)))
			if err != nil {
				break
			}
			if f.str("type") == "sign_request" && f.str("request_id") == id {
				took := time.Since(killed)
				if took > takeoverLimit {
					t.Fatalf("request %s was handed to a connection on %s %v after the SIGKILL of its node, over the %v of §A.7", id, node.name, took.Round(time.Millisecond), takeoverLimit)
				}
				return f, h, took
			}
		}
		h.conn.Close()
	}
	t.Fatalf("no node took request %s over within %v of the SIGKILL of its node (§A.7)", id, takeoverLimit)
	return nil, nil, 0
}

// §A.7: the node that runs two asynchronous requests dies with SIGKILL
// while their key holder, on another node, has them on screen. The holder
// answers the first at once, while nobody owns it: its node keeps the
// answer and gives it to the node that takes the request over. The second
// is taken over within 10 s (a connection of the key on a third node is
// handed it, same request_id and expires_at) and answered there. Both
// outcomes are readable on every remaining node; the holder never hears
// requester_gone. The requests are made with an Idempotency-Key.
func TestOwnerKilledAsyncRequestsTakenOver(t *testing.T) { ownerKilledTakeover(t, true) }

// The same without an Idempotency-Key: "wait": false alone makes a request
// a resource (§C), and §A.7 holds for it as for an idempotent one.
func TestOwnerKilledAsyncRequestsWithoutIdempotencyKeyTakenOver(t *testing.T) {
	ownerKilledTakeover(t, false)
}

func ownerKilledTakeover(t *testing.T, withIdempotencyKey bool) {
	nats := startNATS(t)
	n := startNodes(t, nats, 3)
	a, b, c := n[0], n[1], n[2]
	h := b.connect(t, nil)
	roundTrip(t, a, h, "warm-up from node1")
	key := func(k string) string {
		if withIdempotencyKey {
			return k
		}
		return ""
	}

	id1, _ := a.signLater(t, h, "takeover one", key("takeover-one-"+h.name))
	r1 := h.expect("sign_request", step)
	id2, exp2 := a.signLater(t, h, "takeover two", key("takeover-two-"+h.name))
	r2 := h.expect("sign_request", step)
	if r1.str("request_id") != id1 || r2.str("request_id") != id2 {
		t.Fatalf("holder got %v and %v, want %s and %s", r1, r2, id1, id2)
	}
	if r2.str("expires_at") != exp2 {
		t.Fatalf("holder was shown expires_at %s, the 202 said %s", r2.str("expires_at"), exp2)
	}

	killed := time.Now()
	a.sigkill()
	h.approve(r1) // while the request has no living owner

	// A connection of the key on node3 is handed request two once a node
	// has taken it over, and answers it.
	r2again, h2, took := awaitTakenOver(t, c, h.priv, id2, killed)
	t.Logf("request two was handed to a new connection %v after SIGKILL of its node", took.Round(time.Millisecond))
	if r2again.str("expires_at") != exp2 {
		t.Fatalf("taken over with expires_at %s, want %s", r2again.str("expires_at"), exp2)
	}
	if r2again.str("message") != r2.str("message") {
		t.Fatalf("taken over with message %s, want %s", r2again.str("message"), r2.str("message"))
	}
	h2.approve(r2again)

	for _, node := range []*relay{b, c} {
		for _, id := range []string{id1, id2} {
			status, res := node.call(t, "GET", "/sign/"+id+"?wait_ms=15000", nil, nil)
			if status != http.StatusOK || res["status"] != "signed" || res["request_id"] != id {
				t.Fatalf("GET %s on %s: %d %v, want signed", id, node.name, status, res)
			}
		}
	}
	for {
		f, err := h.next(500 * time.Millisecond)
		if err != nil {
			break
		}
		if f.str("type") == "sign_cancel" && f.str("reason") == "requester_gone" {
			t.Fatalf("holder on node2 heard requester_gone for a taken-over request: %v", f)
		}
	}
}

// §A.7 with a node that comes back at once under the same cluster.node_id
// (a supervisor restarting it): the requests of the process that died are
// still taken over within 10 s of its death, and a DELETE through the new
// process cancels one (its holder hears "cancelled"), instead of being
// sent to a process that no longer runs it.
func TestOwnerRestartedUnderSameNameRequestsTakenOver(t *testing.T) {
	nats := startNATS(t)
	n := startNodes(t, nats, 3)
	a, b, c := n[0], n[1], n[2]
	h := b.connect(t, nil)
	roundTrip(t, a, h, "warm-up from node1")
	id, exp := a.signLater(t, h, "restart", "restart-"+h.name)
	r := h.expect("sign_request", step)
	if r.str("request_id") != id {
		t.Fatalf("holder got %v, want %s", r, id)
	}
	killed := time.Now()
	a.sigkill()
	a2 := startRelay(t, "node1", func(listen string) map[string]any { return relayConfig(listen, "node1", nats) })
	t.Logf("node1 was ready again %v after its SIGKILL", time.Since(killed).Round(time.Millisecond))

	again, h2, took := awaitTakenOver(t, c, h.priv, id, killed)
	h2.conn.Close()
	t.Logf("the request was handed to a new connection %v after SIGKILL of its node", took.Round(time.Millisecond))
	if again.str("expires_at") != exp {
		t.Fatalf("taken over with expires_at %s, want %s", again.str("expires_at"), exp)
	}
	status, res := a2.call(t, "DELETE", "/sign/"+id, nil, nil)
	if status != http.StatusOK || res["status"] != "cancelled" {
		t.Fatalf("DELETE through the restarted node: %d %v", status, res)
	}
	h.expectCancel(id, "cancelled", 10*time.Second)
}
