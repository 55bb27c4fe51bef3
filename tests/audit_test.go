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

// §F: one chained line per ended request, with what the blocking call got,
// the message's hash and never the message; the chain goes on after a
// restart.
func TestAuditLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	withAudit := func(c *config.Config) {
		namedKeys(c)
		c.Audit.Path = path
	}
	r := startRelay(t, withAudit)
	h := r.connect(t, nil)
	msg := []byte("audited secret message")
	ch := r.callAsync(t, "POST", "/sign", billingKey, signBody(h.pub, msg, map[string]any{"description": "pay"}), nil)
	h.approve(h.expect(protocol.TypeSignRequest))
	if res := recv(t, ch); res.Status != 200 {
		t.Fatalf("sign %d %s", res.Status, res.Raw)
	}
	ch = r.callAsync(t, "POST", "/sign", testAPIKey, signBody(h.pub, []byte("no"), nil), nil)
	h.reject(h.expect(protocol.TypeSignRequest), "no")
	expectStatus(t, recv(t, ch), 403, "rejected")
	res := r.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, []byte("late"), map[string]any{"timeout_ms": 100}), nil)
	h.expect(protocol.TypeSignRequest)
	h.expectCancel(res.str("request_id"), protocol.CancelTimeout)
	r.shutdown()

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), b64(msg)) || strings.Contains(string(raw), string(msg)) {
		t.Fatal("the audit log carries the message")
	}
	ls := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
	want := []struct {
		code, requester string
		status          int
	}{{"ok", "billing", 200}, {"rejected", "", 403}, {"timeout", "", 504}}
	if len(ls) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(ls), len(want), raw)
	}
	for i, w := range want {
		var e audit.Entry
		if err := json.Unmarshal([]byte(ls[i]), &e); err != nil {
			t.Fatal(err)
		}
		if e.Code != w.code || e.Status != w.status || e.Requester != w.requester || e.PublicKey != b64(h.pub) || e.Seq != uint64(i+1) {
			t.Fatalf("line %d: %+v, want %+v", i+1, e, w)
		}
		if _, err := time.Parse(time.RFC3339Nano, e.Time); err != nil {
			t.Fatalf("line %d: time %q", i+1, e.Time)
		}
	}
	var first audit.Entry
	_ = json.Unmarshal([]byte(ls[0]), &first)
	if first.MessageSHA256 != audit.MessageDigest(msg) || first.Description != "pay" {
		t.Fatalf("first line %+v", first)
	}

	// A restart continues the chain.
	r2 := startRelay(t, withAudit)
	h2 := r2.connect(t, nil)
	ch = r2.callAsync(t, "POST", "/sign", testAPIKey, signBody(h2.pub, []byte("after restart"), nil), nil)
	h2.approve(h2.expect(protocol.TypeSignRequest))
	if res := recv(t, ch); res.Status != 200 {
		t.Fatalf("sign after restart %d", res.Status)
	}
	r2.shutdown()
	f, _ := os.Open(path)
	defer f.Close()
	if n, err := audit.Verify(f); err != nil || n != 4 {
		t.Fatalf("Verify: %d lines, %v; want 4 intact", n, err)
	}
}

// A signature whose line cannot be written is withheld: 503.
func TestAuditFailsClosed(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	r := startRelay(t, func(c *config.Config) { c.Audit.Path = "/dev/full"; c.Audit.Fsync = "never" })
	h := r.connect(t, nil)
	ch := r.callAsync(t, "POST", "/sign", testAPIKey, signBody(h.pub, []byte("unrecorded"), nil), nil)
	h.approve(h.expect(protocol.TypeSignRequest))
	res := recv(t, ch)
	expectStatus(t, res, 503, "unavailable")
	if strings.Contains(res.Raw, "signature\":") {
		t.Fatalf("a signature left without its audit line: %s", res.Raw)
	}
	async := r.mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, []byte("unrecorded too"), nil), nil)
	h.approve(h.expect(protocol.TypeSignRequest))
	got := r.mustCall(t, "GET", "/sign/"+async.str("request_id")+"?wait_ms=10000", testAPIKey, nil, nil)
	if got.str("status") != "unavailable" || got.str("signature") != "" {
		t.Fatalf("resource %s, want unavailable without a signature", got.Raw)
	}
}
