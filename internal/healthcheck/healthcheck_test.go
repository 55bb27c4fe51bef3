package healthcheck

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signrelay/signrelay/config"
)

func noEnv(string) string { return "" }

func TestProbeURL(t *testing.T) {
	for _, c := range []struct {
		listen string
		tls    bool
		want   string
	}{
		{"127.0.0.1:8080", false, "http://127.0.0.1:8080/readyz"},
		{":8080", false, "http://127.0.0.1:8080/readyz"},
		{"0.0.0.0:9000", false, "http://127.0.0.1:9000/readyz"},
		{"[::]:8443", true, "https://[::1]:8443/readyz"},
		{"[::1]:8080", false, "http://[::1]:8080/readyz"},
		{"localhost:8080", false, "http://localhost:8080/readyz"},
		{"10.1.2.3:8443", true, "https://10.1.2.3:8443/readyz"},
	} {
		cfg := config.Default()
		cfg.Listen = c.listen
		if c.tls {
			cfg.TLS = config.TLS{CertFile: "c.pem", KeyFile: "k.pem"}
		}
		got, err := ProbeURL(cfg)
		if err != nil || got != c.want {
			t.Errorf("listen %q tls %v: %q %v, want %q", c.listen, c.tls, got, err, c.want)
		}
	}
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	if _, err := ProbeURL(cfg); err == nil || !strings.Contains(err.Error(), "-url") {
		t.Errorf("port 0: %v, want an error that suggests -url", err)
	}
}

// run is Run with the output captured; exactly one line must come out.
func run(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Run(args, &out, &errOut, noEnv)
	all := out.String() + errOut.String()
	if strings.Count(all, "\n") != 1 || !strings.HasSuffix(all, "\n") {
		t.Fatalf("healthcheck %v printed %q, want one line", args, all)
	}
	if (code == 0) != (out.Len() > 0) {
		t.Fatalf("healthcheck %v: exit %d with stdout %q, stderr %q", args, code, out.String(), errOut.String())
	}
	return code, strings.TrimSpace(all)
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunStatuses(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
		if status != http.StatusOK {
			fmt.Fprint(w, `{"error":{"code":"unavailable","message":"this node cannot reach the rest of the relay (NATS)"}}`)
		}
	}))
	defer srv.Close()
	cfg := writeConfig(t, "listen: "+srv.Listener.Addr().String()+"\napi_keys: [healthcheck-test-key-0123]\n")

	if code, line := run(t, "-config", cfg); code != 0 || line != "healthy: GET "+srv.URL+"/readyz: 200" {
		t.Fatalf("ready: %d %q", code, line)
	}
	status = http.StatusServiceUnavailable
	if code, line := run(t, "-config", cfg); code != 1 || !strings.Contains(line, "503 unavailable: this node cannot reach") {
		t.Fatalf("not ready: %d %q", code, line)
	}
	status = http.StatusOK
	if code, _ := run(t, "-url", srv.URL+"/readyz"); code != 0 {
		t.Fatalf("-url: exit %d", code)
	}
	if code, line := run(t, "-url", srv.URL+"/nothing"); code != 1 || !strings.Contains(line, "404") {
		t.Fatalf("-url to a 404: %d %q", code, line)
	}

	// Nobody listening: a port that was free a moment ago.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if code, line := run(t, "-config", writeConfig(t, "listen: "+addr+"\n")); code != 1 || !strings.Contains(line, "refused") {
		t.Fatalf("nothing listening: %d %q", code, line)
	}
	if code, line := run(t, "-config", filepath.Join(t.TempDir(), "missing.yaml")); code != 1 || !strings.HasPrefix(line, "unhealthy: config") {
		t.Fatalf("missing -config file: %d %q", code, line)
	}
	if code, _ := run(t, "-config", cfg, "extra"); code != 1 {
		t.Fatalf("extra argument: exit %d", code)
	}
}

func TestRunTimeout(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	start := time.Now()
	code, line := run(t, "-url", srv.URL+"/readyz", "-timeout", "200ms")
	if code != 1 || !strings.Contains(line, "deadline exceeded") {
		t.Fatalf("a relay that does not answer: %d %q", code, line)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the probe took %v with -timeout 200ms", d)
	}
}

// With tls configured the probe is https to the loopback address, and
// accepts exactly the certificate of tls.cert_file.
func TestRunTLSPinned(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	dir := t.TempDir()
	own := filepath.Join(dir, "own.pem")
	writePEM(t, own, srv.Certificate().Raw)
	key := filepath.Join(dir, "key.pem") // only stat'ed by the configuration check
	if err := os.WriteFile(key, []byte("not read by the probe"), 0o600); err != nil {
		t.Fatal(err)
	}
	listen := srv.Listener.Addr().String()
	cfg := writeConfig(t, fmt.Sprintf("listen: %s\ntls: {cert_file: %q, key_file: %q}\n", listen, own, key))
	if code, line := run(t, "-config", cfg); code != 0 || !strings.HasPrefix(line, "healthy: GET https://") {
		t.Fatalf("the relay's own certificate: %d %q", code, line)
	}

	other := filepath.Join(dir, "other.pem")
	writePEM(t, other, selfSigned(t))
	cfg = writeConfig(t, fmt.Sprintf("listen: %s\ntls: {cert_file: %q, key_file: %q}\n", listen, other, key))
	if code, line := run(t, "-config", cfg); code != 1 || !strings.Contains(line, "not the one in tls.cert_file") {
		t.Fatalf("another certificate than tls.cert_file: %d %q", code, line)
	}
	// -url is verified against the system roots: the test server's
	// certificate is not among them.
	if code, line := run(t, "-url", srv.URL+"/readyz"); code != 1 || !strings.Contains(line, "certificate") {
		t.Fatalf("-url to an untrusted certificate: %d %q", code, line)
	}
}

func writePEM(t *testing.T, path string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func selfSigned(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
