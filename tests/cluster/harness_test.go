// Package clusterproc tests a relay of several nodes (contract §A of
// ../../shared/PROTOCOL.md) at the level of processes: the built relay
// binary three times, joined through a real, external nats-server process,
// all on free loopback ports. The failures it provokes are those a process
// can suffer and an in-process test cannot show: SIGKILL of the node that
// owns a request, SIGKILL of the node a key holder is connected to, and a
// NATS server frozen with SIGSTOP and thawed with SIGCONT. jetstream_test.go
// checks what the relays expect of the server's JetStream and what they
// leave in it. script_test.go runs scripts/cluster.sh (make cluster), the three-node setup with
// embedded NATS that a person starts to try the relay.
//
// TestMain builds the relay once (with -race when the tests run with
// -race, so that a data race in a relay process fails the test that saw
// it); SIGNRELAY_BIN=/path/to/signrelay uses that binary instead.
// nats-server (v2.15.3: go install github.com/nats-io/nats-server/v2@v2.15.3,
// which make test and .ci/run do) is NATS_SERVER, or
// $(go env GOBIN)/nats-server, $(go env GOPATH)/bin/nats-server, or on
// PATH. Without it the tests that need it are skipped, unless CI=true:
// in CI a missing nats-server fails them.
//
// Nothing here sleeps to synchronise: every wait polls a condition or
// reads with a deadline, and every step is bounded in time. Every process
// is stopped when its test ends, also on failure (SIGTERM, then SIGKILL),
// and the output of every relay and of nats-server is logged when a test
// fails.
package clusterproc

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	apiKey = "cluster-proc-test-api-key-0123456789"
	// introPrefix is what a key holder signs, followed by the nonce bytes.
	introPrefix = "signing-relay/v1/introduction:"
	// natsUser and natsPassword authenticate the relays to nats-server.
	natsUser     = "signrelay"
	natsPassword = "nats-test-password-0123456789abcdef"
	// wantNATS is the nats-server version the tests are written against.
	wantNATS = "v2.15.3"
	// step bounds one ordinary step (a frame, a response, a start).
	step = 10 * time.Second
)

var (
	relayBin   string // the relay binary every test runs; set by TestMain
	natsBin    string // nats-server; "" when none was found
	natsWhy    string // why natsBin is "", for the skip or failure message
	natsVer    string // what natsBin --version said
	repoRoot   string // the module's root directory
	raceBinary bool   // relayBin was built with -race
)

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		fmt.Fprintln(os.Stderr, "clusterproc:", err)
		return 1
	}
	repoRoot = root
	if bin := os.Getenv("SIGNRELAY_BIN"); bin != "" {
		relayBin = bin
	} else {
		dir, err := os.MkdirTemp("", "signrelay-clusterproc-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "clusterproc:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		relayBin = filepath.Join(dir, "signrelay")
		args := []string{"build", "-o", relayBin}
		if raceEnabled {
			args = append(args, "-race")
			raceBinary = true
		}
		cmd := exec.Command("go", append(args, "github.com/signrelay/signrelay")...)
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "clusterproc: building the relay: %v\n%s", err, out)
			return 1
		}
	}
	natsBin, natsVer, natsWhy = findNATSServer()
	return m.Run()
}

// inCI reports whether the run is CI's, where nothing may be skipped for a
// missing tool.
func inCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1"
}

// requireNATS skips the test when there is no nats-server, or fails it in CI.
func requireNATS(t *testing.T) {
	t.Helper()
	if natsBin != "" {
		return
	}
	msg := "no usable nats-server (" + natsWhy + "); install it with: go install github.com/nats-io/nats-server/v2@" + wantNATS + " (make deps-nats)"
	if inCI() {
		t.Fatal(msg + " — CI=true, so this is a failure, not a skip")
	}
	t.Skip(msg)
}

var natsVersionRE = regexp.MustCompile(`v(\d+)\.(\d+)\.(\d+)`)

