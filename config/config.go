// Package config loads and validates the relay's configuration: config.yaml,
// then the SIGNRELAY_* environment variables. It is checked once at start;
// the first problem stops the start with a message that names the key.
package config

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Config is the whole configuration. Field comments give the YAML key and default.
type Config struct {
	// Listen is the address to serve on. listen, default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
	// APIKeys are the bearer tokens accepted by POST /sign, each a bare
	// key or {name, key}. api_keys; when none is configured a random key is
	// generated at start and logged once.
	APIKeys []APIKey `yaml:"api_keys"`
	// GeneratedAPIKey is set when APIKeys was empty and a key was made.
	GeneratedAPIKey bool `yaml:"-"`

	HTTP       HTTP       `yaml:"http"`
	Sign       Sign       `yaml:"sign"`
	WebSocket  WebSocket  `yaml:"websocket"`
	RateLimits RateLimits `yaml:"rate_limits"`
	// TrustedProxies are the addresses or CIDRs of reverse proxies whose
	// X-Forwarded-For header names the real client. trusted_proxies, default
	// none: the TCP peer is the client and the header is ignored.
	TrustedProxies []string `yaml:"trusted_proxies"`
	TLS            TLS      `yaml:"tls"`
	// Cluster joins this relay to other nodes through NATS; its zero value
	// (the default) is one node with no NATS. Key: cluster.
	Cluster Cluster `yaml:"cluster"`
	// Metrics configures GET /metrics. Key: metrics.
	Metrics Metrics `yaml:"metrics"`
	// Audit configures the hash-chained audit log. Key: audit.
	Audit Audit `yaml:"audit"`
	// ShutdownGrace is how long pending requests may finish after SIGTERM.
	// shutdown_grace, default 10s.
	ShutdownGrace Duration `yaml:"shutdown_grace"`
	// LogLevel is debug, info, warn or error. log_level, default info.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text (logfmt-like key=value) or json (one object per
	// line, for log shippers). log_format, default text.
	LogFormat string `yaml:"log_format"`
}

