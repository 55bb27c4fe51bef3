package clusterproc

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The person-facing setup: scripts/cluster.sh (make cluster) starts three
// relays with embedded NATS servers routed to each other, from
// deploy/node.yaml, the template compose.yaml runs. The test runs the script itself, on free
// ports and with the relay binary built here, exactly as a person would:
// the three nodes get ready, the page is served, a key holder on node2
// answers a request made on node1, and Ctrl-C (SIGINT to the script's
// process group, as a terminal sends it) stops all three nodes cleanly.
// The configuration `--print-config N` prints is the one the nodes ran.
func TestClusterScript(t *testing.T) {
	script := filepath.Join(repoRoot, "scripts", "cluster.sh")
	dir := t.TempDir()
	ports := make([]int, 9)
	seen := map[int]bool{}
	for i := range ports {
		for ports[i] == 0 || seen[ports[i]] {
			ports[i] = freePort(t)
		}
		seen[ports[i]] = true
	}
	list := func(p []int) string {
		s := make([]string, len(p))
		for i, v := range p {
			s[i] = strconv.Itoa(v)
		}
		return strings.Join(s, " ")
	}
	httpPorts := ports[0:3]
	env := append(relayEnv(),
		"CLUSTER_HTTP_PORTS="+list(httpPorts),
		"CLUSTER_NATS_PORTS="+list(ports[3:6]),
		"CLUSTER_ROUTE_PORTS="+list(ports[6:9]),
		"CLUSTER_API_KEY="+apiKey,
		"CLUSTER_NATS_PASSWORD=script-test-nats-password-0123",
		"CLUSTER_DIR="+dir,
		"CLUSTER_BIN="+relayBin,
		// The script must keep these from its relays: three nodes on
		// one listen address would not start.
		"SIGNRELAY_LISTEN=127.0.0.1:1",
		"SIGNRELAY_API_KEYS=not-the-key-0123456789",
	)

	cmd := exec.Command("bash", script)
	cmd.Env = env
	cmd.Dir = t.TempDir() // the script finds the repository by itself
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	sh := startProc(t, "cluster.sh", cmd)
	nodes := make([]*relay, 3)
	t.Cleanup(func() {
		if sh.alive() {
			_ = syscall.Kill(-sh.cmd.Process.Pid, syscall.SIGTERM)
			if !sh.awaitExit(30 * time.Second) {
				_ = syscall.Kill(-sh.cmd.Process.Pid, syscall.SIGKILL)
				<-sh.exited
			}
		}
		// Nodes the script failed to stop.
		for i := 1; i <= 3; i++ {
			if pid := readPid(dir, i); pid > 0 && isRelay(pid) {
				t.Errorf("node%d (pid %d) outlived the script; killing it", i, pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		for i := 1; i <= 3; i++ {
			log, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("node%d.log", i)))
			if bytes.Contains(log, []byte("WARNING: DATA RACE")) {
				t.Errorf("node%d reported a data race:\n%s", i, raceReports(string(log)))
			}
			if t.Failed() {
				t.Logf("node%d.log (tail):\n%s", i, tailBytes(log, 4000))
			}
		}
		if t.Failed() {
			t.Logf("cluster.sh output:\n%s", sh.out.tail(6000))
		}
	})

	// The script says how to try it once its three nodes are ready.
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(sh.out.String(), "Ctrl-C stops all three nodes.") {
		if !sh.alive() {
			t.Fatalf("cluster.sh exited (%v) before the nodes were ready", sh.state)
		}
		if time.Now().After(deadline) {
			t.Fatal("cluster.sh did not report three ready nodes within 60s")
		}
		pause(50 * time.Millisecond)
	}
	out := sh.out.String()
	for _, want := range []string{
		"http://127.0.0.1:" + strconv.Itoa(httpPorts[1]) + "/ in a browser",
		"curl -s -X POST http://127.0.0.1:" + strconv.Itoa(httpPorts[0]) + "/sign",
		apiKey,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the script's instructions lack %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "made for this run") {
		t.Errorf("the script says it made the API key, but CLUSTER_API_KEY was given:\n%s", out)
	}

	// The configuration --print-config prints is the one each node runs.
	for i := 1; i <= 3; i++ {
		pc := exec.Command("bash", script, "--print-config", strconv.Itoa(i))
		pc.Env = env
		printed, err := pc.Output()
		if err != nil {
			t.Fatalf("cluster.sh --print-config %d: %v", i, err)
		}
		ran, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("node%d.yaml", i)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(printed, ran) {
			t.Fatalf("--print-config %d differs from the node's configuration:\n%s\n---\n%s", i, printed, ran)
		}
	}

	ready := time.Now()
	for i, p := range httpPorts {
		addr := loopback(p)
		// The script's child: alive while the script is.
		p := &proc{name: fmt.Sprintf("node%d", i+1), cmd: sh.cmd, out: sh.out, exited: sh.exited}
		nodes[i] = &relay{proc: p, t: t, addr: addr, base: "http://" + addr,
			client: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}}
		if err := nodes[i].awaitReady(step); err != nil {
			t.Fatalf("node%d: %v", i+1, err)
		}
	}

	// The page a person is told to open.
	res, err := nodes[1].client.Get(nodes[1].base + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") || len(page) == 0 {
		t.Fatalf("GET / on node2: %d %q", res.StatusCode, res.Header.Get("Content-Type"))
	}

	// One cross-node round trip: a holder on node2, the backend on node1.
	// The routes between the embedded servers form on their own time
	// after /readyz: until they have, node1 may not know of node2's
	// holder (404).
	h := nodes[1].connect(t, nil)
	msg := randomMessage("through the script's cluster")
	deadline = time.Now().Add(step)
	var post <-chan signResult
wait:
	for {
		post = nodes[0].signAsync(signBody(h.pub, msg, 10000), 20*time.Second)
		select {
		case f := <-h.frames:
			if f.str("type") != "sign_request" || f.str("message") != b64(msg) {
				t.Fatalf("holder on node2 got %v, want the request", f)
			}
			h.approve(f)
			break wait
		case res := <-post:
			if res.status != http.StatusNotFound || time.Now().After(deadline) {
				t.Fatalf("POST /sign on node1 for a key held on node2: %v", res)
			}
			t.Logf("node1 does not see node2's holder yet (%v after /readyz); again", time.Since(ready).Round(time.Millisecond))
			pause(50 * time.Millisecond)
		case <-time.After(step):
			t.Fatal("the holder on node2 was not shown the request of node1")
		}
	}
	expectSigned(t, awaitSign(t, post, step, "the round trip"), h.pub, msg, "the round trip")
	t.Logf("cross-node round trip done %v after every node's /readyz was 200", time.Since(ready).Round(time.Millisecond))

	// Ctrl-C: the terminal sends SIGINT to the foreground process group.
	// (A process that was started with SIGINT ignored passes that on to
	// its children, which cannot undo it; SIGTERM then stands in.)
	sig := syscall.SIGINT
	if signal.Ignored(syscall.SIGINT) {
		sig = syscall.SIGTERM
		t.Log("SIGINT is ignored in this process (and so in the script): sending SIGTERM")
	}
	pids := make([]int, 3)
	for i := range pids {
		pids[i] = readPid(dir, i+1)
	}
	stopAt := time.Now()
	if err := syscall.Kill(-sh.cmd.Process.Pid, sig); err != nil {
		t.Fatal(err)
	}
	if !sh.awaitExit(30 * time.Second) {
		t.Fatalf("cluster.sh did not exit within 30s of %v", sig)
	}
	t.Logf("cluster.sh stopped the three nodes %v after %v", time.Since(stopAt).Round(time.Millisecond), sig)
	if code := sh.state.ExitCode(); code != 0 {
		t.Errorf("cluster.sh exited with %v after %v, want 0", sh.state, sig)
	}
	for i, pid := range pids {
		if pid <= 0 {
			t.Errorf("node%d: no pid file", i+1)
			continue
		}
		if isRelay(pid) {
			t.Errorf("node%d (pid %d) is still running after cluster.sh exited", i+1, pid)
		}
		log, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("node%d.log", i+1)))
		if !bytes.Contains(log, []byte("msg=stopped")) || bytes.Contains(log, []byte("second signal")) {
			t.Errorf("node%d did not shut down cleanly, once; its log ends:\n%s", i+1, tailBytes(log, 2000))
		}
		if c, err := net.DialTimeout("tcp", loopback(httpPorts[i]), time.Second); err == nil {
			c.Close()
			t.Errorf("node%d's port %d still accepts connections", i+1, httpPorts[i])
		}
	}
}

// readPid is the pid in dir/nodeN.pid, or 0.
func readPid(dir string, n int) int {
	b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("node%d.pid", n)))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// isRelay reports whether pid is a live (not zombie) process running the
// relay binary of this test run.
func isRelay(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(cmdline, []byte(relayBin))
}

func tailBytes(b []byte, n int) string {
	if len(b) > n {
		return "…" + string(b[len(b)-n:])
	}
	return string(b)
}