// findNATSServer returns the first nats-server of NATS_SERVER, GOBIN,
// GOPATH/bin and PATH that runs and is at least v2.10 (Debian's 2.9 is
// too old for what the relay asks of it), with its version.
func findNATSServer() (bin, version, why string) {
	var cands []string
	if p := os.Getenv("NATS_SERVER"); p != "" {
		cands = append(cands, p)
	}
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
		if len(lines) > 0 && strings.TrimSpace(lines[0]) != "" {
			cands = append(cands, filepath.Join(strings.TrimSpace(lines[0]), "nats-server"))
		}
		if len(lines) > 1 {
			for _, p := range filepath.SplitList(strings.TrimSpace(lines[1])) {
				if p != "" {
					cands = append(cands, filepath.Join(p, "bin", "nats-server"))
				}
			}
		}
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		cands = append(cands, p)
	}
	var notes []string
	for _, c := range cands {
		if _, err := os.Stat(c); err != nil {
			notes = append(notes, "none at "+c)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, c, "--version").CombinedOutput()
		cancel()
		if err != nil {
			notes = append(notes, c+": "+err.Error())
			continue
		}
		m := natsVersionRE.FindStringSubmatch(string(out))
		if m == nil {
			notes = append(notes, fmt.Sprintf("%s: no version in %q", c, out))
			continue
		}
		major, _ := strconv.Atoi(m[1])
		minor, _ := strconv.Atoi(m[2])
		if major < 2 || (major == 2 && minor < 10) {
			notes = append(notes, fmt.Sprintf("%s: %s is too old", c, m[0]))
			continue
		}
		return c, m[0], ""
	}
	if len(notes) == 0 {
		return "", "", "not in NATS_SERVER, GOBIN, GOPATH/bin or PATH"
	}
	return "", "", strings.Join(notes, "; ")
}

// --- ports and output -------------------------------------------------------

// freePort returns a loopback port that was free a moment ago. Whoever
// binds it may lose a race for it; the starters retry.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// logBuffer keeps a process's output (up to 8 MiB) for failure messages.
type logBuffer struct {
	mu      sync.Mutex
	b       []byte
	dropped int
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.b)+len(p) > 8<<20 {
		l.dropped += len(p)
	} else {
		l.b = append(l.b, p...)
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

func (l *logBuffer) tail(n int) string {
	s := l.String()
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	if l.dropped > 0 {
		s += fmt.Sprintf("\n(%d bytes of later output dropped)", l.dropped)
	}
	return s
}

// proc is a child process: its output, and a channel closed at its exit.
type proc struct {
	name   string
	cmd    *exec.Cmd
	out    *logBuffer
	exited chan struct{}
	state  *os.ProcessState // set before exited is closed
}

func startProc(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, out: &logBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.exited)
	}()
	return p
}

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *proc) signal(s syscall.Signal) { _ = p.cmd.Process.Signal(s) }

// kill sends SIGKILL and waits for the exit.
func (p *proc) kill() {
	p.signal(syscall.SIGKILL)
	<-p.exited
}

// awaitExit waits for the process to end, up to limit.
func (p *proc) awaitExit(limit time.Duration) bool {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-p.exited:
		return true
	case <-t.C:
		return false
	}
}

// stop sends SIGTERM and, if the process has not ended within limit,
// SIGKILL. It reports whether SIGTERM was enough.
func (p *proc) stop(limit time.Duration) bool {
	if !p.alive() {
		return true
	}
	p.signal(syscall.SIGTERM)
	if p.awaitExit(limit) {
		return true
	}
	p.kill()
	return false
}

// --- nats-server ------------------------------------------------------------

type natsServer struct {
	*proc
	addr string
	url  string // nats://127.0.0.1:port (credentials go in the relay's config)
}

// startNATS runs nats-server on a free loopback port with user and
// password, JetStream, a 1 MiB max_payload and a 1 s ping interval, and waits until
// it greets a client. It is stopped when the test ends.
func startNATS(t *testing.T) *natsServer {
	t.Helper()
	return startNATSServer(t, true)
}

