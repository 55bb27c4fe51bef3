// Package healthcheck is the `signrelay healthcheck` subcommand: it asks
// the local relay's GET /readyz and exits 0 when the answer is 200, 1
// otherwise, printing one line either way. It needs no shell and no curl,
// so that a container health check works in a distroless image:
//
//	HEALTHCHECK CMD ["/signrelay", "healthcheck"]
//
// The URL comes from the same configuration the relay reads (-config, the
// SIGNRELAY_* variables): the listen address, with 127.0.0.1 (or ::1) for
// an unspecified host, and https when tls is configured. -url probes
// another address instead.
//
// TLS: the relay's certificate names its public host, not 127.0.0.1, so a
// probe of the derived address could not verify it the usual way. It
// accepts the server's certificate only if it is exactly the first
// certificate of tls.cert_file, the one the relay was told to serve: a
// pin, not "insecure". A -url is verified the usual way, against the
// system's roots.
package healthcheck

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/signrelay/signrelay/config"
)

// DefaultTimeout bounds the whole probe: connect, TLS, request, answer.
const DefaultTimeout = 3 * time.Second

// Run runs the subcommand with args (those after "healthcheck") and
// returns the exit code: 0 when GET /readyz answered 200, else 1.
func Run(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("signrelay healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "config.yaml", "the relay's configuration file (YAML), for its listen address and tls")
	rawURL := fs.String("url", "", "probe this URL instead of the configured listen address's /readyz")
	timeout := fs.Duration("timeout", DefaultTimeout, "give up after this long")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: signrelay healthcheck [-config PATH] [-url URL] [-timeout D]")
		fmt.Fprintln(stderr, "Exits 0 if the local relay's GET /readyz answers 200, else 1.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 1
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unhealthy: unexpected argument %q\n", fs.Arg(0))
		return 1
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })

	target, tlsConf, err := resolve(*rawURL, *path, explicit, getenv)
	if err != nil {
		fmt.Fprintln(stderr, "unhealthy: "+oneLine(err.Error()))
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	status, detail, err := probe(ctx, target, tlsConf)
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "unhealthy: GET %s: %s\n", target, oneLine(err.Error()))
		return 1
	case status != http.StatusOK:
		fmt.Fprintf(stderr, "unhealthy: GET %s: %d %s\n", target, status, oneLine(detail))
		return 1
	}
	fmt.Fprintf(stdout, "healthy: GET %s: 200\n", target)
	return 0
}

// resolve returns the URL to probe and the TLS configuration for it.
func resolve(rawURL, path string, explicit bool, getenv func(string) string) (string, *tls.Config, error) {
	if rawURL != "" {
		u, err := url.Parse(rawURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", nil, fmt.Errorf("-url %q is not an http:// or https:// URL", rawURL)
		}
		return rawURL, nil, nil // system roots for https
	}
	cfg, err := config.Load(path, explicit, getenv)
	if err != nil {
		return "", nil, err
	}
	target, err := ProbeURL(cfg)
	if err != nil {
		return "", nil, err
	}
	if !cfg.TLS.Enabled() {
		return target, nil, nil
	}
	leaf, err := firstCertificate(cfg.TLS.CertFile)
	if err != nil {
		return "", nil, fmt.Errorf("tls.cert_file: %w", err)
	}
	return target, pinned(leaf), nil
}

// ProbeURL is the /readyz URL of the relay that cfg configures: its listen
// address, with a loopback address for an unspecified host (127.0.0.1 for
// "" and 0.0.0.0, ::1 for ::), https when TLS is configured.
func ProbeURL(cfg config.Config) (string, error) {
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return "", fmt.Errorf("listen %q is not host:port", cfg.Listen)
	}
	if port == "0" {
		return "", fmt.Errorf("listen %q picks its port at start; pass -url", cfg.Listen)
	}
	if host == "" {
		host = "127.0.0.1"
	} else if a, err := netip.ParseAddr(host); err == nil && a.IsUnspecified() {
		if a.Is4() || a.Is4In6() {
			host = "127.0.0.1"
		} else {
			host = "::1"
		}
	}
	scheme := "http"
	if cfg.TLS.Enabled() {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port) + "/readyz", nil
}

// firstCertificate is the first CERTIFICATE block of a PEM file: the leaf
// the relay serves.
func firstCertificate(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no CERTIFICATE block in " + path)
		}
		if b.Type == "CERTIFICATE" {
			if _, err := x509.ParseCertificate(b.Bytes); err != nil {
				return nil, err
			}
			return b.Bytes, nil
		}
	}
}

// pinned accepts exactly the certificate leaf and nothing else. Hostname
// and chain checks are replaced by the comparison (the leaf names the
// public host, the probe dials loopback).
func pinned(leaf []byte) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by VerifyConnection's exact match
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, leaf) {
				return errors.New("the server's certificate is not the one in tls.cert_file")
			}
			return nil
		},
	}
}

// probe makes GET target and returns the status and, for an error answer,
// the relay's error code and message.
func probe(ctx context.Context, target string, tlsConf *tls.Config) (int, string, error) {
	client := &http.Client{
		Transport: &http.Transport{
			Proxy:             nil, // never through HTTP_PROXY: this is the local node
			TLSClientConfig:   tlsConf,
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return 0, "", err
	}
	res, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	detail := http.StatusText(res.StatusCode)
	if json.Unmarshal(body, &e) == nil && e.Error.Code != "" {
		detail = e.Error.Code + ": " + e.Error.Message
	}
	return res.StatusCode, detail, nil
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
