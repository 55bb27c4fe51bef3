package deploy

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The built binary's audit command checks a chain: exit 0 with the line
// count when intact, 1 naming the line where a tampered log breaks.
func TestAuditVerifyCommand(t *testing.T) {
	dir := t.TempDir()
	ports := freePorts(t, 1)
	logPath := filepath.Join(dir, "audit.log")
	cfg := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("listen: %s\napi_keys: [deploy-api-key-0123456789]\naudit: {path: %q}\nlog_format: json\n", loopback(ports[0]), logPath)), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, "audited", cfg, loopback(ports[0]), "", true)
	// An async request for a key nobody holds, ended at its deadline: one line.
	pub, _, _ := ed25519.GenerateKey(nil)
	body := []byte(`{"public_key":"` + b64(pub) + `","message":"aGk=","wait":false,"wait_for_holder":true,"timeout_ms":50}`)
	req, _ := http.NewRequest("POST", r.base+"/sign", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer deploy-api-key-0123456789")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /sign: %d", res.StatusCode)
	}
	if !r.stop(syscall.SIGTERM, 30*time.Second) {
		t.Fatal("relay did not stop")
	}
	// log_format json: every line of the relay's log is one JSON object.
	for _, line := range strings.Split(strings.TrimSpace(r.out.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil || m["msg"] == nil {
			t.Fatalf("log line is not a JSON object: %q", line)
		}
	}
	out, err := exec.Command(relayBin, "audit", "verify", logPath).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "1 lines, chain intact") {
		t.Fatalf("audit verify: %v %s (status %d)", err, out, res.StatusCode)
	}
	raw, _ := os.ReadFile(logPath)
	tampered := filepath.Join(dir, "tampered.log")
	_ = os.WriteFile(tampered, append(bytes.Replace(raw, []byte(`"seq":1`), []byte(`"seq":1 `), 1), raw...), 0o600)
	cmd := exec.Command(relayBin, "audit", "verify", tampered)
	out, err = cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "line 2") {
		t.Fatalf("audit verify of a tampered log: exit %d %s (%v)", code, out, err)
	}
}
