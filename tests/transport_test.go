package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// expectErrorBody checks the contract's error body shape,
// {"error":{"code","message"}}, with code when code is not empty, and
// returns the code.
func expectErrorBody(t *testing.T, header http.Header, raw []byte, code string) string {
	t.Helper()
	if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("Content-Type %q, want application/json (body %q)", ct, raw)
	}
	var body struct {
		Error *struct {
			Code    *string `json:"code"`
			Message *string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &body); err != nil || body.Error == nil || body.Error.Code == nil || body.Error.Message == nil {
		t.Fatalf("body %q is not {\"error\":{\"code\",\"message\"}}", raw)
	}
	if *body.Error.Code == "" || *body.Error.Message == "" {
		t.Fatalf("empty code or message in %q", raw)
	}
	if code != "" && *body.Error.Code != code {
		t.Fatalf("error code %q, want %q (body %q)", *body.Error.Code, code, raw)
	}
	return *body.Error.Code
}

// expectRefusedUpgrade checks that a WebSocket dial was refused before the
// upgrade with status and a JSON error body with code.
func expectRefusedUpgrade(t *testing.T, conn *websocket.Conn, res *http.Response, err error, status int, code string) {
	t.Helper()
	if err == nil {
		t.Fatalf("upgrade succeeded, want %d %s", status, code)
	}
	if res == nil {
		t.Fatalf("dial failed without an HTTP answer (%v), want %d %s", err, status, code)
	}
	if res.StatusCode != status {
		t.Fatalf("upgrade answered %d, want %d %s", res.StatusCode, status, code)
	}
	raw, _ := io.ReadAll(res.Body)
	expectErrorBody(t, res.Header, raw, code)
}

func TestLivenessUnansweredPingsDisconnect(t *testing.T) {
	const interval = 100 * time.Millisecond
	r := startRelay(t, func(c *config.Config) { c.WebSocket.PingInterval = config.Duration(interval) })
	h := r.connect(t, nil)

	// From now on the client reads only raw bytes: pings reach it but the
	// WebSocket library never sees them, so no pong goes back.
	nc := h.conn.NetConn()
	_ = nc.SetReadDeadline(time.Now().Add(wait))
	start := time.Now()
	var seen bytes.Buffer
	_, err := io.Copy(&seen, nc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("still connected %v after the last pong; want the relay to close it", time.Since(start))
	}
	if elapsed := time.Since(start); elapsed < interval {
		t.Fatalf("disconnected after %v, before even one ping interval (%v)", elapsed, interval)
	}
	// Server frames are unmasked; a ping without payload is 0x89 0x00.
	if !bytes.Contains(seen.Bytes(), []byte{0x89, 0x00}) {
		t.Fatalf("no ping frame among the %d bytes the relay sent: % x", seen.Len(), seen.Bytes())
	}
	// The connection is gone from the registry at once.
	expectError(t, r.post(signBody(h.pub, []byte("anyone?"), nil)), http.StatusNotFound, "not_connected")
}

