package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signrelay/signrelay/audit"
	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// §F on a cluster: each node keeps its own audit log, and a request's line
// is written by the node that decides its end: the owner for a cross-node
// round trip (the holder's node writes nothing), the adopter for a request
// taken over from a node that shut down.
func TestClusterAuditLogs(t *testing.T) {
	dir := t.TempDir()
	logOf := func(id string) string { return filepath.Join(dir, id+".log") }
	n := startCluster(t, 3, func(c *config.Config) { c.Audit.Path = logOf(c.Cluster.NodeID) })
	waitStores(t, n)
	h := n[1].connect(t, nil)

	msg := []byte("decided on node 0")
	res := n[0].signAsync(signBody(h.pub, msg, nil))
	req := h.expect(protocol.TypeSignRequest)
	h.approve(req)
	verifyResult(t, awaitResp(t, res), h.pub, msg)
	crossID := req.str("request_id")

	async := n[0].mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, []byte("decided on node 1"), nil), nil)
	areq := h.expect(protocol.TypeSignRequest)
	n[0].shutdown()
	// The holder keeps the request; its answer is taken by the node that
	// adopts the request (node 1 or node 2).
	h.approve(areq)
	id := async.str("request_id")
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := n[1].mustCall(t, "GET", "/sign/"+id+"?wait_ms=1000", testAPIKey, nil, nil)
		if got.str("status") == "signed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the request left by node 0 is %s on node 1", got.Raw)
		}
	}
	n[1].shutdown()
	n[2].shutdown()

	lines := func(node string) map[string]audit.Entry {
		t.Helper()
		f, err := os.Open(logOf(node))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := audit.Verify(f); err != nil {
			t.Fatalf("%s's chain: %v", node, err)
		}
		raw, _ := os.ReadFile(logOf(node))
		out := map[string]audit.Entry{}
		for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			if l == "" {
				continue
			}
			var e audit.Entry
			if err := json.Unmarshal([]byte(l), &e); err != nil {
				t.Fatal(err)
			}
			out[e.RequestID] = e
		}
		return out
	}
	owner, one, two := lines("node0"), lines("node1"), lines("node2")
	if e, ok := owner[crossID]; !ok || e.Code != "ok" || e.Status != 200 {
		t.Fatalf("node 0's line for its cross-node request: %+v (present %v)", e, ok)
	}
	if _, ok := one[crossID]; ok {
		t.Fatal("the holder's node wrote a line for a request it did not decide")
	}
	if _, ok := owner[id]; ok {
		t.Fatal("node 0 wrote a line for a request it left to another node")
	}
	e1, ok1 := one[id]
	e2, ok2 := two[id]
	if ok1 == ok2 {
		t.Fatalf("the request taken over has a line on node 1: %v, node 2: %v; want exactly one", ok1, ok2)
	}
	if e := map[bool]audit.Entry{true: e1, false: e2}[ok1]; e.Code != "ok" || e.Status != 200 {
		t.Fatalf("the adopter's line: %+v", e)
	}
}
