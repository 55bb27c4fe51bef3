package clusterproc

import (
	"bytes"
	"context"
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

func (r *relay) signLater(t *testing.T, h *holder, what string) (id, expires string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"public_key": b64(h.pub), "message": b64(randomMessage(what)), "wait": false, "timeout_ms": 60000})
	status, res := r.call(t, "POST", "/sign", body, map[string]string{"Idempotency-Key": what})
	if status != http.StatusAccepted {
		t.Fatalf("async POST /sign on %s: %d %v", r.name, status, res)
	}
	id, _ = res["request_id"].(string)
	expires, _ = res["expires_at"].(string)
	return id, expires
}

// §A.7: the node that runs two asynchronous requests dies with SIGKILL
// while their key holder, on another node, has them on screen. The holder
// answers the first at once, while nobody owns it: its node keeps the
// answer and gives it to the node that takes the request over. The second
// is taken over within 10 s (a connection of the key on a third node is
// handed it, same request_id and expires_at) and answered there. Both
// outcomes are readable on every remaining node; the holder never hears
// requester_gone.
func TestOwnerKilledAsyncRequestsTakenOver(t *testing.T) {
	nats := startNATS(t)
	n := startNodes(t, nats, 3)
	a, b, c := n[0], n[1], n[2]
	h := b.connect(t, nil)
	roundTrip(t, a, h, "warm-up from node1")

	id1, _ := a.signLater(t, h, "takeover-one-"+h.name)
	r1 := h.expect("sign_request", step)
	id2, exp2 := a.signLater(t, h, "takeover-two-"+h.name)
	r2 := h.expect("sign_request", step)
	if r1.str("request_id") != id1 || r2.str("request_id") != id2 {
		t.Fatalf("holder got %v and %v, want %s and %s", r1, r2, id1, id2)
	}

	killed := time.Now()
	a.sigkill()
	h.approve(r1) // while the request has no living owner

	// A connection of the key on node3 is handed request two once a node
	// has taken it over.
	var r2again frame
	for r2again == nil {
		if time.Since(killed) > 12*time.Second {
			t.Fatal("no node took request two over within 12 s of the SIGKILL")
		}
		h2 := c.connect(t, h.priv)
		for {
			f, err := h2.next(time.Second)
			if err != nil {
				break
			}
			if f.str("type") == "sign_request" && f.str("request_id") == id2 {
				r2again = f
				h2.approve(f)
				break
			}
		}
		if r2again == nil {
			h2.conn.Close()
		}
	}
	t.Logf("request two was handed to a new connection %v after SIGKILL of its node", time.Since(killed).Round(time.Millisecond))
	if r2again.str("expires_at") != exp2 {
		t.Fatalf("taken over with expires_at %s, want %s", r2again.str("expires_at"), exp2)
	}

	for _, node := range []*relay{b, c} {
		for _, id := range []string{id1, id2} {
			status, res := node.call(t, "GET", "/sign/"+id+"?wait_ms=15000", nil, nil)
			if status != http.StatusOK || res["status"] != "signed" {
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
// still taken over, and a DELETE through the new process cancels one
// (its holder hears "cancelled"), instead of being sent to a process that
// no longer runs it.
func TestOwnerRestartedUnderSameNameRequestsTakenOver(t *testing.T) {
	nats := startNATS(t)
	n := startNodes(t, nats, 3)
	a, b, c := n[0], n[1], n[2]
	h := b.connect(t, nil)
	roundTrip(t, a, h, "warm-up from node1")
	id, exp := a.signLater(t, h, "restart-"+h.name)
	r := h.expect("sign_request", step)
	if r.str("request_id") != id {
		t.Fatalf("holder got %v, want %s", r, id)
	}
	a.sigkill()
	a2 := startRelay(t, "node1", func(listen string) map[string]any { return relayConfig(listen, "node1", nats) })

	var again frame
	deadline := time.Now().Add(12 * time.Second)
	for again == nil {
		if time.Now().After(deadline) {
			t.Fatal("the request of the killed process was not taken over within 12 s")
		}
		h2 := c.connect(t, h.priv)
		for {
			f, err := h2.next(time.Second)
			if err != nil {
				break
			}
			if f.str("type") == "sign_request" && f.str("request_id") == id {
				again = f
				break
			}
		}
		h2.conn.Close()
	}
	if again.str("expires_at") != exp {
		t.Fatalf("taken over with expires_at %s, want %s", again.str("expires_at"), exp)
	}
	status, res := a2.call(t, "DELETE", "/sign/"+id, nil, nil)
	if status != http.StatusOK || res["status"] != "cancelled" {
		t.Fatalf("DELETE through the restarted node: %d %v", status, res)
	}
	h.expectCancel(id, "cancelled", 10*time.Second)
}