// startNATSServer is startNATS, with JetStream only if jetStream is set.
func startNATSServer(t *testing.T, jetStream bool) *natsServer {
	t.Helper()
	requireNATS(t)
	var last string
	for attempt := 0; attempt < 3; attempt++ {
		port := freePort(t)
		addr := loopback(port)
		conf := fmt.Sprintf(`# written by tests/cluster
listen: "%s"
server_name: "clusterproc-%d"
max_payload: 1048576
ping_interval: "1s"
ping_max: 2
authorization {
  user: "%s"
  password: "%s"
}
`, addr, port, natsUser, natsPassword)
		if jetStream {
			conf += fmt.Sprintf(`# request resources (async requests, idempotency keys) live in JetStream
jetstream {
  store_dir: "%s"
  max_memory_store: 1073741824
}
`, filepath.Join(t.TempDir(), "js"))
		}
		path := filepath.Join(t.TempDir(), "nats.conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		p := startProc(t, "nats-server", exec.Command(natsBin, "-c", path))
		n := &natsServer{proc: p, addr: addr, url: "nats://" + addr}
		if err := n.awaitGreeting(step); err != nil {
			p.kill()
			last = fmt.Sprintf("%v\n%s", err, p.out.tail(3000))
			if strings.Contains(last, "address already in use") {
				continue
			}
			break
		}
		t.Cleanup(func() {
			n.signal(syscall.SIGCONT) // a test that failed while it was stopped
			if !n.stop(5 * time.Second) {
				t.Errorf("nats-server did not stop within 5s of SIGTERM; killed")
			}
			if t.Failed() {
				t.Logf("nats-server output (tail):\n%s", n.out.tail(3000))
			}
		})
		t.Logf("nats-server %s at %s (JetStream: %v)", natsVer, addr, jetStream)
		return n
	}
	t.Fatalf("nats-server did not start: %s", last)
	return nil
}

// jetStream connects the test itself to n, as the relays do, and returns
// its JetStream API, to look at the streams the relays keep. The
// connection is closed when the test ends.
func (n *natsServer) jetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(n.url, nats.UserInfo(natsUser, natsPassword), nats.Timeout(step), nats.Name("clusterproc test"))
	if err != nil {
		t.Fatalf("test client to nats-server at %s: %v", n.addr, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// awaitGreeting polls until the server sends its INFO line to a new client.
func (n *natsServer) awaitGreeting(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if !n.alive() {
			return fmt.Errorf("nats-server exited at start (%v)", n.state)
		}
		c, err := net.DialTimeout("tcp", n.addr, time.Second)
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if rerr == nil && strings.HasPrefix(line, "INFO ") {
				return nil
			}
			err = rerr
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nats-server does not greet a client within %v: %v", limit, err)
		}
		pause(20 * time.Millisecond)
	}
}

// pause waits between two polls of a condition; it never stands in for
// one.
func pause(d time.Duration) { <-time.After(d) }

// --- relays -----------------------------------------------------------------

// relay is one running relay process.
type relay struct {
	*proc
	t      *testing.T
	addr   string // 127.0.0.1:port
	base   string // http://addr
	client *http.Client
	killed bool // SIGKILLed on purpose: no clean exit to check
}

// relayConfig is the configuration of a node of nats.
func relayConfig(listen, node string, nats *natsServer) map[string]any {
	return nodeConfig(listen, map[string]any{
		"nats_url": nats.url,
		"node_id":  node,
		"user":     natsUser,
		"password": natsPassword,
	})
}

// nodeConfig is what every relay of these tests runs with (rate limits
// off, a short shutdown grace), with cluster as its cluster section.
func nodeConfig(listen string, cluster map[string]any) map[string]any {
	return map[string]any{
		"listen":         listen,
		"api_keys":       []any{apiKey},
		"rate_limits":    map[string]any{"enabled": false},
		"shutdown_grace": "1s",
		"log_level":      "info",
		"cluster":        cluster,
	}
}

// startNodes starts n relays on nats (node1, node2, ...) and waits until
// each is ready.
func startNodes(t *testing.T, nats *natsServer, n int) []*relay {
	t.Helper()
	out := make([]*relay, n)
	for i := range out {
		name := fmt.Sprintf("node%d", i+1)
		out[i] = startRelay(t, name, func(listen string) map[string]any { return relayConfig(listen, name, nats) })
	}
	return out
}

// startRelay runs the relay binary with the configuration config makes for
// a free listen address, waits until GET /readyz answers 200, and stops it
// when the test ends (SIGTERM, then SIGKILL after 20 s).
func startRelay(t *testing.T, name string, config func(listen string) map[string]any) *relay {
	t.Helper()
	var last string
	for attempt := 0; attempt < 3; attempt++ {
		addr := loopback(freePort(t))
		path, data := writeRelayConfig(t, name, config(addr))
		r, err := launchRelay(t, name, addr, exec.Command(relayBin, "-config", path))
		if err == nil {
			return r
		}
		last = fmt.Sprintf("%v\nconfig:\n%s", err, data)
		if !strings.Contains(last, "address already in use") {
			break
		}
	}
	t.Fatalf("%s did not start: %s", name, last)
	return nil
}

// writeRelayConfig writes cfg to a file of the test's and returns its
// path and contents.
func writeRelayConfig(t *testing.T, name string, cfg map[string]any) (string, []byte) {
	t.Helper()
	// JSON is YAML: the relay's YAML reader takes this file as it is.
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

func relayEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIGNRELAY_") {
			env = append(env, kv)
		}
	}
	return env
}

