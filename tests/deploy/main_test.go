// Package deploy tests what the repository ships for running the relay in
// production: the container build, compose.yaml, and the relay behind a
// real nginx.
//
//   - TestMain builds the relay once with the Dockerfile's own `go build`
//     line (read from the Dockerfile), and every test runs that binary.
//   - static_test.go: the binary is static (no ELF interpreter, no shared
//     libraries), and -version names the build.
//   - compose_test.go: compose.yaml, the Dockerfile and deploy/ agree, and
//     the relay configuration compose renders loads and validates with the
//     relay's own config package.
//   - proxy_test.go: three relays from that configuration and Debian's
//     nginx from deploy/nginx.conf.template, as real processes on free
//     loopback ports: WebSockets and POST /sign through nginx, rate limits
//     keyed by the client address nginx names, spoofed X-Forwarded-For
//     headers ignored, and `signrelay healthcheck` against a running and a
//     stopped relay.
//
// nginx is NGINX, or nginx on PATH, or /usr/sbin/nginx (apt-get install
// nginx; .ci/run does). Without it the nginx tests are skipped, unless
// CI=true: in CI a missing nginx fails them. Nothing sleeps to
// synchronise; every wait is bounded.
package deploy

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var (
	repoRoot  string
	relayBin  string   // built as the Dockerfile builds it
	buildLine []string // the Dockerfile's go build command, as run
	nginxBin  string   // "" when none was found
)

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploy:", err)
		return 1
	}
	repoRoot = root
	dir, err := os.MkdirTemp("", "signrelay-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploy:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	relayBin = filepath.Join(dir, "signrelay")
	env, args, err := dockerfileBuild(filepath.Join(repoRoot, "Dockerfile"), relayBin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploy:", err)
		return 1
	}
	buildLine = append(append([]string{}, env...), args...)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = repoRoot
	// The builder image has no GOFLAGS; a -buildvcs=false here would drop
	// the revision that -version prints.
	cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=auto")
	cmd.Env = append(cmd.Env, env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "deploy: %s: %v\n%s", strings.Join(buildLine, " "), err, out)
		return 1
	}
	nginxBin = findNginx()
	return m.Run()
}

// dockerfileBuild reads the Dockerfile's RUN line that runs go build and
// returns its environment assignments and its command, with -o pointed
// at out.
func dockerfileBuild(path, out string) (env, args []string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "RUN ") || !strings.Contains(line, "go build") {
			continue
		}
		words, err := shellWords(strings.TrimPrefix(line, "RUN "))
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %q: %v", path, line, err)
		}
		i := 0
		for ; i < len(words) && strings.HasPrefix(words[i], "--mount="); i++ {
		}
		for ; i < len(words) && strings.Contains(words[i], "=") && !strings.HasPrefix(words[i], "-"); i++ {
			env = append(env, words[i])
		}
		args = words[i:]
		for j := range args {
			if args[j] == "-o" && j+1 < len(args) {
				args[j+1] = out
				return env, args, nil
			}
		}
		return nil, nil, fmt.Errorf("%s: the go build line has no -o: %q", path, line)
	}
	return nil, nil, fmt.Errorf("%s: no RUN line with go build", path)
}

// shellWords splits s as sh would for words, double and single quotes,
// with no expansions (the Dockerfile's build line needs no more).
func shellWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	in, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			cur.WriteByte(c)
		case c == '"' || c == '\'':
			quote, in = c, true
		case c == ' ' || c == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		case c == '$' || c == '`' || c == '\\' || c == '&' || c == ';' || c == '|':
			return nil, fmt.Errorf("%q at %d: more shell than this test reads", c, i)
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c", quote)
	}
	if in {
		words = append(words, cur.String())
	}
	return words, nil
}

func findNginx() string {
	if p := os.Getenv("NGINX"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "" // as asked: that one, or none
		}
		return p
	}
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	return ""
}

// inCI reports whether the run is CI's, where nothing may be skipped for a
// missing tool (as in tests/cluster).
func inCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1"
}

func requireNginx(t *testing.T) {
	t.Helper()
	if nginxBin != "" {
		return
	}
	msg := "no nginx (not at $NGINX, or on PATH or in /usr/sbin); install it with: apt-get install -y nginx (.ci/run does)"
	if inCI() {
		t.Fatal(msg + " — CI=true, so this is a failure, not a skip")
	}
	t.Skip(msg)
}
