package tests

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// selfSigned makes a self-signed ECDSA certificate for 127.0.0.1, writes
// its PEM files to a temporary directory and returns their paths and the
// parsed certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "signrelay test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, cert
}

func TestTLSRoundTrip(t *testing.T) {
	certFile, keyFile, cert := selfSigned(t)
	r := startRelay(t, func(c *config.Config) {
		c.TLS.CertFile, c.TLS.KeyFile = certFile, keyFile
	})
	if !strings.HasPrefix(r.base, "https://") || !strings.HasPrefix(r.ws, "wss://") {
		t.Fatalf("relay URLs %s %s, want https and wss", r.base, r.ws)
	}
	// Trust exactly the generated certificate, verifying as a real client does.
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	tlsConf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	r.client = &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tlsConf}}

	// The key holder over wss, its certificate checked against the pool.
	d := websocket.Dialer{HandshakeTimeout: wait, TLSClientConfig: tlsConf}
	conn, _, err := d.Dial(r.ws, nil)
	if err != nil {
		t.Fatalf("wss dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, ok := conn.NetConn().(*tls.Conn); !ok {
		t.Fatalf("WebSocket runs over %T, want *tls.Conn", conn.NetConn())
	}
	h := introduceConn(t, conn)
	pub := h.pub

	// The backend over https.
	msg := []byte("signed over TLS")
	res := r.signAsync(signBody(pub, msg, nil))
	h.approve(h.expect(protocol.TypeSignRequest))
	verifyResult(t, awaitResp(t, res), pub, msg)

	// The relay presents the configured certificate.
	hres, err := r.client.Get(r.base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	hres.Body.Close()
	if hres.StatusCode != http.StatusOK || hres.TLS == nil || !hres.TLS.PeerCertificates[0].Equal(cert) {
		t.Fatalf("healthz over https: %d, TLS state %v, want 200 with the generated certificate", hres.StatusCode, hres.TLS != nil)
	}

	// Plain HTTP on the TLS port gets no healthz answer.
	plain := &http.Client{Timeout: wait}
	if pres, err := plain.Get("http://" + strings.TrimPrefix(r.base, "https://") + "/healthz"); err == nil {
		pres.Body.Close()
		if pres.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP on the TLS port was served /healthz")
		}
	}
}

func TestTLSConfigErrors(t *testing.T) {
	certFile, keyFile, _ := selfSigned(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct {
		name       string
		cert, key  string
		wantInText string
	}{
		{"cert file missing", missing, keyFile, "tls.cert_file"},
		{"key file missing", certFile, missing, "tls.key_file"},
		{"only one of the pair", certFile, "", "tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.TLS.CertFile, cfg.TLS.KeyFile = tc.cert, tc.key
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.wantInText) {
				t.Fatalf("Validate: %v, want an error naming %s", err, tc.wantInText)
			}
		})
	}
}
