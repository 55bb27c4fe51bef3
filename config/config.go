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
	"strings"
	"time"
)

// Config is the whole configuration. Field comments give the YAML key and default.
type Config struct {
	// Listen is the address to serve on. listen, default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
	// APIKeys are the bearer tokens accepted by POST /sign. api_keys; when
	// none is configured a random key is generated at start and logged once.
	APIKeys []string `yaml:"api_keys"`
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
	// ShutdownGrace is how long pending requests may finish after SIGTERM.
	// shutdown_grace, default 10s.
	ShutdownGrace Duration `yaml:"shutdown_grace"`
	// LogLevel is debug, info, warn or error. log_level, default info.
	LogLevel string `yaml:"log_level"`
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
		ShutdownGrace: Duration(10 * time.Second),
		LogLevel:      "info",
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
				cfg.APIKeys = append(cfg.APIKeys, k)
			}
		}
	}
	if len(cfg.APIKeys) == 0 {
		cfg.APIKeys = []string{newAPIKey()}
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
	for i, k := range c.APIKeys {
		if strings.TrimSpace(k) == "" || k != strings.TrimSpace(k) {
			return bad(fmt.Sprintf("api_keys[%d]", i), "empty or padded with spaces")
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
	if c.ShutdownGrace < 0 || c.ShutdownGrace.D() > 10*time.Minute {
		return bad("shutdown_grace", "%s is out of range (0 to 10m)", c.ShutdownGrace)
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
