package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/signrelay/signrelay/config"
)

// wait bounds every wait for something asynchronous in these tests.
const wait = 10 * time.Second

// freePort returns a loopback port that was free a moment ago, for the
// addresses that must be known before a server starts (routes, restarts).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// logRecorder is a slog handler that keeps every message, so that a test
// can wait for one.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
	ch   chan struct{} // signalled (non-blocking) on each record
}

func newLogRecorder() *logRecorder { return &logRecorder{ch: make(chan struct{}, 1)} }

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	msg := rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		msg += " " + a.String()
		return true
	})
	r.mu.Lock()
	r.msgs = append(r.msgs, msg)
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
	return nil
}
func (r *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &attrHandler{r, as}
}
func (r *logRecorder) WithGroup(string) slog.Handler { return r }

// find reports whether a line containing every one of subs was logged.
func (r *logRecorder) find(subs ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
next:
	for _, m := range r.msgs {
		for _, s := range subs {
			if !strings.Contains(m, s) {
				continue next
			}
		}
		return true
	}
	return false
}

// waitFor waits for a logged line containing every one of subs.
func (r *logRecorder) waitFor(t *testing.T, subs ...string) {
	t.Helper()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for !r.find(subs...) {
		select {
		case <-r.ch:
		case <-deadline.C:
			t.Fatalf("no log line with %q within %s", subs, wait)
		}
	}
}

type attrHandler struct {
	*logRecorder
	as []slog.Attr
}

func (h *attrHandler) Handle(ctx context.Context, rec slog.Record) error {
	rec.AddAttrs(h.as...)
	return h.logRecorder.Handle(ctx, rec)
}
func (h *attrHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &attrHandler{h.logRecorder, append(append([]slog.Attr(nil), h.as...), as...)}
}

func embeddedConfig(listen string) config.Config {
	cfg := config.Default()
	cfg.Cluster.Embedded.Listen = listen
	return cfg
}

func open(t *testing.T, cfg config.Config, log *slog.Logger) *Link {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	l, err := Open(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func recv(t *testing.T, sub *nats.Subscription) *nats.Msg {
	t.Helper()
	m, err := sub.NextMsg(wait)
	if err != nil {
		t.Fatalf("no message on %s: %v", sub.Subject, err)
	}
	return m
}

// startServer starts a standalone nats-server in-process, as an operator
// would run one.
func startServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.NoSigs, opts.NoLog = true, true
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(wait) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

func TestEnabledAndMaxPayload(t *testing.T) {
	cfg := config.Default()
	if Enabled(cfg) {
		t.Fatal("the default config enables a cluster")
	}
	if _, err := Open(cfg, nil); err == nil || !strings.Contains(err.Error(), "not configured") {
		t.Fatalf("Open without a cluster: %v", err)
	}
	if !Enabled(embeddedConfig("127.0.0.1:0")) {
		t.Fatal("embedded.listen does not enable a cluster")
	}
	cfg.Cluster.NATSURL = "nats://127.0.0.1:4222"
	if !Enabled(cfg) {
		t.Fatal("nats_url does not enable a cluster")
	}
	if got, want := MaxPayload(cfg), cfg.MinFrameBytes()+4096; got != want {
		t.Fatalf("MaxPayload = %d, want %d", got, want)
	}
	cfg.Sign.MaxMessageBytes = 16 << 20
	if got := MaxPayload(cfg); got < 2*(16<<20)*4/3 {
		t.Fatalf("MaxPayload for 16 MiB messages = %d: a base64 message and signature do not fit", got)
	}
}

// (1) One embedded server: Open, Ready, publish and subscribe; NoEcho.
func TestEmbeddedOneNode(t *testing.T) {
	rec := newLogRecorder()
	cfg := embeddedConfig("127.0.0.1:0")
	cfg.LogLevel = "debug"
	l := open(t, cfg, slog.New(rec))
	if !l.Ready() {
		t.Fatal("not Ready after Open")
	}
	if len(l.NodeID()) != 16 || l.Prefix() != "signrelay" {
		t.Fatalf("node id %q prefix %q, want 16 hex digits and signrelay", l.NodeID(), l.Prefix())
	}
	if !strings.HasPrefix(l.ClientURL(), "nats://127.0.0.1:") || strings.HasSuffix(l.ClientURL(), ":0") {
		t.Fatalf("ClientURL %q", l.ClientURL())
	}
	if got := l.Conn().MaxPayload(); got < int64(MaxPayload(cfg)) {
		t.Fatalf("embedded max_payload %d < %d", got, MaxPayload(cfg))
	}
	// log_level debug routes the server's notices to our logger.
	rec.waitFor(t, "component=nats-server")

	other, err := nats.Connect(l.ClientURL(), nats.Timeout(wait))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	subj := l.Prefix() + ".test.echo"
	own, err := l.Conn().SubscribeSync(subj)
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := other.SubscribeSync(subj)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := l.Conn().Publish(subj, []byte("from the link")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, theirs); string(m.Data) != "from the link" {
		t.Fatalf("other connection got %q", m.Data)
	}
	// The server handled the link's message before this one (the other
	// connection saw it first), so an echo would arrive first.
	if err := other.Publish(subj, []byte("from the other")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, own); string(m.Data) != "from the other" {
		t.Fatalf("the link heard itself: got %q first", m.Data)
	}

	// Request/reply through the prefixed inbox.
	if _, err := other.Subscribe(subj+".rpc", func(m *nats.Msg) { m.Respond([]byte("pong")) }); err != nil {
		t.Fatal(err)
	}
	other.Flush()
	reply, err := l.Conn().Request(subj+".rpc", []byte("ping"), wait)
	if err != nil || string(reply.Data) != "pong" {
		t.Fatalf("request: %v %v", reply, err)
	}
	if !strings.HasPrefix(reply.Subject, l.Prefix()+"._INBOX.") {
		t.Fatalf("reply subject %q is not under the prefix", reply.Subject)
	}

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if l.Ready() {
		t.Fatal("Ready after Close")
	}
	// The embedded server is gone.
	if c, err := nats.Connect(l.ClientURL(), nats.Timeout(time.Second)); err == nil {
		c.Close()
		t.Fatal("the embedded server still accepts connections after Close")
	}
}

func TestEmbeddedPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	start := time.Now()
	_, err = Open(embeddedConfig(ln.Addr().String()), nil)
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Open on a taken port: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a taken port failed Open only after %s", d)
	}
	t.Log(err)
}

