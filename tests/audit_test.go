package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
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

// The ten-line check docs/audit.md gives, run as the document shows it:
// an intact chain passes, a changed byte fails, an empty log is intact.
func TestAuditDocCheck(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 is needed for docs/audit.md's check (.ci/run installs it)")
		}
		t.Skip("no python3")
	}
	doc, err := os.ReadFile("../docs/audit.md")
	if err != nil {
		t.Fatal(err)
	}
	_, code, ok := strings.Cut(string(doc), "```python\n")
	code, _, ok2 := strings.Cut(code, "```")
	if !ok || !ok2 {
		t.Fatal("docs/audit.md has no python block")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "check.py")
	if err := os.WriteFile(script, []byte(code), 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(path string) (string, bool) {
		out, err := exec.Command(python, script, path).CombinedOutput()
		return strings.TrimSpace(string(out)), err == nil
	}

	path := filepath.Join(dir, "audit.log")
	l, err := audit.Open(path, audit.Sync("never"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := l.Append(audit.Entry{RequestID: fmt.Sprint(i), Code: "ok", Status: 200, MessageSHA256: audit.MessageDigest([]byte{byte(i)})}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if out, ok := check(path); !ok || out != "3 lines, chain intact" {
		t.Fatalf("intact chain: %q ok=%v", out, ok)
	}
	raw, _ := os.ReadFile(path)
	i := strings.Index(string(raw), `"request_id":"1"`) + len(`"request_id":"`)
	raw[i] = '7'
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, ok := check(path); ok || out != "chain broken at line 3" {
		t.Fatalf("changed byte in line 2: %q ok=%v", out, ok)
	}
	empty := filepath.Join(dir, "empty.log")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, ok := check(empty); !ok || out != "0 lines, chain intact" {
		t.Fatalf("empty log: %q ok=%v", out, ok)
	}
}
