package deploy

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
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
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

const (
	apiKey      = "deploy-test-api-key-0123456789abcdef"
	introPrefix = "signing-relay/v1/introduction:"
	step        = 10 * time.Second // one ordinary step: a frame, a response
)

func pause(d time.Duration) { <-time.After(d) }

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() < 8<<20 {
		l.b.Write(p)
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// proc is a process this test started, in a process group of its own.
type proc struct {
	name   string
	cmd    *exec.Cmd
	out    *logBuffer
	exited chan struct{}
}

func startProc(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, out: &logBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		_ = cmd.Wait()
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

// stop sends sig to the process group and waits up to limit, then SIGKILLs
// the group; it reports whether sig was enough.
func (p *proc) stop(sig syscall.Signal, limit time.Duration) bool {
	pgid := p.cmd.Process.Pid
	if p.alive() {
		_ = syscall.Kill(-pgid, sig)
	}
	tm := time.NewTimer(limit)
	defer tm.Stop()
	select {
	case <-p.exited:
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // workers left behind, if any
		return true
	case <-tm.C:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.exited
		return false
	}
}

// relayEnv is the environment without SIGNRELAY_* (which override files).
func relayEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIGNRELAY_") && !strings.HasPrefix(kv, "TMPDIR=") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// relay is one relay process.
type relay struct {
	*proc
	addr  string
	base  string
	cfg   string // its configuration file
	tmp   string // its TMPDIR and working directory: must stay empty
	store string // its cluster.embedded.store_dir, "" if none
}

// startRelay runs the built relay with the configuration file at path,
// in an empty working directory with an empty TMPDIR, and waits until its
// GET /readyz is 200 (if wait). It is stopped when the test ends.
func startRelay(t *testing.T, name, path, addr, store string, wait bool) *relay {
	t.Helper()
	tmp := t.TempDir()
	cmd := exec.Command(relayBin, "-config", path)
	cmd.Dir = tmp
	cmd.Env = relayEnv("TMPDIR=" + tmp)
	r := &relay{proc: startProc(t, name, cmd), addr: addr, base: "http://" + addr, cfg: path, tmp: tmp, store: store}
	t.Cleanup(func() {
		if !r.stop(syscall.SIGTERM, 30*time.Second) {
			t.Errorf("%s did not stop within 30s of SIGTERM", name)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, tail(r.out.String(), 5000))
		}
	})
	if wait {
		if err := awaitStatus(r.base+"/readyz", http.StatusOK, 30*time.Second, r.proc); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, tail(r.out.String(), 4000))
		}
	}
	return r
}

// awaitStatus polls GET url until it answers status, for at most limit,
// failing early if p (when not nil) exits.
func awaitStatus(url string, status int, limit time.Duration, p *proc) error {
	deadline := time.Now().Add(limit)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}
	for {
		if p != nil && !p.alive() {
			return fmt.Errorf("%s exited", p.name)
		}
		res, err := client.Get(url)
		last := fmt.Sprint(err)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == status {
				return nil
			}
			last = res.Status
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET %s not %d within %v (last: %s)", url, status, limit, last)
		}
		pause(20 * time.Millisecond)
	}
}

// --- nginx -------------------------------------------------------------------

// nginxConf is the main configuration around the deploy template: what a
// distribution's /etc/nginx/nginx.conf does, in dir (pid, logs, temp
// files), with the rendered template included in http {}.
func nginxConf(dir, site string) string {
	return fmt.Sprintf(`# written by tests/deploy around deploy/nginx.conf.template
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 512; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    include %[2]s;
}
`, dir, site)
}

// renderTemplate fills in the template's dollar-brace fields as the nginx
// image's envsubst does for the variables given, and fails on any left.
func renderTemplate(t *testing.T, text string, fields map[string]string) string {
	t.Helper()
	for k, v := range fields {
		text = strings.ReplaceAll(text, "${"+k+"}", v)
	}
	if i := strings.Index(text, "${"); i >= 0 {
		t.Fatalf("the nginx template has a field the test does not fill: %q", tail(text[:min(len(text), i+20)], 40))
	}
	return text
}

type nginx struct {
	*proc
	addr string
	base string
	dir  string
}

