package deploy

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/signrelay/signrelay/config"
)

// composeFile is the part of compose.yaml these tests read.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Networks map[string]struct {
		IPAM struct {
			Config []struct {
				Subnet string `yaml:"subnet"`
			} `yaml:"config"`
		} `yaml:"ipam"`
	} `yaml:"networks"`
	Volumes map[string]any `yaml:"volumes"`
}

type composeService struct {
	Build       any               `yaml:"build"`
	Image       string            `yaml:"image"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	ReadOnly    bool              `yaml:"read_only"`
	Tmpfs       []string          `yaml:"tmpfs"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
	StopGrace   string            `yaml:"stop_grace_period"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	Networks map[string]struct {
		IPv4 string `yaml:"ipv4_address"`
	} `yaml:"networks"`
}

func readCompose(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return c
}

var interpRE = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-?])([^}]*))?\}`)

// interpolate does what compose does to a value: $$ is $, ${V} is V,
// ${V:-d} is V or d, ${V:?msg} is V or an error.
func interpolate(s string, env map[string]string) (string, error) {
	var bad error
	out := interpRE.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		g := interpRE.FindStringSubmatch(m)
		v := env[g[1]]
		switch {
		case v != "":
			return v
		case g[2] == "-":
			return g[3]
		case g[2] == "?":
			bad = fmt.Errorf("%s: %s", g[1], g[3])
		}
		return ""
	})
	return out, bad
}