// (2) Three relays' embedded servers routed together, with route
// credentials; a server with the wrong credentials does not join.
func TestEmbeddedThreeNodes(t *testing.T) {
	ports := []int{freePort(t), freePort(t), freePort(t)}
	node := func(i int, password string, routes []int) (*Link, *logRecorder) {
		cfg := embeddedConfig("127.0.0.1:0")
		e := &cfg.Cluster.Embedded
		e.ClusterListen = hostPort(ports[i])
		e.User, e.Password = "route-user", password
		for _, p := range routes {
			e.Routes = append(e.Routes, "nats://"+hostPort(p))
		}
		cfg.Cluster.NodeID = fmt.Sprintf("node-%d", i)
		rec := newLogRecorder()
		return open(t, cfg, slog.New(rec)), rec
	}
	a, recA := node(0, "s3cret", []int{ports[1], ports[2]})
	b, _ := node(1, "s3cret", []int{ports[0], ports[2]})
	c, _ := node(2, "s3cret", []int{ports[0], ports[1]})
	if a.NodeID() != "node-0" || a.srv.Name() != "node-0" {
		t.Fatalf("node id %q, server name %q", a.NodeID(), a.srv.Name())
	}

	// The relay's own connection needs the embedded credentials too: a
	// stranger without them is refused.
	if nc, err := nats.Connect(a.ClientURL(), nats.Timeout(wait)); err == nil {
		nc.Close()
		t.Fatal("the embedded server accepted a client without credentials")
	}

	subj := "signrelay.test.routed"
	subC, err := c.Conn().SubscribeSync(subj)
	if err != nil {
		t.Fatal(err)
	}
	subB, err := b.Conn().SubscribeSync(subj)
	if err != nil {
		t.Fatal(err)
	}
	c.Conn().Flush()
	b.Conn().Flush()
	// Route interest propagates asynchronously: publish until both hear it.
	pollDeliver(t, a.Conn(), subj, subC)
	pollDeliver(t, a.Conn(), subj, subB)

	// A fourth server with the wrong route password: the others refuse it.
	d, _ := func() (*Link, *logRecorder) {
		ports = append(ports, freePort(t))
		return node(3, "wrong", []int{ports[0]})
	}()
	// A logs the refused route (rid: a route; cid: would be a client).
	recA.waitFor(t, "component=nats-server", "rid:", "authentication error")
	// (D counts a route for a moment, between A's INFO and A's refusal of
	// its CONNECT; A never registers it.)
	rz, err := a.srv.Routez(nil)
	if err != nil {
		t.Fatal(err)
	}
	peers := map[string]bool{}
	for _, r := range rz.Routes {
		peers[r.RemoteName] = true
	}
	if !peers["node-1"] || !peers["node-2"] || peers["node-3"] {
		t.Fatalf("node A's routes go to %v, want node-1 and node-2 only", peers)
	}
	subD, err := d.Conn().SubscribeSync(subj)
	if err != nil {
		t.Fatal(err)
	}
	d.Conn().Flush()
	// A message from A now reaches B and C (routes up) but not D; B's and
	// C's arrivals prove it was routed, so D had its chance.
	if err := a.Conn().Publish(subj, []byte("after D")); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*nats.Subscription{subB, subC} {
		for {
			if m := recv(t, s); string(m.Data) == "after D" {
				break
			}
		}
	}
	if m, err := subD.NextMsg(50 * time.Millisecond); err == nil {
		t.Fatalf("the server with a wrong password got %q", m.Data)
	}
}

