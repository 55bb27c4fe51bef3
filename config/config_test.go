package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadErrorsNameTheKey(t *testing.T) {
	existing := writeFile(t, "not a real key file")
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct {
		name string
		yaml string
		env  map[string]string
		key  string // the dotted key the message must name
	}{
		{"unknown top-level key", "listn: 127.0.0.1:1\n", nil, "listn"},
		{"unknown nested key", "sign:\n  max_timout: 10s\n", nil, "sign.max_timout"},
		{"unknown key in a flow mapping", "rate_limits:\n  sign_per_api_key: { rate: 1, brust: 2 }\n", nil, "rate_limits.sign_per_api_key.brust"},
		{"bad duration", "websocket:\n  ping_interval: soon\n", nil, "websocket.ping_interval"},
		{"duration without unit", "shutdown_grace: 10\n", nil, "shutdown_grace"},
		{"ill-typed number", "sign:\n  max_message_bytes: lots\n", nil, "sign.max_message_bytes"},
		{"max_timeout over 60s", "sign:\n  max_timeout: 61s\n", nil, "sign.max_timeout"},
		{"max_timeout zero", "sign:\n  max_timeout: 0s\n", nil, "sign.max_timeout"},
		{"default_timeout over max_timeout", "sign:\n  default_timeout: 30s\n  max_timeout: 20s\n", nil, "sign.default_timeout"},
		{"max_pending_per_key zero", "sign:\n  max_pending_per_key: 0\n", nil, "sign.max_pending_per_key"},
		{"frame limit too small", "websocket:\n  max_frame_bytes: 10\n", nil, "websocket.max_frame_bytes"},
		{"origin with a path", "websocket:\n  allowed_origins: [https://a.example/x]\n", nil, "websocket.allowed_origins[0]"},
		{"rate of zero while enabled", "rate_limits:\n  enabled: true\n  connections_per_ip: { rate: 0, burst: 1 }\n", nil, "rate_limits.connections_per_ip"},
		{"bad trusted proxy", "trusted_proxies: [not-an-ip]\n", nil, "trusted_proxies[0]"},
		{"tls cert file missing", "tls: { cert_file: " + missing + ", key_file: " + existing + " }\n", nil, "tls.cert_file"},
		{"tls key file missing", "tls: { cert_file: " + existing + ", key_file: " + missing + " }\n", nil, "tls.key_file"},
		{"bad log level", "log_level: loud\n", nil, "log_level"},
		{"negative max_connections", "http:\n  max_connections: -1\n", nil, "http.max_connections"},
		{"header_timeout too short", "http:\n  header_timeout: 1ms\n", nil, "http.header_timeout"},
		{"max_pending zero", "sign:\n  max_pending: 0\n", nil, "sign.max_pending"},
		{"pending bytes below one message", "sign:\n  max_pending_bytes_per_api_key: 10\n", nil, "sign.max_pending_bytes_per_api_key"},
		{"connections per key zero", "websocket:\n  max_connections_per_key: 0\n", nil, "websocket.max_connections_per_key"},
		{"unintroduced per IP over total", "websocket:\n  max_unintroduced: 4\n  max_unintroduced_per_ip: 5\n", nil, "websocket.max_unintroduced_per_ip"},
		{"auth failure rate zero", "rate_limits:\n  auth_failures_per_ip: { rate: 0, burst: 1 }\n", nil, "rate_limits.auth_failures_per_ip"},
		{"bad listen from the environment", "", map[string]string{"SIGNRELAY_LISTEN": "nonsense"}, "listen"},
		{"api key padded with spaces", "api_keys: [\" padded-key-0123456789 \"]\n", nil, "api_keys[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeFile(t, tc.yaml), true, envOf(tc.env))
			if err == nil {
				t.Fatalf("Load accepted %q", tc.yaml)
			}
			if !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("error %q does not name %s", err, tc.key)
			}
			if strings.Count(err.Error(), "\n") > 0 {
				t.Fatalf("error %q is not one line", err)
			}
		})
	}
}

func TestLoadRequiredFileMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	if _, err := Load(missing, true, envOf(nil)); err == nil {
		t.Fatal("a missing -config file was accepted")
	}
	cfg, err := Load(missing, false, envOf(nil))
	if err != nil {
		t.Fatalf("missing default config.yaml: %v, want the defaults", err)
	}
	want := Default()
	want.APIKeys, want.GeneratedAPIKey = cfg.APIKeys, true
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got %+v, want the defaults %+v", cfg, want)
	}
}

func TestLoadEnvironmentOverrides(t *testing.T) {
	file := "listen: 127.0.0.1:1111\napi_keys: [file-key-0123456789abcdef]\n"
	for _, tc := range []struct {
		name      string
		env       map[string]string
		listen    string
		keys      []string
		generated bool
	}{
		{"file only", nil, "127.0.0.1:1111", []string{"file-key-0123456789abcdef"}, false},
		{"SIGNRELAY_LISTEN", map[string]string{"SIGNRELAY_LISTEN": "127.0.0.1:2222"}, "127.0.0.1:2222", []string{"file-key-0123456789abcdef"}, false},
		{
			"SIGNRELAY_API_KEYS, comma-separated and trimmed",
			map[string]string{"SIGNRELAY_API_KEYS": " env-key-one-0123456789 ,env-key-two-0123456789,,"},
			"127.0.0.1:1111", []string{"env-key-one-0123456789", "env-key-two-0123456789"}, false,
		},
		{
			"both",
			map[string]string{"SIGNRELAY_LISTEN": "0.0.0.0:3333", "SIGNRELAY_API_KEYS": "env-key-0123456789abcdef"},
			"0.0.0.0:3333", []string{"env-key-0123456789abcdef"}, false,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(writeFile(t, file), true, envOf(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Listen != tc.listen || !reflect.DeepEqual(cfg.APIKeys, BareKeys(tc.keys...)) || cfg.GeneratedAPIKey != tc.generated {
				t.Fatalf("listen %q keys %q generated %v, want %q %q %v", cfg.Listen, cfg.APIKeys, cfg.GeneratedAPIKey, tc.listen, tc.keys, tc.generated)
			}
		})
	}
}

func TestLoadGeneratesAPIKey(t *testing.T) {
	seen := map[string]bool{}
	for _, tc := range []struct {
		name string
		yaml string
		env  map[string]string
	}{
		{"no api_keys", "listen: 127.0.0.1:1\n", nil},
		{"empty api_keys", "api_keys: []\n", nil},
		{"empty file", "", nil},
		{"only separators in SIGNRELAY_API_KEYS", "api_keys: []\n", map[string]string{"SIGNRELAY_API_KEYS": " , ,"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Load(writeFile(t, tc.yaml), true, envOf(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if !cfg.GeneratedAPIKey || len(cfg.APIKeys) != 1 {
				t.Fatalf("keys %q generated %v, want one generated key", cfg.APIKeys, cfg.GeneratedAPIKey)
			}
			k := cfg.APIKeys[0].Key
			if len(k) < 32 || strings.TrimSpace(k) != k || strings.ContainsAny(k, " ,\n") {
				t.Fatalf("generated key %q: want at least 32 characters, no spaces or commas", k)
			}
			if seen[k] {
				t.Fatalf("generated key %q twice", k)
			}
			seen[k] = true
		})
	}
}

func TestLoadValues(t *testing.T) {
	cfg, err := Load(writeFile(t, `
listen: 127.0.0.1:9000
api_keys: [k-0123456789abcdef]
sign: { default_timeout: 5s, max_timeout: 30s, max_message_bytes: 100, max_pending_per_key: 3 }
websocket: { introduction_timeout: 2s, ping_interval: 250ms, max_frame_bytes: 4096, allowed_origins: [https://a.example] }
rate_limits: { enabled: false }
trusted_proxies: [10.0.0.0/8, 192.168.1.1]
shutdown_grace: 1m30s
`), true, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"sign.default_timeout", cfg.Sign.DefaultTimeout.D(), 5 * time.Second},
		{"sign.max_timeout", cfg.Sign.MaxTimeout.D(), 30 * time.Second},
		{"sign.max_message_bytes", cfg.Sign.MaxMessageBytes, 100},
		{"sign.max_pending_per_key", cfg.Sign.MaxPendingPerKey, 3},
		{"websocket.introduction_timeout", cfg.WebSocket.IntroductionTimeout.D(), 2 * time.Second},
		{"websocket.ping_interval", cfg.WebSocket.PingInterval.D(), 250 * time.Millisecond},
		{"websocket.max_frame_bytes", cfg.WebSocket.MaxFrameBytes, 4096},
		{"websocket.allowed_origins", cfg.WebSocket.AllowedOrigins, []string{"https://a.example"}},
		{"rate_limits.enabled", cfg.RateLimits.Enabled, false},
		{"trusted_proxies", cfg.TrustedProxies, []string{"10.0.0.0/8", "192.168.1.1"}},
		{"shutdown_grace", cfg.ShutdownGrace.D(), 90 * time.Second},
		{"websocket.send_queue (default kept)", cfg.WebSocket.SendQueue, Default().WebSocket.SendQueue},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// The shipped config.yaml documents the defaults: loading it gives Default().
func TestShippedConfigIsTheDefaults(t *testing.T) {
	cfg, err := Load(filepath.Join("..", "config.yaml"), true, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.APIKeys, want.GeneratedAPIKey = cfg.APIKeys, true
	want.TrustedProxies, want.WebSocket.AllowedOrigins = cfg.TrustedProxies, cfg.WebSocket.AllowedOrigins
	want.Cluster.Embedded.Routes = cfg.Cluster.Embedded.Routes
	if len(cfg.TrustedProxies) != 0 || len(cfg.WebSocket.AllowedOrigins) != 0 || len(cfg.Cluster.Embedded.Routes) != 0 {
		t.Fatalf("config.yaml sets trusted_proxies %q, allowed_origins %q or cluster.embedded.routes %q",
			cfg.TrustedProxies, cfg.WebSocket.AllowedOrigins, cfg.Cluster.Embedded.Routes)
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("config.yaml gives %+v, want the defaults %+v", cfg, want)
	}
}

func TestClusterErrorsNameTheKey(t *testing.T) {
	existing := writeFile(t, "not a real key file")
	missing := filepath.Join(t.TempDir(), "missing.creds")
	ext := "cluster:\n  nats_url: nats://127.0.0.1:4222\n"
	emb := "cluster:\n  embedded:\n    listen: 127.0.0.1:4222\n"
	for _, tc := range []struct {
		name, yaml, key string
	}{
		{"unknown cluster key", "cluster:\n  nats_uri: nats://a:1\n", "cluster.nats_uri"},
		{"unknown embedded key", "cluster:\n  embedded:\n    listen_addr: a:1\n", "cluster.embedded.listen_addr"},
		{"nats_url without scheme", "cluster:\n  nats_url: 127.0.0.1:4222\n", "cluster.nats_url"},
		{"nats_url with another scheme", "cluster:\n  nats_url: http://127.0.0.1:4222\n", "cluster.nats_url"},
		{"nats_url without port", "cluster:\n  nats_url: nats://127.0.0.1\n", "cluster.nats_url"},
		{"nats_url with a bad second entry", "cluster:\n  nats_url: nats://a:1,b:2\n", "cluster.nats_url"},
		{"nats_url with an empty entry", "cluster:\n  nats_url: nats://a:1,\n", "cluster.nats_url"},
		{"nats_url with credentials", "cluster:\n  nats_url: nats://u:p@a:1\n", "cluster.nats_url"},
		{"nats_url with a path", "cluster:\n  nats_url: nats://a:1/x\n", "cluster.nats_url"},
		{"node_id with a space", "cluster:\n  node_id: node one\n", "cluster.node_id"},
		{"node_id with a dot", "cluster:\n  node_id: a.b\n", "cluster.node_id"},
		{"node_id too long", "cluster:\n  node_id: " + strings.Repeat("a", 65) + "\n", "cluster.node_id"},
		{"empty subject_prefix", "cluster:\n  subject_prefix: \"\"\n", "cluster.subject_prefix"},
		{"subject_prefix with a wildcard", "cluster:\n  subject_prefix: a.*\n", "cluster.subject_prefix"},
		{"subject_prefix with an empty token", "cluster:\n  subject_prefix: a..b\n", "cluster.subject_prefix"},
		{"subject_prefix ending in a dot", "cluster:\n  subject_prefix: a.\n", "cluster.subject_prefix"},
		{"subject_prefix with a space", "cluster:\n  subject_prefix: a b\n", "cluster.subject_prefix"},
		{"subject_prefix too long", "cluster:\n  subject_prefix: " + strings.Repeat("a", 129) + "\n", "cluster.subject_prefix"},
		{"user without nats_url", "cluster:\n  user: u\n  password: p\n", "cluster.password"},
		{"token without nats_url", "cluster:\n  token: t\n", "cluster.token"},
		{"tls without nats_url", "cluster:\n  tls: { ca_file: " + existing + " }\n", "cluster.tls.ca_file"},
		{"user without password", ext + "  user: u\n", "cluster.password"},
		{"password without user", ext + "  password: p\n", "cluster.password"},
		{"user and token", ext + "  user: u\n  password: p\n  token: t\n", "cluster.token"},
		{"credentials and nkey", ext + "  credentials_file: " + existing + "\n  nkey_file: " + existing + "\n", "cluster.nkey_file"},
		{"credentials and user", ext + "  credentials_file: " + existing + "\n  user: u\n  password: p\n", "cluster.user"},
		{"credentials file missing", ext + "  credentials_file: " + missing + "\n", "cluster.credentials_file"},
		{"nkey file missing", ext + "  nkey_file: " + missing + "\n", "cluster.nkey_file"},
		{"tls ca file missing", ext + "  tls: { ca_file: " + missing + " }\n", "cluster.tls.ca_file"},
		{"tls cert without key", ext + "  tls: { cert_file: " + existing + " }\n", "cluster.tls"},
		{"tls cert file missing", ext + "  tls: { cert_file: " + missing + ", key_file: " + existing + " }\n", "cluster.tls.cert_file"},
		{"tls key file missing", ext + "  tls: { cert_file: " + existing + ", key_file: " + missing + " }\n", "cluster.tls.key_file"},
		{"embedded listen not host:port", "cluster:\n  embedded:\n    listen: localhost\n", "cluster.embedded.listen"},
		{"embedded listen port out of range", "cluster:\n  embedded:\n    listen: 127.0.0.1:70000\n", "cluster.embedded.listen"},
		{"embedded listen port not a number", "cluster:\n  embedded:\n    listen: 127.0.0.1:nats\n", "cluster.embedded.listen"},
		{"cluster_listen without listen", "cluster:\n  embedded:\n    cluster_listen: 127.0.0.1:6222\n", "cluster.embedded.cluster_listen"},
		{"embedded user without listen", "cluster:\n  embedded:\n    user: u\n    password: p\n", "cluster.embedded.user"},
		{"embedded token without listen", "cluster:\n  embedded:\n    token: t\n", "cluster.embedded.token"},
		{"cluster_listen not host:port", emb + "    cluster_listen: 6222\n", "cluster.embedded.cluster_listen"},
		{"routes without cluster_listen", emb + "    routes: [nats://127.0.0.1:6222]\n", "cluster.embedded.routes"},
		{"route without scheme", emb + "    cluster_listen: 127.0.0.1:6222\n    routes: [x]\n", "cluster.embedded.routes[0]"},
		{"route with tls scheme", emb + "    cluster_listen: 127.0.0.1:6222\n    routes: [nats://a:1, tls://b:2]\n", "cluster.embedded.routes[1]"},
		{"route with credentials", emb + "    cluster_listen: 127.0.0.1:6222\n    routes: [nats://u:p@a:1]\n", "cluster.embedded.routes[0]"},
		{"route without port", emb + "    cluster_listen: 127.0.0.1:6222\n    routes: [nats://a]\n", "cluster.embedded.routes[0]"},
		{"empty cluster_name", emb + "    cluster_name: \"\"\n", "cluster.embedded.cluster_name"},
		{"cluster_name with a space", emb + "    cluster_name: my cluster\n", "cluster.embedded.cluster_name"},
		{"embedded user without password", emb + "    user: u\n", "cluster.embedded.password"},
		{"embedded password without user", emb + "    password: p\n", "cluster.embedded.password"},
		{"embedded user and token", emb + "    user: u\n    password: p\n    token: t\n", "cluster.embedded.token"},
		{"embedded on every interface without auth", "cluster:\n  embedded:\n    listen: 0.0.0.0:4222\n", "cluster.embedded.user"},
		{"embedded on an empty host without auth", "cluster:\n  embedded:\n    listen: \":4222\"\n", "cluster.embedded.user"},
		{"embedded on a LAN address without auth", "cluster:\n  embedded:\n    listen: 10.0.0.1:4222\n", "cluster.embedded.user"},
		{"routes on every interface without user", emb + "    cluster_listen: 0.0.0.0:6222\n", "cluster.embedded.user"},
		{"routes on every interface with only a token", emb + "    cluster_listen: 0.0.0.0:6222\n    token: t\n", "cluster.embedded.user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeFile(t, tc.yaml), true, envOf(nil))
			if err == nil {
				t.Fatalf("Load accepted %q", tc.yaml)
			}
			if !strings.Contains(err.Error(), tc.key+":") {
				t.Fatalf("error %q does not name %s", err, tc.key)
			}
			if strings.Count(err.Error(), "\n") > 0 {
				t.Fatalf("error %q is not one line", err)
			}
		})
	}
}

func TestClusterValuesAccepted(t *testing.T) {
	existing := writeFile(t, "not a real key file")
	for _, tc := range []struct{ name, yaml string }{
		{"defaults: one node", ""},
		{"external, no auth", "cluster:\n  nats_url: nats://127.0.0.1:4222\n"},
		{"external, several URLs with spaces", "cluster:\n  nats_url: \"nats://a:4222, tls://b:4222 ,nats://[::1]:4222\"\n"},
		{"external, user and password", "cluster:\n  nats_url: nats://a:4222\n  user: u\n  password: p\n"},
		{"external, token", "cluster:\n  nats_url: nats://a:4222\n  token: t\n"},
		{"external, credentials", "cluster:\n  nats_url: nats://a:4222\n  credentials_file: " + existing + "\n"},
		{"external, nkey and TLS", "cluster:\n  nats_url: tls://a:4222\n  nkey_file: " + existing + "\n  tls: { ca_file: " + existing + ", cert_file: " + existing + ", key_file: " + existing + " }\n"},
		{"node id and prefix", "cluster:\n  node_id: node-1_A\n  subject_prefix: tenant-1.signrelay_v1\n"},
		{"embedded on loopback, no auth", "cluster:\n  embedded:\n    listen: 127.0.0.1:0\n"},
		{"embedded on localhost with routes", "cluster:\n  embedded:\n    listen: localhost:4222\n    cluster_listen: \"[::1]:6222\"\n    routes: [nats://127.0.0.1:6223, nats://127.0.0.1:6224]\n"},
		{"embedded public with a token, routes on loopback", "cluster:\n  embedded:\n    listen: 0.0.0.0:4222\n    token: t\n    cluster_listen: 127.0.0.1:6222\n"},
		{"embedded public with user and password", "cluster:\n  embedded:\n    listen: 0.0.0.0:4222\n    cluster_listen: 0.0.0.0:6222\n    routes: [nats://10.0.0.2:6222]\n    cluster_name: prod\n    user: u\n    password: p\n"},
		{"embedded and external together", "cluster:\n  nats_url: nats://127.0.0.1:4222\n  embedded:\n    listen: 127.0.0.1:4222\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Load(writeFile(t, tc.yaml), true, envOf(nil)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestClusterValues(t *testing.T) {
	cfg, err := Load(writeFile(t, `
cluster:
  nats_url: "nats://a:4222, nats://b:4222"
  node_id: n1
  subject_prefix: x.y
  user: u
  password: p
  embedded:
    listen: 0.0.0.0:4222
    cluster_listen: 0.0.0.0:6222
    routes: [nats://10.0.0.2:6222, nats://10.0.0.3:6222]
    cluster_name: prod
    user: ru
    password: rp
`), true, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Cluster{
		NATSURL: "nats://a:4222, nats://b:4222", NodeID: "n1", SubjectPrefix: "x.y", User: "u", Password: "p",
		Embedded: Embedded{
			Listen: "0.0.0.0:4222", ClusterListen: "0.0.0.0:6222",
			Routes:      []string{"nats://10.0.0.2:6222", "nats://10.0.0.3:6222"},
			ClusterName: "prod", User: "ru", Password: "rp",
		},
	}
	if !reflect.DeepEqual(cfg.Cluster, want) {
		t.Fatalf("cluster = %+v, want %+v", cfg.Cluster, want)
	}
	if got := cfg.Cluster.NATSURLs(); !reflect.DeepEqual(got, []string{"nats://a:4222", "nats://b:4222"}) {
		t.Fatalf("NATSURLs() = %q", got)
	}
	if got := Default().Cluster.NATSURLs(); got != nil {
		t.Fatalf("NATSURLs() of the default = %q, want nil", got)
	}
	if d := Default().Cluster; d.SubjectPrefix != "signrelay" || d.Embedded.ClusterName != "signrelay" || d.NATSURL != "" || d.Embedded.Listen != "" {
		t.Fatalf("default cluster = %+v", d)
	}
}

func TestNamedAPIKeys(t *testing.T) {
	file := "api_keys:\n  - bare-key-0123456789abcdef\n  - {name: billing, key: billing-key-0123456789ab}\n  - name: \"ops team.2\"\n    key: ops-key-0123456789abcdef\n"
	cfg, err := Load(writeFile(t, file), true, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := []APIKey{{Key: "bare-key-0123456789abcdef"}, {Name: "billing", Key: "billing-key-0123456789ab"}, {Name: "ops team.2", Key: "ops-key-0123456789abcdef"}}
	if !reflect.DeepEqual(cfg.APIKeys, want) {
		t.Fatalf("api_keys %+v, want %+v", cfg.APIKeys, want)
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"duplicate name", "api_keys: [{name: a, key: key-one-0123456789}, {name: a, key: key-two-0123456789}]", "used twice"},
		{"duplicate key", "api_keys: [key-one-0123456789, {name: a, key: key-one-0123456789}]", "twice"},
		{"bad name", "api_keys: [{name: \"a/b\", key: key-one-0123456789}]", "api_keys[0].name"},
		{"long name", "api_keys: [{name: " + strings.Repeat("n", 65) + ", key: key-one-0123456789}]", "api_keys[0].name"},
		{"unknown field", "api_keys: [{name: a, key: key-one-0123456789, role: x}]", "unknown key"},
		{"missing key", "api_keys: [{name: a}]", "api_keys[0]"},
		{"list as key", "api_keys: [[a]]", "api_keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeFile(t, tc.yaml), true, envOf(nil))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