// renderNodes runs deploy/render.sh as compose's relay-config service
// does (its entrypoint, after /deploy → deploy/ and /out → out) with env,
// and returns the rendered files by node.
func renderNodes(t *testing.T, env map[string]string, out string, nodes ...string) map[string]string {
	t.Helper()
	args := []string{filepath.Join(repoRoot, "deploy", "render.sh"), filepath.Join(repoRoot, "deploy", "node.yaml"), out}
	cmd := exec.Command("sh", append(args, nodes...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("render.sh %v: %v\n%s", nodes, err, b)
	}
	files := map[string]string{}
	for _, n := range nodes {
		files[n] = filepath.Join(out, n+".yaml")
	}
	return files
}

// loadConfig is the relay's own loading and validation of path, as the
// relay does it with -config path and no SIGNRELAY_* variables.
func loadConfig(t *testing.T, path string) config.Config {
	t.Helper()
	cfg, err := config.Load(path, true, func(string) string { return "" })
	if err != nil {
		data, _ := os.ReadFile(path)
		t.Fatalf("the relay refuses %s: %v\n%s", path, err, data)
	}
	return cfg
}

// The relay configuration compose.yaml makes: render deploy/node.yaml
// with the relay-config service's environment (interpolated as compose
// does), load every file with the relay's config package, and check that
// it agrees with the rest of compose.yaml, the Dockerfile and nginx.
func TestComposeConfiguration(t *testing.T) {
	c := readCompose(t)
	rc, ok := c.Services["relay-config"]
	if !ok {
		t.Fatal("compose.yaml has no relay-config service")
	}
	// The entrypoint runs render.sh on node.yaml for the relays.
	wantEntry := []string{"/bin/sh", "/deploy/render.sh", "/deploy/node.yaml", "/out"}
	if len(rc.Entrypoint) < 5 || !slices.Equal(rc.Entrypoint[:4], wantEntry) {
		t.Fatalf("relay-config's entrypoint %q, want %q and the node names", rc.Entrypoint, wantEntry)
	}
	nodes := rc.Entrypoint[4:]
	if !slices.Contains(rc.Volumes, "./deploy:/deploy:ro") || !slices.Contains(rc.Volumes, "relay-config:/out") {
		t.Fatalf("relay-config's volumes %q", rc.Volumes)
	}

	// What a person puts in .env, and what compose does without it.
	dotenv := map[string]string{"SIGNRELAY_API_KEY": "compose-test-api-key-0123456789", "SIGNRELAY_NATS_PASSWORD": "compose-test-nats-password-0123"}
	env := map[string]string{}
	for k, v := range rc.Environment {
		s, err := interpolate(v, dotenv)
		if err != nil {
			t.Fatalf("relay-config environment %s: %v", k, err)
		}
		env[k] = s
	}
	for _, k := range []string{"SIGNRELAY_API_KEY", "SIGNRELAY_NATS_PASSWORD"} {
		missing := map[string]string{}
		for kk, vv := range dotenv {
			if kk != k {
				missing[kk] = vv
			}
		}
		failed := false
		for _, v := range rc.Environment {
			if _, err := interpolate(v, missing); err != nil {
				failed = true
			}
		}
		if !failed {
			t.Errorf("compose.yaml starts without %s: it must refuse (${%s:?...})", k, k)
		}
	}
	delete(env, "OWNER") // chown is for the container's nonroot user
	files := renderNodes(t, env, t.TempDir(), nodes...)

	nginx, ok := c.Services["nginx"]
	if !ok {
		t.Fatal("compose.yaml has no nginx service")
	}
	nginxIP := ""
	for _, n := range nginx.Networks {
		nginxIP = n.IPv4
	}

	routes := map[string]bool{}
	for i, node := range nodes {
		cfg := loadConfig(t, files[node])
		svc, ok := c.Services[node]
		if !ok {
			t.Fatalf("relay-config renders %s, but compose.yaml has no such service", node)
		}
		inContainer := "/etc/signrelay/" + node + ".yaml"
		if !slices.Equal(svc.Command, []string{"-config", inContainer}) {
			t.Errorf("%s: command %q, want -config %s", node, svc.Command, inContainer)
		}
		if !slices.Equal(svc.Healthcheck.Test, []string{"CMD", "/signrelay", "healthcheck", "-config", inContainer}) {
			t.Errorf("%s: healthcheck %q, want the healthcheck subcommand on its own configuration", node, svc.Healthcheck.Test)
		}
		if !slices.Contains(svc.Volumes, "relay-config:/etc/signrelay:ro") {
			t.Errorf("%s: volumes %q, want relay-config read-only at /etc/signrelay", node, svc.Volumes)
		}
		if !svc.ReadOnly {
			t.Errorf("%s: read_only is not true", node)
		}
		if svc.DependsOn["relay-config"].Condition != "service_completed_successfully" {
			t.Errorf("%s: does not wait for relay-config to finish", node)
		}
		if cfg.Cluster.NodeID != node {
			t.Errorf("%s: cluster.node_id %q", node, cfg.Cluster.NodeID)
		}
		// The only directory the relay writes is a tmpfs of the container
		// (the root file system is read-only), owned by distroless's nonroot.
		store := cfg.Cluster.Embedded.StoreDir
		onTmpfs := false
		for _, tm := range svc.Tmpfs {
			dir, opts, _ := strings.Cut(tm, ":")
			if (store == dir || strings.HasPrefix(store, dir+"/")) && strings.Contains(opts, "uid=65532") {
				onTmpfs = true
			}
		}
		if store == "" || !onTmpfs {
			t.Errorf("%s: cluster.embedded.store_dir %q is not on a tmpfs the nonroot user owns (tmpfs %q)", node, store, svc.Tmpfs)
		}
		grace, err := time.ParseDuration(svc.StopGrace)
		if err != nil || grace < cfg.ShutdownGrace.D()+10*time.Second {
			t.Errorf("%s: stop_grace_period %q; the relay needs shutdown_grace %s and its drain before SIGKILL", node, svc.StopGrace, cfg.ShutdownGrace)
		}
		// nginx's upstream RELAYn is this relay's listen port.
		_, port, _ := net.SplitHostPort(cfg.Listen)
		if want := node + ":" + port; nginx.Environment[fmt.Sprintf("RELAY%d", i+1)] != want {
			t.Errorf("nginx RELAY%d = %q, want %q (the relay listens on %q)", i+1, nginx.Environment[fmt.Sprintf("RELAY%d", i+1)], want, cfg.Listen)
		}
		if h, _, _ := net.SplitHostPort(cfg.Listen); h != "" && h != "0.0.0.0" {
			t.Errorf("%s: listen %q is not reachable from nginx's container", node, cfg.Listen)
		}
		if len(svc.Ports) > 0 {
			t.Errorf("%s publishes %q: only nginx should be reachable from outside", node, svc.Ports)
		}
		// nginx, and only nginx, names clients.
		if !slices.Equal(cfg.TrustedProxies, []string{nginxIP}) {
			t.Errorf("%s: trusted_proxies %q, want nginx's address %q", node, cfg.TrustedProxies, nginxIP)
		}
		// Every relay routes to every relay, by service name.
		_, routePort, _ := net.SplitHostPort(cfg.Cluster.Embedded.ClusterListen)
		for _, r := range cfg.Cluster.Embedded.Routes {
			routes[r] = true
		}
		routes["want nats://"+node+":"+routePort] = true
		if !isLoopback(cfg.Cluster.Embedded.Listen) {
			t.Errorf("%s: the embedded NATS client port %q is open beyond the container", node, cfg.Cluster.Embedded.Listen)
		}
		if len(cfg.WebSocket.AllowedOrigins) != 1 {
			t.Errorf("%s: allowed_origins %q", node, cfg.WebSocket.AllowedOrigins)
		}
		if cfg.GeneratedAPIKey || cfg.APIKeys[0].Key != dotenv["SIGNRELAY_API_KEY"] {
			t.Errorf("%s: api_keys %v, want SIGNRELAY_API_KEY", node, cfg.APIKeys)
		}
	}
	for r := range routes {
		if want, ok := strings.CutPrefix(r, "want "); ok && !routes[want] {
			t.Errorf("the relays' routes lack %s", want)
		}
	}
	if nginxIP == "" {
		t.Fatal("nginx has no fixed address for trusted_proxies")
	}
	inSubnet := false
	for _, n := range c.Networks {
		for _, sn := range n.IPAM.Config {
			if p, err := config.ParsePrefix(sn.Subnet); err == nil {
				a, _ := config.ParsePrefix(nginxIP)
				inSubnet = inSubnet || p.Contains(a.Addr())
			}
		}
	}
	if !inSubnet {
		t.Errorf("nginx's address %s is not in a network's subnet", nginxIP)
	}

	// nginx: the template from deploy/, the page's origin, relays healthy first.
	if !slices.Contains(nginx.Volumes, "./deploy/nginx.conf.template:/etc/nginx/templates/default.conf.template:ro") {
		t.Errorf("nginx volumes %q: want deploy/nginx.conf.template as the image's template", nginx.Volumes)
	}
	for _, n := range nodes {
		if nginx.DependsOn[n].Condition != "service_healthy" {
			t.Errorf("nginx does not wait for %s to be healthy", n)
		}
	}
	if len(nginx.Ports) != 1 {
		t.Fatalf("nginx ports %q, want one", nginx.Ports)
	}
	parts := strings.Split(nginx.Ports[0], ":")
	if len(parts) != 3 || parts[0] != "127.0.0.1" || parts[2] != nginx.Environment["NGINX_LISTEN"] {
		t.Errorf("nginx publishes %q, want 127.0.0.1:PORT:%s (its NGINX_LISTEN)", nginx.Ports[0], nginx.Environment["NGINX_LISTEN"])
	}
	cfg := loadConfig(t, files[nodes[0]])
	if want := "http://127.0.0.1:" + parts[1]; cfg.WebSocket.AllowedOrigins[0] != want {
		t.Errorf("allowed_origins %q by default, want the published address %s", cfg.WebSocket.AllowedOrigins, want)
	}

	// The relays are built from the Dockerfile.
	for _, n := range nodes {
		if c.Services[n].Build == nil || c.Services[n].Image == "" {
			t.Errorf("%s: no build (the Dockerfile) or image name", n)
		}
	}
}

func isLoopback(hostport string) bool {
	h, _, err := net.SplitHostPort(hostport)
	ip := net.ParseIP(h)
	return err == nil && (h == "localhost" || ip != nil && ip.IsLoopback())
}

// The nginx template's timeouts are longer than twice the relays'
// websocket.ping_interval and than the longest request wait, and it sets
// the headers the relays rely on.
func TestNginxTemplateTimeouts(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "nginx.conf.template"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	dir := t.TempDir()
	cfg := loadConfig(t, renderNodes(t, loopbackFields(dir, 1, 2, 3, nil, "127.0.0.1:1"), dir, "n1")["n1"])
	need := max(2*cfg.WebSocket.PingInterval.D(), cfg.Sign.MaxTimeout.D(), 60*time.Second /* wait_ms at most */)
	for _, d := range []string{"proxy_read_timeout", "proxy_send_timeout"} {
		m := regexp.MustCompile(`(?m)^\s*` + d + `\s+(\d+)s;`).FindStringSubmatch(text)
		if m == nil {
			t.Errorf("no %s in seconds", d)
			continue
		}
		n, _ := strconv.Atoi(m[1])
		if got := time.Duration(n) * time.Second; got <= need {
			t.Errorf("%s %v, want more than %v (2 × ping_interval %v, sign.max_timeout %v)", d, got, need, cfg.WebSocket.PingInterval, cfg.Sign.MaxTimeout)
		}
	}
	for _, want := range []string{
		"proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
		"proxy_set_header Connection $signrelay_connection;", "proxy_set_header X-Forwarded-For $remote_addr;",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the nginx template lacks %q", want)
		}
	}
}