func launchRelay(t *testing.T, name, addr string, cmd *exec.Cmd) (*relay, error) {
	t.Helper()
	cmd.Env = relayEnv()
	p := startProc(t, name, cmd)
	r := &relay{
		proc: p, t: t, addr: addr, base: "http://" + addr,
		// No keep-alive: a connection to a relay killed on purpose must
		// not be reused by the next request.
		client: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
	}
	if err := r.awaitReady(20 * time.Second); err != nil {
		p.kill()
		return nil, fmt.Errorf("%s: %v\noutput:\n%s", name, err, p.out.tail(4000))
	}
	t.Cleanup(func() { r.finish() })
	return r, nil
}

// finish stops the relay at the end of its test and checks how it ended:
// a clean exit after SIGTERM, and no data race reported on the way.
func (r *relay) finish() {
	t := r.t
	clean := r.stop(20 * time.Second)
	out := r.out.String()
	switch {
	case !clean:
		t.Errorf("%s did not stop within 20s of SIGTERM; killed", r.name)
	case !r.killed && r.state != nil && r.state.ExitCode() != 0:
		t.Errorf("%s exited with %v after SIGTERM", r.name, r.state)
	}
	if strings.Contains(out, "WARNING: DATA RACE") {
		t.Errorf("%s reported a data race:\n%s", r.name, raceReports(out))
	}
	if t.Failed() {
		t.Logf("%s output (tail):\n%s", r.name, r.out.tail(6000))
	}
}

// raceReports is the race detector's reports in out.
func raceReports(out string) string {
	i := strings.Index(out, "==================\nWARNING: DATA RACE")
	if i < 0 {
		i = strings.Index(out, "WARNING: DATA RACE")
	}
	s := out[i:]
	if len(s) > 20000 {
		s = s[:20000] + "…"
	}
	return s
}

// sigkill kills the relay without a chance to shut down, and waits until
// it is gone.
func (r *relay) sigkill() {
	r.killed = true
	r.kill()
}

// awaitReady polls GET /readyz until it answers 200.
func (r *relay) awaitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if !r.alive() {
			return fmt.Errorf("exited at start (%v)", r.state)
		}
		st, _, err := r.readyz()
		if err == nil && st == http.StatusOK {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET /readyz not 200 within %v (last: %d %v)", limit, st, err)
		}
		pause(20 * time.Millisecond)
	}
}

// readyz is GET /readyz: the status and, for an error, its code.
func (r *relay) readyz() (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.base+"/readyz", nil)
	res, err := r.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	return res.StatusCode, errorCode(raw), nil
}

// --- backends -----------------------------------------------------------------

// signResult is what a POST /sign came back with.
type signResult struct {
	status    int
	body      []byte
	code      string // error.code, "" on success
	requestID string
	signature string
	err       error // the HTTP exchange failed (no response)
	took      time.Duration
}

func (s signResult) String() string {
	if s.err != nil {
		return fmt.Sprintf("no response after %v: %v", s.took.Round(time.Millisecond), s.err)
	}
	return fmt.Sprintf("%d %s (after %v)", s.status, bytes.TrimSpace(s.body), s.took.Round(time.Millisecond))
}