func TestLivenessAnsweredPingsStayConnected(t *testing.T) {
	// A silent peer is dropped after two intervals; this one answers and is
	// still served after three. (Not 100ms: a loaded CI machine must not
	// turn a late pong into a false failure.)
	const interval = 250 * time.Millisecond
	r := startRelay(t, func(c *config.Config) { c.WebSocket.PingInterval = config.Duration(interval) })
	h := r.connect(t, nil)

	pings := make(chan struct{}, 64)
	h.conn.SetPingHandler(func(data string) error {
		select {
		case pings <- struct{}{}:
		default:
		}
		return h.conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	frames := make(chan frame, 16)
	ended := make(chan error, 1)
	_ = h.conn.SetReadDeadline(time.Now().Add(2 * wait))
	go func() {
		for {
			_, data, err := h.conn.ReadMessage()
			if err != nil {
				ended <- err
				return
			}
			var f frame
			if json.Unmarshal(data, &f) == nil {
				frames <- f
			}
		}
	}()

	for i := 0; i < 3; i++ {
		select {
		case <-pings:
		case err := <-ended:
			t.Fatalf("connection ended after %d pings: %v", i, err)
		case <-time.After(wait):
			t.Fatalf("ping %d never came", i+1)
		}
	}
	msg := []byte("still alive")
	res := r.signAsync(signBody(h.pub, msg, nil))
	select {
	case f := <-frames:
		if f.str("type") != protocol.TypeSignRequest {
			t.Fatalf("got %v, want sign_request", f)
		}
		h.approve(f)
	case err := <-ended:
		t.Fatalf("connection ended: %v", err)
	case <-time.After(wait):
		t.Fatal("no sign_request")
	}
	verifyResult(t, awaitResp(t, res), h.pub, msg)
}

// TestIntroducedIsRoutableAtOnce: a key holder may ask for work the moment
// it reads "introduced" (clause 3), so a POST /sign sent right then must
// reach it, never 404. The window is small: repeat.
func TestIntroducedIsRoutableAtOnce(t *testing.T) {
	r := startRelay(t, nil)
	for i := 0; i < 100; i++ {
		h := r.connect(t, nil)
		got := r.post(signBody(h.pub, []byte("right away"), map[string]any{"timeout_ms": 1}))
		if got.Status == http.StatusNotFound {
			t.Fatalf("attempt %d: POST /sign right after \"introduced\" got 404 %s: the connection was not yet routable", i, got.RawBody)
		}
		expectError(t, got, http.StatusGatewayTimeout, "timeout")
		h.expect(protocol.TypeSignRequest)
		h.conn.Close()
	}
}

func TestOriginCheck(t *testing.T) {
	for _, tc := range []struct {
		name    string
		allowed []string
		origin  string // "" sends no Origin header
		ok      bool
	}{
		{"allowed origin", []string{"https://good.example"}, "https://good.example", true},
		{"no Origin header (not a browser)", []string{"https://good.example"}, "", true},
		{"other origin", []string{"https://good.example"}, "https://evil.example", false},
		{"other scheme", []string{"https://good.example"}, "http://good.example", false},
		{"suffix trick", []string{"https://good.example"}, "https://good.example.evil.example", false},
		{"second of several", []string{"https://a.example", "https://good.example"}, "https://good.example", true},
		{"any origin when none configured", nil, "https://evil.example", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRelay(t, func(c *config.Config) { c.WebSocket.AllowedOrigins = tc.allowed })
			hdr := http.Header{}
			if tc.origin != "" {
				hdr.Set("Origin", tc.origin)
			}
			conn, res, err := r.dial(t, hdr)
			if !tc.ok {
				expectRefusedUpgrade(t, conn, res, err, http.StatusForbidden, "forbidden_origin")
				return
			}
			if err != nil {
				t.Fatalf("upgrade with Origin %q: %v", tc.origin, err)
			}
			introduceConn(t, conn)
		})
	}
}

func TestHTTPSurface(t *testing.T) {
	r := startRelay(t, nil)
	for _, tc := range []struct {
		name   string
		method string
		path   string
		status int
		check  func(t *testing.T, res *http.Response, body []byte)
	}{
		{"GET / serves the page", http.MethodGet, "/", http.StatusOK, func(t *testing.T, res *http.Response, body []byte) {
			if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
				t.Fatalf("Content-Type %q, want text/html", ct)
			}
			if res.Header.Get("Content-Security-Policy") == "" {
				t.Fatal("no Content-Security-Policy header")
			}
			if !bytes.Contains(bytes.ToLower(body), []byte("<html")) {
				t.Fatalf("body is not an HTML page: %.200q", body)
			}
		}},
		{"unknown path", http.MethodGet, "/no/such/thing", http.StatusNotFound, func(t *testing.T, res *http.Response, body []byte) {
			expectErrorBody(t, res.Header, body, "")
		}},
		{"GET /ws without upgrade", http.MethodGet, "/ws", http.StatusUpgradeRequired, func(t *testing.T, res *http.Response, body []byte) {
			expectErrorBody(t, res.Header, body, "")
		}},
		{"GET /sign", http.MethodGet, "/sign", http.StatusMethodNotAllowed, func(t *testing.T, res *http.Response, body []byte) {
			expectErrorBody(t, res.Header, body, "method_not_allowed")
			if res.Header.Get("Allow") != http.MethodPost {
				t.Fatalf("Allow %q, want POST", res.Header.Get("Allow"))
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, r.base+tc.path, nil)
			res, err := r.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(res.Body)
			if tc.status != 0 && res.StatusCode != tc.status {
				t.Fatalf("%s %s: %d, want %d (%.200q)", tc.method, tc.path, res.StatusCode, tc.status, body)
			}
			tc.check(t, res, body)
		})
	}
}

// buildRelay builds the relay binary once per test into a temporary directory.
func buildRelay(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on PATH")
	}
	bin := filepath.Join(t.TempDir(), "signrelay")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", bin, "github.com/signrelay/signrelay")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// relayEnv is the test's environment without SIGNRELAY_* overrides.
func relayEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIGNRELAY_") {
			env = append(env, kv)
		}
	}
	return env
}

// binaryProcess is a running relay binary whose stderr is being read.
type binaryProcess struct {
	cmd     *exec.Cmd
	addr    string
	logDone chan string // the whole stderr, once it closes
	exited  bool
}

// startBinary runs the relay with -config cfgPath and waits for its
// msg=listening line.
func startBinary(t *testing.T, bin, dir, cfgPath string) *binaryProcess {
	t.Helper()
	cmd := exec.Command(bin, "-config", cfgPath)
	cmd.Env = relayEnv()
	cmd.Dir = dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &binaryProcess{cmd: cmd, logDone: make(chan string, 1)}
	t.Cleanup(func() {
		if !p.exited {
			_ = cmd.Process.Kill()
			<-p.logDone
			_ = cmd.Wait()
		}
	})
	listening := regexp.MustCompile(`msg=listening .*\baddr=(\S+)`)
	addrc := make(chan string, 1)
	go func() {
		var all strings.Builder
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			all.WriteString(line + "\n")
			if m := listening.FindStringSubmatch(line); m != nil {
				select {
				case addrc <- m[1]:
				default:
				}
			}
		}
		p.logDone <- all.String()
	}()
	select {
	case p.addr = <-addrc:
	case log := <-p.logDone:
		p.logDone <- log
		t.Fatalf("relay exited before listening:\n%s", log)
	case <-time.After(wait):
		t.Fatal("no msg=listening log line")
	}
	if host, _, err := net.SplitHostPort(p.addr); err != nil || host != "127.0.0.1" {
		t.Fatalf("listening on %q, want 127.0.0.1:port", p.addr)
	}
	return p
}

// stop sends SIGTERM and checks a clean exit (status 0) within a bound.
func (p *binaryProcess) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var log string
	select {
	case log = <-p.logDone: // stderr closed: the process is exiting
	case <-time.After(wait):
		t.Fatal("relay still running after SIGTERM")
	}
	err := p.cmd.Wait()
	p.exited = true
	if err != nil {
		t.Fatalf("exit after SIGTERM: %v, want status 0\n%s", err, log)
	}
	if !strings.Contains(log, "msg=stopped") {
		t.Fatalf("no msg=stopped log line:\n%s", log)
	}
}

func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildRelay(t)
	dir := t.TempDir()
	writeConfig := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	goodConfig := writeConfig("good.yaml", "listen: 127.0.0.1:0\napi_keys: [binary-test-key-0123456789]\nshutdown_grace: 1s\n")

	t.Run("serves and stops on SIGTERM", func(t *testing.T) {
		p := startBinary(t, bin, dir, goodConfig)
		client := &http.Client{Timeout: wait}
		res, err := client.Get("http://" + p.addr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || !bytes.Contains(raw, []byte(`"ok"`)) {
			t.Fatalf("healthz: %d %s", res.StatusCode, raw)
		}
		client.CloseIdleConnections()
		p.stop(t)
	})

	// "listening" is the signal a supervisor waits for; from then on a
	// SIGTERM must be a graceful stop, never the default kill.
	t.Run("SIGTERM as soon as it logs listening", func(t *testing.T) {
		for i := 0; i < 10; i++ {
			startBinary(t, bin, dir, goodConfig).stop(t)
		}
	})

	for _, tc := range []struct {
		name, config, key string
	}{
		{"unknown key", "listen: 127.0.0.1:0\nsign:\n  max_timout: 10s\n", "sign.max_timout"},
		{"timeout out of range", "listen: 127.0.0.1:0\nsign:\n  max_timeout: 61s\n", "sign.max_timeout"},
		{"bad duration", "listen: 127.0.0.1:0\nwebsocket:\n  ping_interval: often\n", "websocket.ping_interval"},
	} {
		t.Run("broken config: "+tc.name, func(t *testing.T) {
			cfgPath := writeConfig(strings.ReplaceAll(tc.name, " ", "_")+".yaml", tc.config)
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "-config", cfgPath)
			cmd.Env = relayEnv()
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 || ctx.Err() != nil {
				t.Fatalf("run: %v, want a non-zero exit\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.key) {
				t.Fatalf("message does not name %s:\n%s", tc.key, out)
			}
		})
	}
	t.Run("missing -config file", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "-config", filepath.Join(dir, "nope.yaml"))
		cmd.Env = relayEnv()
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Fatalf("run: %v, want a non-zero exit\n%s", err, out)
		}
	})
}
