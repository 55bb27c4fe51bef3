// Package hostile attacks the real relay binary, started as a subprocess on
// a free loopback port, the way a hostile client on the Internet would:
// exhausting its file descriptors, holding sockets open without sending,
// announcing bodies and frames it never sends, smuggling requests, going
// away half-way, and talking to it while it shuts down. Each Test function
// proves one finding of the security review and names it in its comment;
// the expectations are those of ../../shared/PROTOCOL.md (section G) and of
// the configuration keys in config/config.go.
//
// TestMain builds the relay once (go build github.com/signrelay/signrelay)
// into a temporary directory; SIGNRELAY_BIN=/path/to/signrelay uses that
// binary instead (for example one built from a clean checkout, to run the
// attacks against a baseline). Every test starts its own relay with its own
// YAML configuration and stops it with SIGTERM.
//
// The default run (go test -race ./tests/hostile/) is kept short: a few
// hundred hostile connections per attack. SIGNRELAY_HOSTILE_FULL=1 runs the
// heavier variants (thousands of connections instead of hundreds, see
// pick) and two stricter variants that go beyond the review's wording: a
// request whose headers drip in byte by byte, and a WebSocket message whose
// continuation frames trickle in, must both be cut off by their timeouts.
//
// Nothing here sleeps to synchronise: every wait polls a condition or reads
// with a deadline, and every loop is bounded in count and time.
package hostile

import (
	"bufio"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

const apiKey = "hostile-test-api-key-0123456789"

// introPrefix is what a key holder signs, followed by the nonce bytes.
const introPrefix = "signing-relay/v1/introduction:"

// MiB is the unit of every memory bound here.
const MiB = 1 << 20

// relayBin is the binary every test runs; set by TestMain.
var relayBin string

// TestMain builds the relay once, runs the tests, and fails the run if a
// test left a goroutine behind (every socket, reader and sampler a test
// starts is stopped by its cleanup).
func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if bin := os.Getenv("SIGNRELAY_BIN"); bin != "" {
		relayBin = bin
	} else {
		dir, err := os.MkdirTemp("", "signrelay-hostile-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "hostile:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		relayBin = filepath.Join(dir, "signrelay")
		cmd := exec.Command("go", "build", "-o", relayBin, "github.com/signrelay/signrelay")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "hostile: building the relay: %v\n%s", err, out)
			return 1
		}
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "hostile: leaked goroutines:", err)
			return 1
		}
	}
	return code
}

// full reports whether the heavier variants run (SIGNRELAY_HOSTILE_FULL=1).
func full() bool { return os.Getenv("SIGNRELAY_HOSTILE_FULL") == "1" }

// pick returns quick in the default run and heavy in the full one.
func pick(quick, heavy int) int {
	if full() {
		return heavy
	}
	return quick
}

// --- the relay process ----------------------------------------------------

// relay is one running relay process.
type relay struct {
	t      *testing.T
	cmd    *exec.Cmd
	pid    int
	addr   string // 127.0.0.1:port
	out    *logBuffer
	exited chan struct{} // closed when the process has exited
	state  *os.ProcessState
}

// opts configures one relay: Config is merged over the base configuration
// (maps merge key by key); NoFile, when not 0, is the open-file limit (soft
// and hard) the relay runs under.
type opts struct {
	Config map[string]any
	NoFile int
}

// baseConfig is what every test starts from.
func baseConfig(listen string) map[string]any {
	return map[string]any{
		"listen":         listen,
		"api_keys":       []any{apiKey},
		"rate_limits":    map[string]any{"enabled": false},
		"shutdown_grace": "1s",
		"log_level":      "info",
	}
}

func merge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