func errorCode(raw []byte) string {
	var b struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(raw, &b)
	return b.Error.Code
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// signBody is a POST /sign body for pub and msg with timeout_ms.
func signBody(pub ed25519.PublicKey, msg []byte, timeoutMS int) []byte {
	b, _ := json.Marshal(map[string]any{"public_key": b64(pub), "message": b64(msg), "timeout_ms": timeoutMS})
	return b
}

// sign makes POST /sign with the test API key, waiting at most limit.
func (r *relay) sign(body []byte, limit time.Duration) signResult {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, r.base+"/sign", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	res, err := r.client.Do(req)
	if err != nil {
		return signResult{err: err, took: time.Since(start)}
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	out := signResult{status: res.StatusCode, body: raw, code: errorCode(raw), err: err, took: time.Since(start)}
	var ok struct {
		RequestID string `json:"request_id"`
		Signature string `json:"signature"`
	}
	_ = json.Unmarshal(raw, &ok)
	out.requestID, out.signature = ok.RequestID, ok.Signature
	if out.requestID == "" {
		out.requestID = res.Header.Get("X-Request-Id")
	}
	return out
}

// signAsync starts POST /sign; its result arrives on the channel.
func (r *relay) signAsync(body []byte, limit time.Duration) <-chan signResult {
	ch := make(chan signResult, 1)
	go func() { ch <- r.sign(body, limit) }()
	return ch
}

// awaitSign waits for an asynchronous POST /sign, at most limit.
func awaitSign(t *testing.T, ch <-chan signResult, limit time.Duration, what string) signResult {
	t.Helper()
	select {
	case res := <-ch:
		return res
	case <-time.After(limit):
		t.Fatalf("%s: POST /sign did not return within %v", what, limit)
	}
	return signResult{}
}

// expectSigned fails unless res is a 200 whose signature verifies.
func expectSigned(t *testing.T, res signResult, pub ed25519.PublicKey, msg []byte, what string) {
	t.Helper()
	if res.err != nil || res.status != http.StatusOK {
		t.Fatalf("%s: POST /sign: %v, want 200", what, res)
	}
	sig, err := base64.StdEncoding.DecodeString(res.signature)
	if err != nil || !ed25519.Verify(pub, msg, sig) {
		t.Fatalf("%s: signature %q does not verify", what, res.signature)
	}
}

// expectStatus fails unless res is status with error.code code.
func expectStatus(t *testing.T, res signResult, status int, code, what string) {
	t.Helper()
	if res.err != nil || res.status != status || res.code != code {
		t.Fatalf("%s: POST /sign: %v, want %d %s", what, res, status, code)
	}
}

// --- key holders --------------------------------------------------------------

type frame map[string]any

func (f frame) str(k string) string { s, _ := f[k].(string); return s }

// holder is an introduced key holder whose frames a goroutine reads (so
// that the relay's pings are answered while the test does something else).
type holder struct {
	t       *testing.T
	name    string
	conn    *websocket.Conn
	priv    ed25519.PrivateKey
	pub     ed25519.PublicKey
	session string
	frames  chan frame
	done    chan struct{} // closed when reading ended
	err     error         // why reading ended; set before done is closed
}

func newKey(t *testing.T) ed25519.PrivateKey {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

// connect dials r's /ws and introduces priv (a fresh key if nil): the
// challenge, the introduction over "signing-relay/v1/introduction:" and
// the nonce, the introduced frame. The socket is closed when the test ends.
func (r *relay) connect(t *testing.T, priv ed25519.PrivateKey) *holder {
	t.Helper()
	h, err := r.tryConnect(t, priv)
	if err != nil {
		t.Fatalf("key holder on %s: %v", r.name, err)
	}
	return h
}

func (r *relay) tryConnect(t *testing.T, priv ed25519.PrivateKey) (*holder, error) {
	if priv == nil {
		priv = newKey(t)
	}
	pub := priv.Public().(ed25519.PublicKey)
	d := websocket.Dialer{HandshakeTimeout: step}
	ws, _, err := d.Dial("ws://"+r.addr+"/ws", nil)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*holder, error) { ws.Close(); return nil, err }
	_ = ws.SetReadDeadline(time.Now().Add(step))
	var ch frame
	if err := ws.ReadJSON(&ch); err != nil {
		return fail(fmt.Errorf("reading the challenge: %w", err))
	}
	nonce, err := base64.StdEncoding.DecodeString(ch.str("nonce"))
	if ch.str("type") != "challenge" || err != nil || len(nonce) != 32 {
		return fail(fmt.Errorf("bad challenge %v", ch))
	}
	_ = ws.SetWriteDeadline(time.Now().Add(step))
	intro := frame{"type": "introduction", "public_key": b64(pub),
		"signature": b64(ed25519.Sign(priv, append([]byte(introPrefix), nonce...)))}
	if err := ws.WriteJSON(intro); err != nil {
		return fail(err)
	}
	var got frame
	if err := ws.ReadJSON(&got); err != nil {
		return fail(fmt.Errorf("reading introduced: %w", err))
	}
	if got.str("type") != "introduced" || got.str("public_key") != b64(pub) {
		return fail(fmt.Errorf("got %v, want introduced", got))
	}
	_ = ws.SetReadDeadline(time.Time{})
	h := &holder{t: t, name: r.name, conn: ws, priv: priv, pub: pub, session: got.str("session_id"),
		frames: make(chan frame, 256), done: make(chan struct{})}
	go h.readLoop()
	t.Cleanup(func() {
		ws.Close()
		<-h.done
	})
	return h, nil
}

func (h *holder) readLoop() {
	defer close(h.done)
	for {
		mt, data, err := h.conn.ReadMessage()
		if err != nil {
			h.err = err
			return
		}
		var f frame
		if mt != websocket.TextMessage || json.Unmarshal(data, &f) != nil {
			f = frame{"type": "<bad frame>", "raw": string(data)}
		}
		select {
		case h.frames <- f:
		default:
			h.err = errors.New("test holder: more than 256 frames unread")
			return
		}
	}
}

// next returns the next frame within limit, or an error: the connection
// ended, or nothing came.
func (h *holder) next(limit time.Duration) (frame, error) {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case f := <-h.frames:
		return f, nil
	case <-t.C:
		return nil, fmt.Errorf("no frame within %v", limit)
	case <-h.done:
		select { // frames read before the end come first
		case f := <-h.frames:
			return f, nil
		default:
		}
		return nil, fmt.Errorf("connection ended: %w", h.err)
	}
}

// expect returns the next frame, which must have type typ (any type for
// ""), within limit.
func (h *holder) expect(typ string, limit time.Duration) frame {
	h.t.Helper()
	f, err := h.next(limit)
	if err != nil {
		h.t.Fatalf("holder on %s waiting for %s: %v", h.name, typ, err)
	}
	if typ != "" && f.str("type") != typ {
		h.t.Fatalf("holder on %s got %v, want a %s frame", h.name, f, typ)
	}
	return f
}

// expectCancel reads a sign_cancel for id with reason within limit.
func (h *holder) expectCancel(id, reason string, limit time.Duration) {
	h.t.Helper()
	f := h.expect("sign_cancel", limit)
	if f.str("request_id") != id || f.str("reason") != reason {
		h.t.Fatalf("holder on %s got %v, want sign_cancel %s for %s", h.name, f, reason, id)
	}
}

// expectQuiet fails if a frame arrives within d.
func (h *holder) expectQuiet(d time.Duration) {
	h.t.Helper()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case f := <-h.frames:
		h.t.Fatalf("holder on %s got %v, want nothing", h.name, f)
	case <-t.C:
	}
}

// awaitBroken waits until the relay's side of the socket is gone.
func (h *holder) awaitBroken(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		f, err := h.next(time.Until(deadline))
		if err != nil {
			select {
			case <-h.done:
				return nil
			default:
				return err
			}
		}
		h.t.Logf("holder on %s: %v before the socket broke", h.name, f)
	}
}

func (h *holder) send(f frame) {
	h.t.Helper()
	_ = h.conn.SetWriteDeadline(time.Now().Add(step))
	if err := h.conn.WriteJSON(f); err != nil {
		h.t.Fatalf("holder on %s: write: %v", h.name, err)
	}
}

// approve signs the request's message and sends sign_response.
func (h *holder) approve(req frame) {
	h.t.Helper()
	msg, err := base64.StdEncoding.DecodeString(req.str("message"))
	if err != nil {
		h.t.Fatalf("sign_request message %q: %v", req.str("message"), err)
	}
	h.send(frame{"type": "sign_response", "request_id": req.str("request_id"),
		"message": req.str("message"), "signature": b64(ed25519.Sign(h.priv, msg))})
}

// randomMessage is a message no other request of the run has.
func randomMessage(what string) []byte {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return []byte(what + " " + hex.EncodeToString(b))
}