// pollDeliver publishes on subj from pub until sub receives one of them.
func pollDeliver(t *testing.T, pub *nats.Conn, subj string, sub *nats.Subscription) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for i := 0; time.Now().Before(deadline); i++ {
		if err := pub.Publish(subj, []byte("poll "+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
		if _, err := sub.NextMsg(20 * time.Millisecond); err == nil {
			return
		}
	}
	t.Fatalf("nothing published on %s reached the other node within %s", subj, wait)
}

// (3) External mode: an operator's nats-server with user and password.
func TestExternalServer(t *testing.T) {
	srv := startServer(t, &server.Options{Port: server.RANDOM_PORT, Username: "relay", Password: "pw-0123456789"})
	cfg := config.Default()
	cfg.Cluster.NATSURL = srv.ClientURL()
	cfg.Cluster.User, cfg.Cluster.Password = "relay", "pw-0123456789"
	cfg.Cluster.SubjectPrefix = "tenant.sr"
	one, two := open(t, cfg, nil), open(t, cfg, nil)
	if one.NodeID() == two.NodeID() {
		t.Fatalf("two random node ids are both %q", one.NodeID())
	}
	if one.ClientURL() != "" {
		t.Fatalf("ClientURL %q without an embedded server", one.ClientURL())
	}
	sub, err := two.Conn().SubscribeSync(two.Prefix() + ".x")
	if err != nil {
		t.Fatal(err)
	}
	two.Conn().Flush()
	if err := one.Conn().Publish(one.Prefix()+".x", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, sub); string(m.Data) != "hi" {
		t.Fatalf("got %q", m.Data)
	}

	cfg.Cluster.Password = "wrong"
	_, err = Open(cfg, nil)
	if err == nil {
		t.Fatal("Open with a wrong password succeeded")
	}
	if msg := err.Error(); !strings.Contains(msg, srv.ClientURL()) || !strings.Contains(strings.ToLower(msg), "authorization") {
		t.Fatalf("error %q does not name the URL and the authorization failure", msg)
	}

	// Nobody listening: a clear, prompt error naming the URL.
	cfg.Cluster.NATSURL = "nats://" + hostPort(freePort(t))
	start := time.Now()
	if _, err := Open(cfg, nil); err == nil || !strings.Contains(err.Error(), cfg.Cluster.NATSURL) {
		t.Fatalf("Open with no server: %v", err)
	}
	if d := time.Since(start); d > connectWait+time.Second {
		t.Fatalf("Open with no server took %s", d)
	}
}

// (4) Reconnect forever: Ready goes false when the server goes away, and
// true again when a server comes back on the same port.
func TestReconnect(t *testing.T) {
	port := freePort(t)
	srv := startServer(t, &server.Options{Port: port})
	cfg := config.Default()
	cfg.Cluster.NATSURL = srv.ClientURL()
	rec := newLogRecorder()
	l := open(t, cfg, slog.New(rec))
	states := make(chan bool, 16)
	l.OnStateChange(func(ready bool) { states <- ready })
	if !l.Ready() {
		t.Fatal("not Ready after Open")
	}
	expect := func(want bool) {
		t.Helper()
		select {
		case got := <-states:
			if got != want {
				t.Fatalf("state change to %v, want %v", got, want)
			}
		case <-time.After(wait):
			t.Fatalf("no state change to %v within %s", want, wait)
		}
		if l.Ready() != want {
			t.Fatalf("Ready() = %v after a change to %v", l.Ready(), want)
		}
	}

	srv.Shutdown()
	srv.WaitForShutdown()
	expect(false)
	rec.waitFor(t, "lost the NATS connection")

	again := startServer(t, &server.Options{Port: port})
	expect(true)
	rec.waitFor(t, "reconnected to NATS")
	sub, err := l.Conn().SubscribeSync("signrelay.after")
	if err != nil {
		t.Fatal(err)
	}
	l.Conn().Flush()
	other, err := nats.Connect(again.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.Publish("signrelay.after", []byte("back"))
	if m := recv(t, sub); string(m.Data) != "back" {
		t.Fatalf("got %q", m.Data)
	}
	if o := l.Conn().Opts; o.MaxReconnect != -1 || o.PingInterval != pingInterval || o.MaxPingsOut != maxPingsOut || o.ReconnectBufSize != reconnectBuf || !o.NoEcho || o.RetryOnFailedConnect {
		t.Fatalf("options: max_reconnect %d ping %s/%d buf %d no_echo %v retry_on_failed %v",
			o.MaxReconnect, o.PingInterval, o.MaxPingsOut, o.ReconnectBufSize, o.NoEcho, o.RetryOnFailedConnect)
	}

	// Close reports false once, and does not log a lost connection.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	expect(false)
	if rec.find("closed for good") {
		t.Fatal("Close logged the connection as closed for good")
	}
}

// (5) A server whose max_payload is too small fails Open, saying what to raise.
func TestMaxPayloadTooSmall(t *testing.T) {
	srv := startServer(t, &server.Options{Port: server.RANDOM_PORT, MaxPayload: 1024})
	cfg := config.Default()
	cfg.Cluster.NATSURL = srv.ClientURL()
	_, err := Open(cfg, nil)
	if err == nil {
		t.Fatal("Open accepted a server with max_payload 1 KiB")
	}
	if msg := err.Error(); !strings.Contains(msg, "max_payload") || !strings.Contains(msg, strconv.Itoa(MaxPayload(cfg))) || !strings.Contains(msg, srv.ClientURL()) {
		t.Fatalf("error %q does not say which server, which limit to raise, and to what", msg)
	}
	t.Log(err)
	// The refused connection is closed (the server notices asynchronously).
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(wait); srv.NumClients() != 0; <-tick.C {
		if time.Now().After(deadline) {
			t.Fatalf("%d clients left after a refused Open", srv.NumClients())
		}
	}
}

// The other ways to authenticate and secure the link to an external
// server: token, nkey seed file, TLS with ca_file (and a client certificate).
func TestExternalAuthAndTLS(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := user.Seed()
	pub, _ := user.PublicKey()
	seedFile := write("user.nk", seed)

	caPEM, srvCert, cliCertPEM, cliKeyPEM := testPKI(t)
	caFile := write("ca.pem", caPEM)
	cliCert, cliKey := write("client.pem", cliCertPEM), write("client-key.pem", cliKeyPEM)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)

	for _, tc := range []struct {
		name  string
		opts  server.Options
		set   func(c *config.Cluster)
		wrong func(c *config.Cluster) // makes Open fail
		fail  string                  // in the error of the wrong one
	}{
		{
			"token", server.Options{Authorization: "tok-0123456789"},
			func(c *config.Cluster) { c.Token = "tok-0123456789" },
			func(c *config.Cluster) { c.Token = "nope" }, "uthorization",
		},
		{
			"nkey", server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}},
			func(c *config.Cluster) { c.NkeyFile = seedFile },
			func(c *config.Cluster) { c.NkeyFile = write("bad.nk", []byte("not a seed")) }, "nkey_file",
		},
		{
			"TLS with a client certificate",
			server.Options{TLSConfig: &tls.Config{
				Certificates: []tls.Certificate{srvCert}, ClientCAs: pool,
				ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
			}, TLSVerify: true},
			func(c *config.Cluster) { c.TLS = config.ClusterTLS{CAFile: caFile, CertFile: cliCert, KeyFile: cliKey} },
			func(c *config.Cluster) { c.TLS = config.ClusterTLS{CertFile: cliCert, KeyFile: cliKey} }, "certificate",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			opts.Port = server.RANDOM_PORT
			srv := startServer(t, &opts)
			cfg := config.Default()
			// nats:// with TLS keys set: the link insists on TLS all the same.
			cfg.Cluster.NATSURL = "nats://" + srv.Addr().String()
			tc.set(&cfg.Cluster)
			l := open(t, cfg, nil)
			if !l.Ready() {
				t.Fatal("not Ready")
			}
			if cfg.Cluster.TLS.Enabled() {
				if _, err := l.Conn().TLSConnectionState(); err != nil {
					t.Fatalf("not TLS: %v", err)
				}
			}
			bad := config.Default()
			bad.Cluster.NATSURL = cfg.Cluster.NATSURL
			tc.wrong(&bad.Cluster)
			if err := bad.Validate(); err != nil {
				t.Fatal(err)
			}
			_, err := Open(bad, nil)
			if err == nil || !strings.Contains(err.Error(), tc.fail) {
				t.Fatalf("Open with a wrong %s: %v, want an error with %q", tc.name, err, tc.fail)
			}
			t.Log(err)
		})
	}
}

// testPKI makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all signed by the CA.
func testPKI(t *testing.T) (caPEM []byte, serverPair tls.Certificate, clientCert, clientKey []byte) {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := newKey()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	leaf := func(serial int64, usage x509.ExtKeyUsage) ([]byte, []byte) {
		k := newKey()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "127.0.0.1"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			KeyUsage: x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	}
	srvCert, srvKey := leaf(2, x509.ExtKeyUsageServerAuth)
	serverPair, err = tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey = leaf(3, x509.ExtKeyUsageClientAuth)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), serverPair, clientCert, clientKey
}