// The Dockerfile: a distroless static nonroot image whose health check is
// the subcommand, and its default configuration loads.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, want := range []string{
		"FROM gcr.io/distroless/static-debian12:nonroot",
		"USER nonroot:nonroot",
		`CMD ["/signrelay", "healthcheck"]`,
		`ENTRYPOINT ["/signrelay"]`,
		"COPY --chmod=0444 deploy/image.yaml /etc/signrelay/config.yaml",
		"WORKDIR /etc/signrelay",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the Dockerfile lacks %q", want)
		}
	}
	if !regexp.MustCompile(`(?m)^HEALTHCHECK .*CMD \["/signrelay", "healthcheck"\]$`).MatchString(text) {
		t.Error("no HEALTHCHECK running /signrelay healthcheck")
	}
	cfg := loadConfig(t, filepath.Join(repoRoot, "deploy", "image.yaml"))
	if h, p, _ := net.SplitHostPort(cfg.Listen); h != "" || p != "8080" || !strings.Contains(text, "EXPOSE 8080") {
		t.Errorf("the image's configuration listens on %q; want :8080, EXPOSEd", cfg.Listen)
	}
	// Nothing the build needs is left out of the context; .git stays in.
	ignore, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(ignore), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for _, needed := range []string{".git", "go.mod", "go.sum", "deploy", "main.go", "web"} {
			if strings.TrimPrefix(line, "/") == needed {
				t.Errorf(".dockerignore leaves out %s, which the build needs", needed)
			}
		}
	}
}