// startRelay runs the relay binary with o and stops it when the test ends.
// The port is chosen here (listen on :0, read it, close) because the relay
// does not report a :0 port reliably; a lost race for it is retried.
func startRelay(t *testing.T, o opts) *relay {
	t.Helper()
	var lastOut string
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		cfg := baseConfig(addr)
		merge(cfg, o.Config)
		r, err := launch(t, addr, cfg, o.NoFile)
		if err == nil {
			return r
		}
		lastOut = err.Error()
		if !strings.Contains(lastOut, "address already in use") {
			break
		}
	}
	t.Fatalf("relay did not start: %s", lastOut)
	return nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func launch(t *testing.T, addr string, cfg map[string]any, nofile int) (*relay, error) {
	t.Helper()
	// JSON is YAML: the relay's YAML reader takes this file as it is.
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "relay.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	switch {
	case nofile == 0:
		cmd = exec.Command(relayBin, "-config", path)
	case fileExists("/usr/bin/prlimit"):
		// prlimit sets the limit on itself and execs the relay: same pid.
		lim := fmt.Sprintf("--nofile=%d:%d", nofile, nofile)
		cmd = exec.Command("/usr/bin/prlimit", lim, relayBin, "-config", path)
	default:
		cmd = exec.Command("bash", "-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile), relayBin, "-config", path)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIGNRELAY_") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	out := &logBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start relay: %v", err)
	}
	r := &relay{t: t, cmd: cmd, pid: cmd.Process.Pid, addr: addr, out: out, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		r.state = cmd.ProcessState
		close(r.exited)
	}()
	if err := r.awaitReady(15 * time.Second); err != nil {
		r.stop()
		return nil, fmt.Errorf("%v\nconfig:\n%s\nrelay output:\n%s", err, data, out.tail(4000))
	}
	t.Cleanup(func() {
		r.stop()
		if tail := out.tail(4000); t.Failed() && tail != "" {
			t.Logf("relay output (tail):\n%s", tail)
		}
	})
	return r, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// awaitReady polls GET /healthz until it answers 200.
func (r *relay) awaitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if !r.alive() {
			return fmt.Errorf("relay exited at start (%v)", r.state)
		}
		res, err := r.roundTrip("GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n", time.Second)
		if err == nil && res.status == http.StatusOK {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET /healthz not 200 within %v (last: %v %v)", limit, res, err)
		}
		select {
		case <-tick.C:
		case <-r.exited:
		}
	}
}

// alive reports whether the relay process is still running.
func (r *relay) alive() bool {
	select {
	case <-r.exited:
		return false
	default:
		return true
	}
}

// requireAlive fails the test now if the relay has exited.
func (r *relay) requireAlive(t *testing.T, when string) {
	t.Helper()
	if !r.alive() {
		t.Fatalf("the relay exited %s (%v); its output ends:\n%s", when, r.state, r.out.tail(2000))
	}
}

// sigterm asks the relay to shut down gracefully.
func (r *relay) sigterm() {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
}

// awaitExit waits for the process to end, up to limit.
func (r *relay) awaitExit(limit time.Duration) bool {
	select {
	case <-r.exited:
		return true
	case <-time.After(limit):
		return false
	}
}

// stop sends SIGTERM and waits; it kills the relay if it does not stop.
func (r *relay) stop() {
	if !r.alive() {
		return
	}
	r.sigterm()
	if !r.awaitExit(20 * time.Second) {
		r.t.Errorf("relay did not stop within 20s of SIGTERM; killing it")
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
}

// rss is the relay's resident set size in bytes (VmRSS).
func (r *relay) rss() (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc/pid/status")
}

// fds is the number of file descriptors the relay has open.
func (r *relay) fds() (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", r.pid))
	return len(ents), err
}

// rssSampler records the relay's peak RSS until stopped.
type rssSampler struct {
	r    *relay
	peak atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func (r *relay) sampleRSS() *rssSampler {
	s := &rssSampler{r: r, stop: make(chan struct{}), done: make(chan struct{})}
	s.sample()
	go func() {
		defer close(s.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
				s.sample()
			}
		}
	}()
	return s
}

func (s *rssSampler) sample() {
	if v, err := s.r.rss(); err == nil {
		for {
			old := s.peak.Load()
			if v <= old || s.peak.CompareAndSwap(old, v) {
				break
			}
		}
	}
}

// Stop ends sampling and returns the peak.
func (s *rssSampler) Stop() int64 {
	close(s.stop)
	<-s.done
	s.sample()
	return s.peak.Load()
}

// logBuffer keeps the relay's output (up to 8 MiB) for failure messages.
type logBuffer struct {
	mu      sync.Mutex
	b       []byte
	dropped int
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.b)+len(p) > 8*MiB {
		l.dropped += len(p)
	} else {
		l.b = append(l.b, p...)
	}
	return len(p), nil
}

func (l *logBuffer) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := string(l.b)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	if l.dropped > 0 {
		s += fmt.Sprintf("\n(%d bytes of later output dropped)", l.dropped)
	}
	return s
}

// --- raw HTTP -------------------------------------------------------------

// response is one HTTP response read off a raw socket.
type response struct {
	status int
	header http.Header
	body   []byte
	close  bool // the response said Connection: close
}