// startNginx runs Debian's nginx on addr with deploy/nginx.conf.template
// (edited by edit, if not nil) in front of upstreams, and waits until GET
// /readyz through it is 200. It is stopped (SIGQUIT) when the test ends.
func startNginx(t *testing.T, addr string, upstreams [3]string, edit func(string) string) *nginx {
	t.Helper()
	requireNginx(t)
	tmpl, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "nginx.conf.template"))
	if err != nil {
		t.Fatal(err)
	}
	// Its own directory, which workers (nobody, when the master is root)
	// can enter; the master creates the temp paths and gives them to them.
	dir, err := os.MkdirTemp("", "signrelay-nginx-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	site := renderTemplate(t, string(tmpl), map[string]string{
		"NGINX_LISTEN": addr, "RELAY1": upstreams[0], "RELAY2": upstreams[1], "RELAY3": upstreams[2],
	})
	if edit != nil {
		site = edit(site)
	}
	sitePath := filepath.Join(dir, "signrelay.conf")
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(sitePath, []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(confPath, []byte(nginxConf(dir, sitePath)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nginxBin, "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "error.log"), "-g", "daemon off;")
	n := &nginx{proc: startProc(t, "nginx", cmd), addr: addr, base: "http://" + addr, dir: dir}
	t.Cleanup(func() {
		if !n.stop(syscall.SIGQUIT, 20*time.Second) {
			t.Errorf("nginx did not stop within 20s of SIGQUIT")
		}
		if t.Failed() {
			t.Logf("nginx output: %s\nerror.log:\n%s", n.out.String(), tail(n.errorLog(), 4000))
		}
	})
	if err := awaitStatus(n.base+"/readyz", http.StatusOK, 20*time.Second, n.proc); err != nil {
		t.Fatalf("nginx: %v", err)
	}
	return n
}

func (n *nginx) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "error.log"))
	return string(b)
}

// --- clients -----------------------------------------------------------------

// dialer connects from the loopback source address src ("" for any).
func dialer(src string) *websocket.Dialer {
	d := &net.Dialer{Timeout: step}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	return &websocket.Dialer{HandshakeTimeout: step, NetDial: d.Dial}
}

// httpFrom is an HTTP client whose connections come from src.
func httpFrom(src string) *http.Client {
	d := &net.Dialer{Timeout: step}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

type frame map[string]any

func (f frame) str(k string) string { s, _ := f[k].(string); return s }

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// holder is an introduced key holder; a goroutine reads its frames.
type holder struct {
	t      *testing.T
	conn   *websocket.Conn
	priv   ed25519.PrivateKey
	pub    ed25519.PublicKey
	frames chan frame
	done   chan struct{}
}

// connect dials url (ws://…/ws) from src with header and introduces a new key.
func connect(t *testing.T, url, src string, header http.Header) *holder {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	pub := priv.Public().(ed25519.PublicKey)
	ws, res, err := dialer(src).Dial(url, header)
	if err != nil {
		t.Fatalf("dial %s from %s: %v (%s)", url, src, err, describe(res))
	}
	_ = ws.SetReadDeadline(time.Now().Add(step))
	var ch frame
	if err := ws.ReadJSON(&ch); err != nil {
		t.Fatalf("reading the challenge: %v", err)
	}
	nonce, err := base64.StdEncoding.DecodeString(ch.str("nonce"))
	if ch.str("type") != "challenge" || err != nil || len(nonce) != 32 {
		t.Fatalf("bad challenge %v", ch)
	}
	_ = ws.SetWriteDeadline(time.Now().Add(step))
	if err := ws.WriteJSON(frame{"type": "introduction", "public_key": b64(pub),
		"signature": b64(ed25519.Sign(priv, append([]byte(introPrefix), nonce...)))}); err != nil {
		t.Fatal(err)
	}
	var got frame
	if err := ws.ReadJSON(&got); err != nil || got.str("type") != "introduced" {
		t.Fatalf("introduction: %v %v", got, err)
	}
	_ = ws.SetReadDeadline(time.Time{})
	h := &holder{t: t, conn: ws, priv: priv, pub: pub, frames: make(chan frame, 64), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			var f frame
			if err := ws.ReadJSON(&f); err != nil {
				return
			}
			h.frames <- f
		}
	}()
	t.Cleanup(func() { ws.Close(); <-h.done })
	return h
}

func describe(res *http.Response) string {
	if res == nil {
		return "no response"
	}
	body, _ := io.ReadAll(io.LimitReader(res.Body, 1024))
	return fmt.Sprintf("%s %s", res.Status, bytes.TrimSpace(body))
}

func (h *holder) approve(req frame) {
	h.t.Helper()
	msg, err := base64.StdEncoding.DecodeString(req.str("message"))
	if err != nil {
		h.t.Fatal(err)
	}
	_ = h.conn.SetWriteDeadline(time.Now().Add(step))
	if err := h.conn.WriteJSON(frame{"type": "sign_response", "request_id": req.str("request_id"),
		"message": req.str("message"), "signature": b64(ed25519.Sign(h.priv, msg))}); err != nil {
		h.t.Fatal(err)
	}
}

type signResult struct {
	status    int
	code      string
	signature string
	body      string
	err       error
}

// sign makes POST base/sign for pub and msg from src.
func sign(base, src string, pub ed25519.PublicKey, msg []byte) signResult {
	body, _ := json.Marshal(map[string]any{"public_key": b64(pub), "message": b64(msg), "timeout_ms": 15000})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/sign", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/json")
	res, err := httpFrom(src).Do(req)
	if err != nil {
		return signResult{err: err}
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var out struct {
		Signature string `json:"signature"`
		Error     struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(raw, &out)
	return signResult{status: res.StatusCode, code: out.Error.Code, signature: out.Signature, body: string(raw)}
}

func randomMessage(what string) []byte {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return []byte(what + " " + hex.EncodeToString(b))
}