// loopbackFields are render.sh's fields for one node on loopback ports.
func loopbackFields(dir string, httpPort, natsPort, routePort int, routes []int, origin string) map[string]string {
	if routes == nil {
		routes = []int{routePort}
	}
	var rs []string
	for _, p := range routes {
		rs = append(rs, "nats://127.0.0.1:"+strconv.Itoa(p))
	}
	return map[string]string{
		"HTTP_LISTEN":     "127.0.0.1:" + strconv.Itoa(httpPort),
		"API_KEY":         apiKey,
		"PUBLIC_ORIGIN":   "http://" + origin,
		"TRUSTED_PROXIES": "127.0.0.1",
		"NATS_LISTEN":     "127.0.0.1:" + strconv.Itoa(natsPort),
		"ROUTE_LISTEN":    "127.0.0.1:" + strconv.Itoa(routePort),
		"ROUTES":          strings.Join(rs, ", "),
		"NATS_PASSWORD":   "deploy-test-nats-password-0123",
		"STORE_DIR":       filepath.Join(dir, "jetstream-"+strconv.Itoa(httpPort)),
	}
}

// docs/deploy.md shows the nginx configuration: every line of its block
// is in deploy/nginx.conf.template, so that the page cannot drift from the
// file that is tested.
func TestDeployDocShowsTheTemplate(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "nginx.conf.template"))
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, l := range strings.Split(string(tmpl), "\n") {
		have[strings.Join(strings.Fields(l), " ")] = true
	}
	blocks := regexp.MustCompile("(?s)```nginx\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	found := false
	for _, b := range blocks {
		if !strings.Contains(b[1], "upstream signrelay {") {
			continue
		}
		found = true
		for _, l := range strings.Split(b[1], "\n") {
			l = strings.Join(strings.Fields(l), " ")
			if l != "" && !strings.HasPrefix(l, "#") && !have[l] {
				t.Errorf("docs/deploy.md shows %q, which deploy/nginx.conf.template does not have", l)
			}
		}
	}
	if !found {
		t.Fatal("docs/deploy.md has no nginx block with the upstream")
	}
}