func (r *response) String() string {
	if r == nil {
		return "<no response>"
	}
	return fmt.Sprintf("%d close=%v %s", r.status, r.close, r.body)
}

// code is error.code of a JSON error body, or "".
func (r *response) code() string {
	var b struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(r.body, &b)
	return b.Error.Code
}

// readResponse reads one response and its body from br.
func readResponse(br *bufio.Reader) (*response, error) {
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	// net/http drops the Connection: close header and records it in Close.
	return &response{status: res.StatusCode, header: res.Header, body: body, close: res.Close}, nil
}

// conn is a raw TCP connection to the relay with a buffered reader.
type conn struct {
	net.Conn
	br *bufio.Reader
}

func (r *relay) dial(timeout time.Duration) (*conn, error) {
	c, err := net.DialTimeout("tcp", r.addr, timeout)
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, br: bufio.NewReader(c)}, nil
}

// mustDial dials and closes the connection when the test ends.
func (r *relay) mustDial(t *testing.T) *conn {
	t.Helper()
	c, err := r.dial(5 * time.Second)
	if err != nil {
		t.Fatalf("dial relay: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// do writes raw and reads one response, both within timeout.
func (c *conn) do(raw string, timeout time.Duration) (*response, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, raw); err != nil {
		return nil, err
	}
	return readResponse(c.br)
}

// read reads one response within timeout.
func (c *conn) read(timeout time.Duration) (*response, error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	return readResponse(c.br)
}

// awaitEOF reads until the relay closes the connection or timeout passes.
// It returns what was read; closed is false when the deadline passed with
// the connection still open.
func (c *conn) awaitEOF(timeout time.Duration) (extra []byte, closed bool, err error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	extra, err = io.ReadAll(io.LimitReader(c.br, 1*MiB))
	if isTimeout(err) {
		return extra, false, err
	}
	return extra, true, err
}

// roundTrip sends raw on a fresh connection and reads one response.
func (r *relay) roundTrip(raw string, timeout time.Duration) (*response, error) {
	c, err := r.dial(timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.do(raw, timeout)
}

// atLeast is deadline, or d from now if that is later. Reading many sockets
// one after the other against one deadline needs it: Go fails a read at
// once, without looking at the socket, when its deadline has passed.
func atLeast(deadline time.Time, d time.Duration) time.Time {
	if min := time.Now().Add(d); min.After(deadline) {
		return min
	}
	return deadline
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// closedByPeer reports whether err means the peer closed or reset the
// connection (as opposed to our deadline passing).
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// signBody is a POST /sign body for pub and msg.
func signBody(pub ed25519.PublicKey, msg []byte, timeoutMS int) []byte {
	b, _ := json.Marshal(map[string]any{"public_key": b64(pub), "message": b64(msg), "timeout_ms": timeoutMS})
	return b
}

// signRequest is a complete POST /sign request; auth "" sends none.
func signRequest(auth string, body []byte) string {
	var sb strings.Builder
	sb.WriteString("POST /sign HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n")
	if auth != "" {
		sb.WriteString("Authorization: " + auth + "\r\n")
	}
	fmt.Fprintf(&sb, "Content-Length: %d\r\n\r\n", len(body))
	sb.Write(body)
	return sb.String()
}

const healthz = "GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n"

// checkSignature fails unless res is a 200 whose signature verifies.
func checkSignature(t *testing.T, res *response, pub ed25519.PublicKey, msg []byte) {
	t.Helper()
	if res.status != http.StatusOK {
		t.Fatalf("POST /sign: %v, want 200", res)
	}
	var b struct{ Signature string }
	if err := json.Unmarshal(res.body, &b); err != nil {
		t.Fatalf("POST /sign body: %v: %s", err, res.body)
	}
	sig, err := base64.StdEncoding.DecodeString(b.Signature)
	if err != nil || !ed25519.Verify(pub, msg, sig) {
		t.Fatalf("signature %q does not verify", b.Signature)
	}
}

// --- bounded concurrency ----------------------------------------------------

// parallel runs fn(0..n-1) on workers goroutines, starting no new call once
// deadline has passed, and returns how many calls started.
func parallel(n, workers int, deadline time.Time, fn func(i int)) int {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || time.Now().After(deadline) {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
	return min(int(next.Load()), n)
}

// closeAll closes every connection of a slice guarded by mu.
type connSet struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (s *connSet) add(c net.Conn) {
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.mu.Unlock()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// mb formats bytes as MiB.
func mb(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/MiB) }
