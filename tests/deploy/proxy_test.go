package deploy

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// Three relays from deploy/node.yaml (rendered by deploy/render.sh, as
// compose does, with loopback ports) joined by their embedded NATS, and
// nginx from deploy/nginx.conf.template in front: the page and the
// WebSocket through nginx, the origin check, sign round trips whose
// POST /sign and key holders both go through nginx (to whichever relays
// nginx picks), and the healthcheck subcommand on a running and a stopped
// relay. The relays write nothing but their store_dir.
func TestClusterBehindNginx(t *testing.T) {
	requireNginx(t)
	ports := freePorts(t, 10)
	httpP, natsP, routeP, nginxAddr := ports[0:3], ports[3:6], ports[6:9], loopback(ports[9])
	dir := t.TempDir()
	relays := make([]*relay, 3)
	var upstreams [3]string
	for i := range relays {
		name := "node" + strconv.Itoa(i+1)
		fields := loopbackFields(dir, httpP[i], natsP[i], routeP[i], routeP, nginxAddr)
		path := renderNodes(t, fields, dir, name)[name]
		cfg := loadConfig(t, path)
		if cfg.Cluster.NodeID != name || len(cfg.Cluster.Embedded.Routes) != 3 {
			t.Fatalf("%s: rendered node_id %q, routes %q", name, cfg.Cluster.NodeID, cfg.Cluster.Embedded.Routes)
		}
		upstreams[i] = cfg.Listen
		relays[i] = startRelay(t, name, path, cfg.Listen, cfg.Cluster.Embedded.StoreDir, false)
	}
	for _, r := range relays {
		if err := awaitStatus(r.base+"/readyz", http.StatusOK, 30*time.Second, r.proc); err != nil {
			t.Fatalf("%s: %v\n%s", r.name, err, tail(r.out.String(), 4000))
		}
	}
	ng := startNginx(t, nginxAddr, upstreams, nil)

	// The page, through nginx.
	res, err := httpFrom("").Get(ng.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET / through nginx: %s %q", res.Status, res.Header.Get("Content-Type"))
	}

	// allowed_origins: the page's own origin may connect, another may not.
	wsURL := "ws://" + nginxAddr + "/ws"
	if _, res, err := dialer("").Dial(wsURL, http.Header{"Origin": {"http://evil.example"}}); err == nil || res == nil || res.StatusCode != http.StatusForbidden {
		t.Fatalf("a WebSocket from another origin through nginx: %v (%s), want 403", err, describe(res))
	}

	// Key holders through nginx; least_conn spreads them over the relays.
	// Each POST /sign through nginx may land on another relay than its
	// holder: the cluster carries it. Routes between the embedded servers
	// form in their own time after /readyz, so a first 404 is retried.
	for i := 0; i < 4; i++ {
		h := connect(t, wsURL, "", http.Header{"Origin": {"http://" + nginxAddr}})
		msg := randomMessage("through nginx " + strconv.Itoa(i))
		deadline := time.Now().Add(20 * time.Second)
		for {
			done := make(chan signResult, 1)
			go func() { done <- sign(ng.base, "", h.pub, msg) }()
			var got signResult
			select {
			case f := <-h.frames:
				if f.str("type") != "sign_request" || f.str("message") != b64(msg) {
					t.Fatalf("holder %d got %v, want the request", i, f)
				}
				h.approve(f)
				got = <-done
			case got = <-done:
				if got.status == http.StatusNotFound && got.code == "not_connected" && time.Now().Before(deadline) {
					pause(50 * time.Millisecond)
					continue
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("holder %d: neither a request nor an answer within 30s", i)
			}
			if got.err != nil || got.status != http.StatusOK {
				t.Fatalf("POST /sign through nginx for holder %d: %d %s %v", i, got.status, got.body, got.err)
			}
			sig, _ := base64.StdEncoding.DecodeString(got.signature)
			if !ed25519.Verify(h.pub, msg, sig) {
				t.Fatalf("holder %d: the signature through nginx does not verify", i)
			}
			break
		}
	}

	// signrelay healthcheck, on node1's own configuration file.
	code, out := healthcheck(t, relays[0].cfg)
	if code != 0 || out != "healthy: GET "+relays[0].base+"/readyz: 200" {
		t.Fatalf("healthcheck of a running relay: exit %d, %q", code, out)
	}
	if !relays[0].stop(syscall.SIGTERM, 30*time.Second) {
		t.Fatal("node1 did not stop within 30s of SIGTERM")
	}
	code, out = healthcheck(t, relays[0].cfg)
	if code != 1 || !strings.HasPrefix(out, "unhealthy: GET "+relays[0].base+"/readyz: ") {
		t.Fatalf("healthcheck of a stopped relay: exit %d, %q", code, out)
	}
	// nginx goes on with the other two.
	if err := awaitStatus(ng.base+"/readyz", http.StatusOK, 10*time.Second, ng.proc); err != nil {
		t.Fatalf("through nginx with node1 stopped: %v", err)
	}

	// Read-only root file system: nothing was written to the working
	// directory or TMPDIR, JetStream wrote to store_dir.
	for _, r := range relays[:1] {
		if ents, _ := os.ReadDir(r.tmp); len(ents) > 0 {
			t.Errorf("%s wrote %v to its working directory / TMPDIR; only store_dir may be written", r.name, ents)
		}
		if ents, err := os.ReadDir(r.store); err != nil || len(ents) == 0 {
			t.Errorf("%s: nothing in store_dir %s (%v)", r.name, r.store, err)
		}
	}
}

// healthcheck runs `signrelay healthcheck -config path`: its exit code and
// its one line of output.
func healthcheck(t *testing.T, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, relayBin, "healthcheck", "-config", path)
	cmd.Env = relayEnv()
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("healthcheck: %v", err)
		}
		code = ee.ExitCode()
	}
	line := strings.TrimSuffix(string(out), "\n")
	if strings.Contains(line, "\n") {
		t.Fatalf("healthcheck printed more than one line: %q", out)
	}
	return code, line
}