// Audit configures the audit log (contract §F; docs/audit.md).
type Audit struct {
	// Path is the file each ended request is appended to; empty: no audit
	// log. audit.path, default "".
	Path string `yaml:"path"`
	// Fsync is when lines are forced to disk: always (before a signature
	// is released; the default), interval (every second) or never.
	// audit.fsync, default always.
	Fsync string `yaml:"fsync"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Listen moves GET /metrics to its own listener (host:port), off the
	// public one; empty serves it on listen. metrics.listen, default "".
	Listen string `yaml:"listen"`
}

// HTTP holds the limits of every TCP connection, before anything is known
// about it. Key: http.
type HTTP struct {
	// MaxConnections caps open client connections (HTTP and WebSocket);
	// the excess is closed at once. 0 derives it from the open-file limit
	// (RLIMIT_NOFILE) less headroom for the relay's own files.
	// http.max_connections, default 0.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP caps the open connections from one client
	// address (IPv6: one /64), so that no single address can take every
	// place; trusted proxies are not counted. 0 means no cap.
	// http.max_connections_per_ip, default 1024.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// HeaderTimeout bounds the wait for a connection's first byte (and the
	// TLS handshake) and then for the request headers.
	// http.header_timeout, default 5s.
	HeaderTimeout Duration `yaml:"header_timeout"`
	// ReadTimeout bounds reading a request body once its headers are in.
	// http.read_timeout, default 30s.
	ReadTimeout Duration `yaml:"read_timeout"`
	// IdleTimeout closes a keep-alive connection that sends no next
	// request. http.idle_timeout, default 60s.
	IdleTimeout Duration `yaml:"idle_timeout"`
}

// Sign holds the limits of POST /sign. Key: sign.
type Sign struct {
	DefaultTimeout   Duration `yaml:"default_timeout"`     // default 60s
	MaxTimeout       Duration `yaml:"max_timeout"`         // default 60s, at most 60s
	MaxMessageBytes  int      `yaml:"max_message_bytes"`   // default 65536, decoded bytes
	MaxPendingPerKey int      `yaml:"max_pending_per_key"` // default 64
	// MaxPending and MaxPendingBytes bound the requests pending on this
	// node in all, by count and by decoded message bytes; the
	// PerAPIKey pair bounds what one API key may have pending. A request
	// over any bound is 503 unavailable.
	MaxPending               int `yaml:"max_pending"`                   // default 10000
	MaxPendingBytes          int `yaml:"max_pending_bytes"`             // default 134217728 (128 MiB)
	MaxPendingPerAPIKey      int `yaml:"max_pending_per_api_key"`       // default 2000
	MaxPendingBytesPerAPIKey int `yaml:"max_pending_bytes_per_api_key"` // default 33554432 (32 MiB)
	// MaxAsyncTimeout caps timeout_ms of an asynchronous request ("wait":
	// false). sign.max_async_timeout, default 10m, at least 10m, at most 24h.
	MaxAsyncTimeout Duration `yaml:"max_async_timeout"`
	// ResultTTL is how long an ended request resource (asynchronous or
	// made with an Idempotency-Key) stays readable and replayable.
	// sign.result_ttl, default 1h.
	ResultTTL Duration `yaml:"result_ttl"`
	// MaxResults and MaxResultsBytes bound the ended resources kept on
	// this node, by count and by bytes; past either the oldest go first.
	MaxResults      int `yaml:"max_results"`       // default 100000
	MaxResultsBytes int `yaml:"max_results_bytes"` // default 268435456 (256 MiB)
}

// WebSocket holds the key-holder side's limits. Key: websocket.
type WebSocket struct {
	IntroductionTimeout Duration `yaml:"introduction_timeout"` // default 10s
	PingInterval        Duration `yaml:"ping_interval"`        // default 20s
	MaxFrameBytes       int      `yaml:"max_frame_bytes"`      // default 262144
	// AllowedOrigins, when not empty, is the list of browser origins
	// (scheme://host[:port]) that may connect; requests without Origin
	// (non-browser clients) are always allowed.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// SendQueue is how many frames may wait for a key holder before its
	// connection is closed. It is raised to what redelivering every pending
	// request of the key needs (2 × sign.max_pending_per_key + 32).
	// websocket.send_queue, default 256.
	SendQueue int `yaml:"send_queue"`
	// WriteTimeout bounds writing one frame; a key holder that reads
	// nothing for that long is disconnected (its requests wait for the key
	// to reconnect). websocket.write_timeout, default 10s.
	WriteTimeout Duration `yaml:"write_timeout"`
	// MessageTimeout bounds receiving one message once its first frame
	// has started: a message left unfinished (pongs keep the connection
	// alive) closes the connection. websocket.message_timeout, default 10s.
	MessageTimeout Duration `yaml:"message_timeout"`
	// MaxConnectionsPerKey caps the live connections of one key on this
	// node; one more is refused with too_many_connections and close 1013.
	// websocket.max_connections_per_key, default 16.
	MaxConnectionsPerKey int `yaml:"max_connections_per_key"`
	// MaxUnintroduced and MaxUnintroducedPerIP cap the sockets between the
	// upgrade and a successful introduction, in all and per client IP; an
	// upgrade over either is refused before it happens (503 or 429).
	MaxUnintroduced      int `yaml:"max_unintroduced"`        // default 4096
	MaxUnintroducedPerIP int `yaml:"max_unintroduced_per_ip"` // default 64
}

// Limit is a token bucket: Rate events per second, bursts up to Burst.
type Limit struct {
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
}

// RateLimits are applied per API key, per public key and per client IP
// (new WebSocket connections). Key: rate_limits.
type RateLimits struct {
	Enabled          bool  `yaml:"enabled"`
	SignPerAPIKey    Limit `yaml:"sign_per_api_key"`
	SignPerPublicKey Limit `yaml:"sign_per_public_key"`
	ConnectionsPerIP Limit `yaml:"connections_per_ip"`
	// AuthFailuresPerIP limits missing or wrong API keys per client IP:
	// past it such requests get 429 instead of 401 (a right key is never
	// refused for it).
	AuthFailuresPerIP Limit `yaml:"auth_failures_per_ip"`
}

// TLS turns on HTTPS and WSS when both files are set. Key: tls.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Enabled reports whether TLS is configured.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// Cluster configures the NATS link that joins several relay nodes into one
// relay (contract §A). With nats_url and embedded.listen both empty (the
// default) the relay is one node and NATS is not used at all. Key: cluster.
type Cluster struct {
	// NATSURL is the comma-separated list of an external NATS server or
	// cluster's client URLs, nats://host:port or tls://host:port. Empty
	// means no external server: one node, or (with embedded.listen) the
	// relay's own embedded server. Credentials go in the keys below, not in
	// the URL, so that the URL can be logged. cluster.nats_url, default "".
	NATSURL string `yaml:"nats_url"`
	// NodeID names this node on the bus and is the embedded server's name;
	// every node of a cluster needs its own. 1–64 characters of letters,
	// digits, '-' and '_'; empty makes a random one at each start (16 hex
	// digits). cluster.node_id, default "".
	NodeID string `yaml:"node_id"`
	// KVReplicas is how many NATS servers keep the JetStream bucket of
	// request resources, so that one of them may die (1 to 5). 0: with
	// the embedded servers routed together, min(3, servers in routes);
	// else 1. cluster.kv_replicas, default 0.
	KVReplicas int `yaml:"kv_replicas"`
	// SubjectPrefix starts every NATS subject the relay uses (inboxes
	// included), so that several relays can share one NATS server and NATS
	// permissions can be granted on "<prefix>.>". Tokens of letters, digits,
	// '-' and '_' joined by dots, at most 128 characters.
	// cluster.subject_prefix, default "signrelay".
	SubjectPrefix string `yaml:"subject_prefix"`
	// CredentialsFile, NkeyFile, User with Password, and Token authenticate
	// the link to an external server (cluster.nats_url); at most one of the
	// four may be set. CredentialsFile is a .creds file (user JWT and
	// seed); NkeyFile holds an nkey seed (SU...). Files must exist at start.
	// Anyone who can publish on the relay's subjects can forge answers and
	// cancellations, so a NATS server reachable by others needs one.
	// cluster.credentials_file, cluster.nkey_file, cluster.user,
	// cluster.password, cluster.token; all default "".
	CredentialsFile string `yaml:"credentials_file"`
	NkeyFile        string `yaml:"nkey_file"`
	User            string `yaml:"user"`
	Password        string `yaml:"password"`
	Token           string `yaml:"token"`
	// TLS secures the link to an external server. Key: cluster.tls.
	TLS ClusterTLS `yaml:"tls"`
	// Embedded runs a NATS server inside the relay process, so that a
	// cluster needs nothing but relays. Key: cluster.embedded.
	Embedded Embedded `yaml:"embedded"`
}

// ClusterTLS is TLS for the link to an external NATS server: CAFile
// verifies the server (the system roots when empty), CertFile and KeyFile
// (both or neither) are a client certificate for servers that require one.
// Files must exist at start. Keys: cluster.tls.ca_file, cluster.tls.cert_file,
// cluster.tls.key_file, all default "".
type ClusterTLS struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Enabled reports whether any TLS file is configured for the NATS link.
func (t ClusterTLS) Enabled() bool { return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

// Embedded is a NATS server run inside the relay process. Several relays
// route their embedded servers to each other to form a NATS cluster.
// Key: cluster.embedded.
type Embedded struct {
	// Listen is the host:port of the embedded server's client port; empty
	// means no embedded server. Port 0 picks a free port. With
	// cluster.nats_url empty, the relay itself connects to this server
	// (in-process). cluster.embedded.listen, default "".
	Listen string `yaml:"listen"`
	// ClusterListen is the host:port on which the embedded server accepts
	// routes from the other relays' servers; empty means no routes (a
	// cluster of one). cluster.embedded.cluster_listen, default "".
	ClusterListen string `yaml:"cluster_listen"`
	// Routes are the other relays' cluster_listen addresses, each
	// nats://host:port. A route to this server itself is ignored, so every
	// node may carry the same list. cluster.embedded.routes, default [].
	Routes []string `yaml:"routes"`
	// ClusterName names the NATS cluster; every routed server must use the
	// same. 1–64 characters of letters, digits, '-' and '_'.
	// cluster.embedded.cluster_name, default "signrelay".
	ClusterName string `yaml:"cluster_name"`
	// User with Password, or Token, is required from every client of the
	// embedded server; they are required when listen is not a loopback
	// address. User and Password also authenticate routes (in both
	// directions), and are required when cluster_listen is not a loopback
	// address, so that nobody else can join the cluster (a token cannot
	// authenticate routes). cluster.embedded.user, cluster.embedded.password,
	// cluster.embedded.token, all default "".
	User     string `yaml:"user"`
	Password string `yaml:"password"`
	Token    string `yaml:"token"`
	// StoreDir is the embedded server's JetStream directory (cluster
	// metadata only: request resources are kept in memory). Empty: a
	// temporary directory, removed at exit.
	// cluster.embedded.store_dir, default "".
	StoreDir string `yaml:"store_dir"`
}

// NATSURLs returns the entries of nats_url, trimmed; nil when it is empty.
func (c Cluster) NATSURLs() []string {
	if strings.TrimSpace(c.NATSURL) == "" {
		return nil
	}
	out := strings.Split(c.NATSURL, ",")
	for i := range out {
		out[i] = strings.TrimSpace(out[i])
	}
	return out
}

// validate checks the cluster keys; bad formats an error naming the key.
func (c *Cluster) validate(bad func(key, format string, args ...any) error) error {
	for i, u := range c.NATSURLs() {
		if !isNATSURL(u, "nats", "tls") {
			return bad("cluster.nats_url", "entry %d %q is not nats://host:port or tls://host:port (credentials go in cluster.user and cluster.password or cluster.token)", i, u)
		}
	}
	if c.NodeID != "" && !isName(c.NodeID, 64) {
		return bad("cluster.node_id", "%q must be 1 to 64 letters, digits, '-' or '_' (or empty for a random one)", c.NodeID)
	}
	if c.KVReplicas < 0 || c.KVReplicas > 5 {
		return bad("cluster.kv_replicas", "%d is out of range (0 for automatic, 1 to 5)", c.KVReplicas)
	}
	if len(c.SubjectPrefix) > 128 || !isSubject(c.SubjectPrefix) {
		return bad("cluster.subject_prefix", "%q is not NATS subject tokens (letters, digits, '-', '_') joined by dots, at most 128 characters", c.SubjectPrefix)
	}
	external := map[string]string{
		"cluster.credentials_file": c.CredentialsFile, "cluster.nkey_file": c.NkeyFile,
		"cluster.user": c.User, "cluster.password": c.Password, "cluster.token": c.Token,
		"cluster.tls.ca_file": c.TLS.CAFile, "cluster.tls.cert_file": c.TLS.CertFile, "cluster.tls.key_file": c.TLS.KeyFile,
	}
	if c.NATSURL == "" {
		for _, key := range sortedKeys(external) {
			if external[key] != "" {
				return bad(key, "only used with cluster.nats_url (the link to an external NATS server); the embedded server has cluster.embedded.user, password and token")
			}
		}
	}
	if (c.User == "") != (c.Password == "") {
		return bad("cluster.password", "set both cluster.user and cluster.password, or neither")
	}
	var methods []string
	for _, m := range []struct{ key, v string }{
		{"cluster.credentials_file", c.CredentialsFile}, {"cluster.nkey_file", c.NkeyFile},
		{"cluster.user", c.User}, {"cluster.token", c.Token},
	} {
		if m.v != "" {
			methods = append(methods, m.key)
		}
	}
	if len(methods) > 1 {
		return bad(methods[1], "%s is set too; use at most one of credentials_file, nkey_file, user and password, token", methods[0])
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return bad("cluster.tls", "set both cert_file and key_file, or neither")
	}
	for _, key := range []string{"cluster.credentials_file", "cluster.nkey_file", "cluster.tls.ca_file", "cluster.tls.cert_file", "cluster.tls.key_file"} {
		if f := external[key]; f != "" {
			if _, err := os.Stat(f); err != nil {
				return bad(key, "%v", err)
			}
		}
	}

	e := c.Embedded
	if e.Listen == "" {
		for _, k := range []struct{ key, v string }{
			{"cluster.embedded.cluster_listen", e.ClusterListen}, {"cluster.embedded.user", e.User},
			{"cluster.embedded.password", e.Password}, {"cluster.embedded.token", e.Token},
		} {
			if k.v != "" {
				return bad(k.key, "only used with cluster.embedded.listen (the embedded NATS server)")
			}
		}
	} else if !isHostPort(e.Listen) {
		return bad("cluster.embedded.listen", "%q is not host:port", e.Listen)
	}
	if e.ClusterListen != "" && !isHostPort(e.ClusterListen) {
		return bad("cluster.embedded.cluster_listen", "%q is not host:port", e.ClusterListen)
	}
	if len(e.Routes) > 0 && e.ClusterListen == "" {
		return bad("cluster.embedded.routes", "need cluster.embedded.cluster_listen (a server without a cluster port opens no routes)")
	}
	for i, r := range e.Routes {
		if !isNATSURL(r, "nats") {
			return bad(fmt.Sprintf("cluster.embedded.routes[%d]", i), "%q is not nats://host:port (route credentials are cluster.embedded.user and password)", r)
		}
	}
	if !isName(e.ClusterName, 64) {
		return bad("cluster.embedded.cluster_name", "%q must be 1 to 64 letters, digits, '-' or '_'", e.ClusterName)
	}
	if (e.User == "") != (e.Password == "") {
		return bad("cluster.embedded.password", "set both cluster.embedded.user and cluster.embedded.password, or neither")
	}
	if e.Token != "" && e.User != "" {
		return bad("cluster.embedded.token", "cluster.embedded.user is set too; use user and password, or token")
	}
	if e.Listen != "" && !isLoopback(e.Listen) && e.User == "" && e.Token == "" {
		return bad("cluster.embedded.user", "required (with password, or token instead) when cluster.embedded.listen %q is not a loopback address", e.Listen)
	}
	if e.ClusterListen != "" && !isLoopback(e.ClusterListen) && e.User == "" {
		return bad("cluster.embedded.user", "required with password when cluster.embedded.cluster_listen %q is not a loopback address: they authenticate routes (a token cannot)", e.ClusterListen)
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// isName reports whether s is 1 to max letters, digits, '-' or '_'.
func isName(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// isSubject reports whether s is one or more names joined by single dots.
func isSubject(s string) bool {
	for _, tok := range strings.Split(s, ".") {
		if !isName(tok, len(tok)) {
			return false
		}
	}
	return true
}

// isHostPort reports whether s is host:port with a numeric port 0–65535
// (the host may be empty, meaning every interface).
func isHostPort(s string) bool {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 0 && n <= 65535 && port == strconv.Itoa(n)
}

// isNATSURL reports whether s is scheme://host:port with one of schemes and
// nothing else (no credentials, path or query).
func isNATSURL(s string, schemes ...string) bool {
	u, err := url.Parse(s)
	if err != nil || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return false
	}
	if !slices.Contains(schemes, u.Scheme) || u.Hostname() == "" {
		return false
	}
	n, err := strconv.Atoi(u.Port())
	return err == nil && n >= 1 && n <= 65535
}

// isLoopback reports whether the host of host:port is a loopback address
// or "localhost". An empty host (every interface) is not.
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// Duration is a time.Duration written as "10s", "1m30s" or "250ms".
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Default returns the configuration used when no file is given.
func Default() Config {
	return Config{
		Listen: "127.0.0.1:8080",
		HTTP: HTTP{
			MaxConnectionsPerIP: 1024,
			HeaderTimeout:       Duration(5 * time.Second), ReadTimeout: Duration(30 * time.Second),
			IdleTimeout: Duration(60 * time.Second),
		},
		Sign: Sign{
			DefaultTimeout: Duration(60 * time.Second), MaxTimeout: Duration(60 * time.Second),
			MaxMessageBytes: 65536, MaxPendingPerKey: 64,
			MaxPending: 10000, MaxPendingBytes: 128 << 20,
			MaxPendingPerAPIKey: 2000, MaxPendingBytesPerAPIKey: 32 << 20,
			MaxAsyncTimeout: Duration(10 * time.Minute), ResultTTL: Duration(time.Hour),
			MaxResults: 100000, MaxResultsBytes: 256 << 20,
		},
		WebSocket: WebSocket{
			IntroductionTimeout: Duration(10 * time.Second), PingInterval: Duration(20 * time.Second),
			MaxFrameBytes: 262144, SendQueue: 256, WriteTimeout: Duration(10 * time.Second),
			MessageTimeout: Duration(10 * time.Second), MaxConnectionsPerKey: 16,
			MaxUnintroduced: 4096, MaxUnintroducedPerIP: 64,
		},
		RateLimits: RateLimits{
			Enabled:           true,
			SignPerAPIKey:     Limit{Rate: 200, Burst: 400},
			SignPerPublicKey:  Limit{Rate: 20, Burst: 40},
			ConnectionsPerIP:  Limit{Rate: 10, Burst: 50},
			AuthFailuresPerIP: Limit{Rate: 1, Burst: 20},
		},
		Cluster: Cluster{
			SubjectPrefix: "signrelay",
			Embedded:      Embedded{ClusterName: "signrelay"},
		},
		ShutdownGrace: Duration(10 * time.Second),
		Audit:         Audit{Fsync: "always"},
		LogLevel:      "info",
		LogFormat:     "text",
	}
}

// Load reads path over the defaults (a missing file is an error only when
// required), applies SIGNRELAY_LISTEN and SIGNRELAY_API_KEYS, generates an
// API key if none is configured, and validates the result.
func Load(path string, required bool, getenv func(string) string) (Config, error) {
	cfg := Default()
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := decodeYAML(data, &cfg); err != nil {
			return cfg, fmt.Errorf("config %s: %w", path, err)
		}
	case errors.Is(err, os.ErrNotExist) && !required:
	default:
		return cfg, fmt.Errorf("config: %w", err)
	}
	if v := getenv("SIGNRELAY_LISTEN"); v != "" {
		cfg.Listen = v
	}
	if v := getenv("SIGNRELAY_API_KEYS"); v != "" {
		cfg.APIKeys = nil
		for _, k := range strings.Split(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				cfg.APIKeys = append(cfg.APIKeys, APIKey{Key: k})
			}
		}
	}
	if len(cfg.APIKeys) == 0 {
		cfg.APIKeys = []APIKey{{Key: newAPIKey()}}
		cfg.GeneratedAPIKey = true
	}
	return cfg, cfg.Validate()
}

func newAPIKey() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic("config: no randomness for the API key: " + err.Error())
	}
	return "sr_" + hex.EncodeToString(b)
}

// Validate checks every value and returns the first problem, naming its key.
func (c *Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("config: %s: %s", key, fmt.Sprintf(format, args...))
	}
	if _, port, err := net.SplitHostPort(c.Listen); err != nil || port == "" {
		return bad("listen", "%q is not host:port", c.Listen)
	}
	names, keys := map[string]bool{}, map[string]bool{}
	for i, k := range c.APIKeys {
		if strings.TrimSpace(k.Key) == "" || k.Key != strings.TrimSpace(k.Key) {
			return bad(fmt.Sprintf("api_keys[%d]", i), "empty or padded with spaces")
		}
		if keys[k.Key] {
			return bad(fmt.Sprintf("api_keys[%d]", i), "the same key is listed twice")
		}
		keys[k.Key] = true
		if k.Name == "" {
			continue
		}
		if !validAPIKeyName(k.Name) {
			return bad(fmt.Sprintf("api_keys[%d].name", i), "%q must be 1-64 letters, digits, '-', '_', '.' or spaces", k.Name)
		}
		if names[k.Name] {
			return bad(fmt.Sprintf("api_keys[%d].name", i), "%q is used twice", k.Name)
		}
		names[k.Name] = true
	}
	switch c.Audit.Fsync {
	case "always", "interval", "never":
	default:
		return bad("audit.fsync", "%q must be always, interval or never", c.Audit.Fsync)
	}
	if c.Metrics.Listen != "" {
		if _, port, err := net.SplitHostPort(c.Metrics.Listen); err != nil || port == "" {
			return bad("metrics.listen", "%q is not host:port", c.Metrics.Listen)
		}
	}
	h := c.HTTP
	if h.MaxConnections < 0 || h.MaxConnections > 1<<24 {
		return bad("http.max_connections", "%d is out of range (0 for automatic, up to 16777216)", h.MaxConnections)
	}
	if h.MaxConnectionsPerIP < 0 || h.MaxConnectionsPerIP > 1<<24 {
		return bad("http.max_connections_per_ip", "%d is out of range (0 for no cap, up to 16777216)", h.MaxConnectionsPerIP)
	}
	for key, d := range map[string]Duration{"http.header_timeout": h.HeaderTimeout, "http.read_timeout": h.ReadTimeout, "http.idle_timeout": h.IdleTimeout} {
		if d.D() < 100*time.Millisecond || d.D() > 10*time.Minute {
			return bad(key, "%s is out of range (100ms to 10m)", d)
		}
	}
	s := c.Sign
	if s.MaxTimeout <= 0 || s.MaxTimeout.D() > 60*time.Second {
		return bad("sign.max_timeout", "%s is out of range (more than 0, at most 60s)", s.MaxTimeout)
	}
	if s.DefaultTimeout <= 0 || s.DefaultTimeout > s.MaxTimeout {
		return bad("sign.default_timeout", "%s is out of range (more than 0, at most sign.max_timeout %s)", s.DefaultTimeout, s.MaxTimeout)
	}
	if s.MaxAsyncTimeout.D() < 10*time.Minute || s.MaxAsyncTimeout.D() > 24*time.Hour {
		return bad("sign.max_async_timeout", "%s is out of range (10m to 24h)", s.MaxAsyncTimeout)
	}
	if s.ResultTTL.D() < time.Second || s.ResultTTL.D() > 7*24*time.Hour {
		return bad("sign.result_ttl", "%s is out of range (1s to 168h)", s.ResultTTL)
	}
	if s.MaxMessageBytes < 1 || s.MaxMessageBytes > 16<<20 {
		return bad("sign.max_message_bytes", "%d is out of range (1 to 16 MiB)", s.MaxMessageBytes)
	}
	if s.MaxPendingPerKey < 1 || s.MaxPendingPerKey > 100000 {
		return bad("sign.max_pending_per_key", "%d is out of range (1 to 100000)", s.MaxPendingPerKey)
	}
	for key, v := range map[string]struct{ n, lo, hi int }{
		"sign.max_pending":                   {s.MaxPending, 1, 10_000_000},
		"sign.max_pending_bytes":             {s.MaxPendingBytes, s.MaxMessageBytes, 1 << 40},
		"sign.max_pending_per_api_key":       {s.MaxPendingPerAPIKey, 1, 10_000_000},
		"sign.max_pending_bytes_per_api_key": {s.MaxPendingBytesPerAPIKey, s.MaxMessageBytes, 1 << 40},
		"sign.max_results":                   {s.MaxResults, 1, 100_000_000},
		"sign.max_results_bytes":             {s.MaxResultsBytes, 1 << 20, 1 << 40},
	} {
		if v.n < v.lo || v.n > v.hi {
			return bad(key, "%d is out of range (%d to %d)", v.n, v.lo, v.hi)
		}
	}
	w := c.WebSocket
	if w.IntroductionTimeout <= 0 || w.IntroductionTimeout.D() > 5*time.Minute {
		return bad("websocket.introduction_timeout", "%s is out of range (more than 0, at most 5m)", w.IntroductionTimeout)
	}
	if w.PingInterval.D() < 100*time.Millisecond || w.PingInterval.D() > 10*time.Minute {
		return bad("websocket.ping_interval", "%s is out of range (100ms to 10m)", w.PingInterval)
	}
	if w.MaxFrameBytes < 512 || w.MaxFrameBytes > 64<<20 {
		return bad("websocket.max_frame_bytes", "%d is out of range (512 to 64 MiB)", w.MaxFrameBytes)
	}
	if w.SendQueue < 8 || w.SendQueue > 1<<16 {
		return bad("websocket.send_queue", "%d is out of range (8 to 65536)", w.SendQueue)
	}
	if w.WriteTimeout.D() < 100*time.Millisecond || w.WriteTimeout.D() > 5*time.Minute {
		return bad("websocket.write_timeout", "%s is out of range (100ms to 5m)", w.WriteTimeout)
	}
	if w.MessageTimeout.D() < 100*time.Millisecond || w.MessageTimeout.D() > 10*time.Minute {
		return bad("websocket.message_timeout", "%s is out of range (100ms to 10m)", w.MessageTimeout)
	}
	if w.MaxConnectionsPerKey < 1 || w.MaxConnectionsPerKey > 10000 {
		return bad("websocket.max_connections_per_key", "%d is out of range (1 to 10000)", w.MaxConnectionsPerKey)
	}
	if w.MaxUnintroduced < 1 || w.MaxUnintroduced > 1<<24 {
		return bad("websocket.max_unintroduced", "%d is out of range (1 to 16777216)", w.MaxUnintroduced)
	}
	if w.MaxUnintroducedPerIP < 1 || w.MaxUnintroducedPerIP > w.MaxUnintroduced {
		return bad("websocket.max_unintroduced_per_ip", "%d is out of range (1 to websocket.max_unintroduced)", w.MaxUnintroducedPerIP)
	}
	for i, o := range w.AllowedOrigins {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" {
			return bad(fmt.Sprintf("websocket.allowed_origins[%d]", i), "%q is not an origin like https://example.com", o)
		}
	}
	if c.RateLimits.Enabled {
		for key, l := range map[string]Limit{
			"rate_limits.sign_per_api_key":     c.RateLimits.SignPerAPIKey,
			"rate_limits.sign_per_public_key":  c.RateLimits.SignPerPublicKey,
			"rate_limits.connections_per_ip":   c.RateLimits.ConnectionsPerIP,
			"rate_limits.auth_failures_per_ip": c.RateLimits.AuthFailuresPerIP,
		} {
			if l.Rate <= 0 || l.Burst < 1 {
				return bad(key, "rate must be more than 0 and burst at least 1 (or set rate_limits.enabled: false)")
			}
		}
	}
	for i, p := range c.TrustedProxies {
		if _, err := ParsePrefix(p); err != nil {
			return bad(fmt.Sprintf("trusted_proxies[%d]", i), "%q is not an IP address or CIDR", p)
		}
	}
	if c.TLS.Enabled() {
		if c.TLS.CertFile == "" || c.TLS.KeyFile == "" {
			return bad("tls", "set both cert_file and key_file, or neither")
		}
		for key, f := range map[string]string{"tls.cert_file": c.TLS.CertFile, "tls.key_file": c.TLS.KeyFile} {
			if _, err := os.Stat(f); err != nil {
				return bad(key, "%v", err)
			}
		}
	}
	if err := c.Cluster.validate(bad); err != nil {
		return err
	}
	if c.ShutdownGrace < 0 || c.ShutdownGrace.D() > 10*time.Minute {
		return bad("shutdown_grace", "%s is out of range (0 to 10m)", c.ShutdownGrace)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return bad("log_format", "%q is not text or json", c.LogFormat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return bad("log_level", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
	return nil
}

// ParsePrefix accepts an address ("10.0.0.1") or a CIDR ("10.0.0.0/8").
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// MinFrameBytes is the frame size a sign_response for a message of
// MaxMessageBytes needs; a smaller max_frame_bytes makes large requests
// unanswerable, which the relay warns about at start.
func (c *Config) MinFrameBytes() int {
	return 2*((c.Sign.MaxMessageBytes+2)/3*4) + 512
}

func (d Duration) String() string { return time.Duration(d).String() }