// Rate limits behind nginx count the client nginx names, and a client's
// own X-Forwarded-For header changes nothing. The relay's configuration is
// deploy/node.yaml as rendered for one node, without the cluster (rate
// limits are per node) and with connections_per_ip tightened to a burst of
// 3 and no refill to speak of. Both ways nginx can set the header are
// tried: the template's ($remote_addr, which replaces what the client
// sent) and $proxy_add_x_forwarded_for (which appends the client's address
// to it); with trusted_proxies naming nginx alone, the relay reads the
// header from the right, so the entry nginx appended is the client either
// way.
func TestRateLimitsBehindNginx(t *testing.T) {
	for _, variant := range []string{"$remote_addr", "$proxy_add_x_forwarded_for"} {
		t.Run(strings.TrimPrefix(variant, "$"), func(t *testing.T) {
			requireNginx(t)
			ports := freePorts(t, 4)
			nginxAddr := loopback(ports[3])
			dir := t.TempDir()
			path := renderNodes(t, loopbackFields(dir, ports[0], ports[1], ports[2], nil, nginxAddr), dir, "solo")["solo"]
			tighten(t, path)
			cfg := loadConfig(t, path)
			if cfg.RateLimits.ConnectionsPerIP.Burst != 3 || len(cfg.TrustedProxies) != 1 {
				t.Fatalf("connections_per_ip %+v, trusted_proxies %q", cfg.RateLimits.ConnectionsPerIP, cfg.TrustedProxies)
			}
			r := startRelay(t, "relay", path, cfg.Listen, "", true)
			edit := func(s string) string {
				const line = "proxy_set_header X-Forwarded-For $remote_addr;"
				if !strings.Contains(s, line) {
					t.Fatalf("the template no longer has %q", line)
				}
				return strings.ReplaceAll(s, line, "proxy_set_header X-Forwarded-For "+variant+";")
			}
			ng := startNginx(t, nginxAddr, [3]string{r.addr, r.addr, r.addr}, edit)
			wsURL := "ws://" + nginxAddr + "/ws"

			// upgrade opens GET /ws from src, with xff as the client's own
			// X-Forwarded-For, and returns the status (101 or the refusal).
			upgrade := func(url, src, xff string) int {
				t.Helper()
				h := http.Header{}
				if xff != "" {
					h.Set("X-Forwarded-For", xff)
				}
				ws, res, err := dialer(src).Dial(url, h)
				if err == nil {
					ws.Close()
					return http.StatusSwitchingProtocols
				}
				if res == nil {
					t.Fatalf("GET /ws from %s: %v", src, err)
				}
				return res.StatusCode
			}
			expect := func(what string, got, want int) {
				t.Helper()
				if got != want {
					t.Fatalf("%s: %d, want %d", what, got, want)
				}
			}

			for i := 1; i <= 3; i++ {
				expect("127.0.0.2, connection "+strconv.Itoa(i)+" of its burst", upgrade(wsURL, "127.0.0.2", ""), 101)
			}
			expect("127.0.0.2 past its burst", upgrade(wsURL, "127.0.0.2", ""), http.StatusTooManyRequests)
			expect("127.0.0.3, its own bucket", upgrade(wsURL, "127.0.0.3", ""), 101)
			// A spoofed header does not buy 127.0.0.2 a fresh bucket...
			for _, spoof := range []string{"198.51.100.7", "127.0.0.1", "198.51.100.7, 203.0.113.9"} {
				expect("127.0.0.2 claiming to be "+spoof, upgrade(wsURL, "127.0.0.2", spoof), http.StatusTooManyRequests)
			}
			// ...nor charges another client's bucket: 127.0.0.4 naming
			// the exhausted 127.0.0.2, nginx and others is counted as itself.
			for _, spoof := range []string{"127.0.0.2", "127.0.0.1", "127.0.0.3"} {
				expect("127.0.0.4 claiming to be "+spoof, upgrade(wsURL, "127.0.0.4", spoof), 101)
			}
			expect("127.0.0.4 past its burst", upgrade(wsURL, "127.0.0.4", "10.0.0.1"), http.StatusTooManyRequests)

			// Straight to the relay, not through nginx, the header is not
			// read at all: 127.0.0.5 is not a trusted proxy.
			direct := "ws://" + r.addr + "/ws"
			for i := 1; i <= 3; i++ {
				expect("127.0.0.5 direct, claiming 127.0.0.6", upgrade(direct, "127.0.0.5", "127.0.0.6"), 101)
			}
			expect("127.0.0.5 direct past its burst", upgrade(direct, "127.0.0.5", "127.0.0.6"), http.StatusTooManyRequests)

			if ents, _ := os.ReadDir(r.tmp); len(ents) > 0 {
				t.Errorf("one node without a cluster wrote %v to its working directory / TMPDIR", ents)
			}

			// POST /sign goes through nginx too (no holder: 404 at once).
			_, key, _ := ed25519.GenerateKey(nil)
			if got := sign(ng.base, "127.0.0.3", key.Public().(ed25519.PublicKey), []byte("nobody holds this")); got.status != http.StatusNotFound || got.code != "not_connected" {
				t.Fatalf("POST /sign through nginx: %d %s %v", got.status, got.body, got.err)
			}

			// POST /sign's limit is by client address too: wrong API keys
			// from 127.0.0.6 use up its burst of 2, spoofing does not
			// reset it, and 127.0.0.7 naming 127.0.0.6 is counted as itself.
			badKey := func(src, xff string) int {
				t.Helper()
				req, _ := http.NewRequest(http.MethodPost, ng.base+"/sign", strings.NewReader(`{}`))
				req.Header.Set("Authorization", "Bearer not-the-key-0123456789")
				if xff != "" {
					req.Header.Set("X-Forwarded-For", xff)
				}
				res, err := httpFrom(src).Do(req)
				if err != nil {
					t.Fatalf("POST /sign from %s: %v", src, err)
				}
				res.Body.Close()
				return res.StatusCode
			}
			expect("127.0.0.6, wrong key 1", badKey("127.0.0.6", ""), http.StatusUnauthorized)
			expect("127.0.0.6, wrong key 2", badKey("127.0.0.6", ""), http.StatusUnauthorized)
			expect("127.0.0.6 past its burst", badKey("127.0.0.6", ""), http.StatusTooManyRequests)
			expect("127.0.0.6 claiming to be 198.51.100.7", badKey("127.0.0.6", "198.51.100.7"), http.StatusTooManyRequests)
			expect("127.0.0.7 claiming to be 127.0.0.6", badKey("127.0.0.7", "127.0.0.6"), http.StatusUnauthorized)
		})
	}
}

// tighten rewrites the rendered configuration at path: no cluster, a
// burst of 3 new WebSocket connections and 2 failed authentications per
// client IP.
func tighten(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "cluster")
	m["rate_limits"] = map[string]any{
		"enabled":              true,
		"connections_per_ip":   map[string]any{"rate": 0.001, "burst": 3},
		"auth_failures_per_ip": map[string]any{"rate": 0.001, "burst": 2},
	}
	out, err := yaml.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(path), out, 0o600); err != nil {
		t.Fatal(err)
	}
}
