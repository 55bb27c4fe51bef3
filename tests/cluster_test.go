package tests

import (
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/signrelay/signrelay/cluster"
	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/httpapi"
	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/signing"
)

// node is one relay of an in-process cluster: the real httpapi server,
// wired as main wires it, on its own embedded NATS server routed to the
// others on loopback.
type node struct {
	*relay
	link *cluster.Link
	cn   *cluster.Node
}

const (
	clusterUser = "route-user"
	clusterPass = "route-password-0123456789"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startCluster starts n relays whose embedded NATS servers route to each
// other, and waits until a message from each reaches every other.
func startCluster(t *testing.T, n int, mutate func(*config.Config)) []*node {
	t.Helper()
	routePorts := make([]int, n)
	for i := range routePorts {
		routePorts[i] = freePort(t)
	}
	routes := make([]string, n)
	for i, p := range routePorts {
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", p)
	}
	nodes := make([]*node, n)
	for i := 0; i < n; i++ {
		nd := &node{}
		i := i
		nd.relay = startRelayWith(t, func(c *config.Config) {
			c.Cluster.NodeID = fmt.Sprintf("node%d", i)
			c.Cluster.Embedded.Listen = "127.0.0.1:0"
			c.Cluster.Embedded.ClusterListen = fmt.Sprintf("127.0.0.1:%d", routePorts[i])
			c.Cluster.Embedded.Routes = routes
			c.Cluster.Embedded.User, c.Cluster.Embedded.Password = clusterUser, clusterPass
			if mutate != nil {
				mutate(c)
			}
		}, func(cfg config.Config, log *slog.Logger) (*httpapi.Server, error) {
			srv, cn, err := buildNode(cfg, log)
			// The route port was free when picked, but another test
			// process may have taken it since: pick another. The other
			// nodes learn the new one when this node connects to them
			// (NATS gossips route URLs).
			for try := 0; err != nil && strings.Contains(err.Error(), "address already in use") && try < 3; try++ {
				cfg.Cluster.Embedded.ClusterListen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
				srv, cn, err = buildNode(cfg, log)
			}
			if cn != nil {
				nd.link, nd.cn = cn.Link, cn
			}
			return srv, err
		})
		nodes[i] = nd
	}
	waitMesh(t, nodes)
	return nodes
}

// buildNode is main's wiring of a cluster node.
func buildNode(cfg config.Config, log *slog.Logger) (*httpapi.Server, *cluster.Node, error) {
	reg := httpapi.NewRegistry(cfg)
	cn, err := cluster.Join(cfg, reg, log)
	if err != nil {
		return nil, nil, err
	}
	j, err := httpapi.OpenJournal(cfg, log)
	if err != nil {
		cn.Close()
		return nil, nil, err
	}
	m := httpapi.NewMetrics()
	cn.Bus.SetMetrics(m)
	opts := httpapi.ServiceOptions(cfg, log, cn.Bus)
	opts.Shared, opts.Metrics, opts.Journal = cn.Store, m, j
	svc := signing.New(reg, opts)
	if err := cn.Start(svc); err != nil {
		return nil, nil, err
	}
	srv, err := httpapi.NewWithParts(cfg, log, httpapi.Parts{
		Registry: reg, Service: svc, Ready: cn.Ready, NATSUp: cn.Link.Ready, Clustered: true, Close: cn.Close, Metrics: m, Journal: j,
	})
	return srv, cn, err
}

// waitMesh waits until every node hears every other on NATS: routes form,
// and interest crosses them, asynchronously.
func waitMesh(t *testing.T, nodes []*node) {
	t.Helper()
	for i, to := range nodes {
		subject := fmt.Sprintf("test.mesh.%d", i)
		got := make(chan *nats.Msg, 64)
		sub, err := to.link.Conn().ChanSubscribe(subject, got)
		if err != nil {
			t.Fatal(err)
		}
		_ = to.link.Conn().Flush()
		for j, from := range nodes {
			if i == j {
				continue
			}
			deadline := time.Now().Add(wait)
		retry:
			for {
				_ = from.link.Conn().Publish(subject, []byte(from.link.NodeID()))
				_ = from.link.Conn().Flush()
				select {
				case m := <-got:
					if string(m.Data) == from.link.NodeID() {
						break retry
					}
				case <-time.After(20 * time.Millisecond):
				}
				if time.Now().After(deadline) {
					t.Fatalf("node %d does not hear node %d over NATS", i, j)
				}
			}
		}
		_ = sub.Unsubscribe()
	}
}

// §A.1: a request made on one node reaches a connection on another.
func TestClusterCrossNodeSign(t *testing.T) {
	n := startCluster(t, 3, nil)
	h := n[1].connect(t, nil)
	msg := []byte("from node 0 to a holder on node 1")
	res := n[0].signAsync(signBody(h.pub, msg, map[string]any{"description": "cross"}))
	req := h.expect(protocol.TypeSignRequest)
	if req.str("description") != "cross" {
		t.Fatalf("request %v", req)
	}
	h.approve(req)
	verifyResult(t, awaitResp(t, res), h.pub, msg)
}

// §A.1, §A.2: fan-out over two other nodes; the first valid answer wins
// and the connection on the losing node hears answered_elsewhere.
func TestClusterFanOutFirstAnswerWins(t *testing.T) {
	n := startCluster(t, 3, nil)
	a := n[1].connect(t, nil)
	b := n[2].connect(t, a.priv)
	msg := []byte("fan out")
	res := n[0].signAsync(signBody(a.pub, msg, nil))
	ra, rb := a.expect(protocol.TypeSignRequest), b.expect(protocol.TypeSignRequest)
	if ra.str("request_id") != rb.str("request_id") || ra.str("expires_at") != rb.str("expires_at") {
		t.Fatalf("two nodes got different requests: %v %v", ra, rb)
	}
	b.approve(rb)
	verifyResult(t, awaitResp(t, res), a.pub, msg)
	a.expectCancel(ra.str("request_id"), protocol.CancelAnsweredElsewhere)
}

// §A.2: a reject on another node ends the request, with the reason.
func TestClusterRemoteReject(t *testing.T) {
	n := startCluster(t, 2, nil)
	h := n[1].connect(t, nil)
	res := n[0].signAsync(signBody(h.pub, []byte("no"), nil))
	h.reject(h.expect(protocol.TypeSignRequest), "not from node 1")
	got := awaitResp(t, res)
	expectError(t, got, http.StatusForbidden, "rejected")
	if got.ErrReason == nil || *got.ErrReason != "not from node 1" {
		t.Fatalf("reason %v", got.ErrReason)
	}
}

// 502 across nodes: every connection, on two nodes, answers invalidly.
func TestClusterInvalidEverywhereIs502(t *testing.T) {
	n := startCluster(t, 3, nil)
	a := n[1].connect(t, nil)
	b := n[2].connect(t, a.priv)
	res := n[0].signAsync(signBody(a.pub, []byte("bad"), nil))
	for _, h := range []*holder{a, b} {
		req := h.expect(protocol.TypeSignRequest)
		h.send(frame{"type": "sign_response", "request_id": req.str("request_id"), "message": req.str("message"), "signature": b64(make([]byte, 64))})
		h.expectError("invalid_signature")
	}
	expectError(t, awaitResp(t, res), http.StatusBadGateway, "invalid_signature")
}

// §A.3: a connection introduced on a third node while a request is
// pending gets it, with the same request_id and expires_at.
func TestClusterRedeliveryToThirdNode(t *testing.T) {
	n := startCluster(t, 3, nil)
	a := n[1].connect(t, nil)
	msg := []byte("survives a move")
	res := n[0].signAsync(signBody(a.pub, msg, nil))
	first := a.expect(protocol.TypeSignRequest)
	a.conn.Close()
	b := n[2].connect(t, a.priv)
	again := b.expect(protocol.TypeSignRequest)
	for _, k := range []string{"request_id", "expires_at", "message"} {
		if first.str(k) != again.str(k) {
			t.Fatalf("%s changed on redelivery: %q -> %q", k, first.str(k), again.str(k))
		}
	}
	b.approve(again)
	verifyResult(t, awaitResp(t, res), a.pub, msg)
}

// §A.2: timeout and requester_gone reach the connection on another node.
func TestClusterRemoteTimeoutAndRequesterGone(t *testing.T) {
	n := startCluster(t, 2, nil)
	h := n[1].connect(t, nil)
	res := n[0].signAsync(signBody(h.pub, []byte("slow"), map[string]any{"timeout_ms": 300}))
	req := h.expect(protocol.TypeSignRequest)
	expectError(t, awaitResp(t, res), http.StatusGatewayTimeout, "timeout")
	h.expectCancel(req.str("request_id"), protocol.CancelTimeout)

	c, err := net.Dial("tcp", strings.TrimPrefix(n[0].base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	body := string(signBody(h.pub, []byte("abandoned"), nil))
	_, _ = c.Write([]byte("POST /sign HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer " + testAPIKey +
		"\r\nContent-Type: application/json\r\nContent-Length: " + itoa(len(body)) + "\r\n\r\n" + body))
	req = h.expect(protocol.TypeSignRequest)
	c.Close()
	h.expectCancel(req.str("request_id"), protocol.CancelRequesterGone)
}

// §A.1: 404 only when no node holds the key.
func TestClusterNotConnectedAnywhere(t *testing.T) {
	n := startCluster(t, 3, nil)
	pub, _ := newKey(t)
	expectError(t, n[0].post(signBody(pub, []byte("x"), nil)), http.StatusNotFound, "not_connected")
}

// §A.1: a connection counts everywhere from the moment its introduced
// frame is sent: a request made on another node right then never 404s.
func TestClusterIntroduceThenSignAtOnce(t *testing.T) {
	n := startCluster(t, 3, nil)
	for i := 0; i < 20; i++ {
		h := n[1+i%2].connect(t, nil)
		res := n[0].signAsync(signBody(h.pub, []byte("at once"), nil))
		h.approve(h.expect(protocol.TypeSignRequest))
		verifyResult(t, awaitResp(t, res), h.pub, []byte("at once"))
		h.conn.Close()
	}
}

// §A.4: a connection that closes on one node stops counting on the others
// within a second.
func TestClusterClosedConnectionStopsCounting(t *testing.T) {
	n := startCluster(t, 2, nil)
	h := n[1].connect(t, nil)
	res := n[0].signAsync(signBody(h.pub, []byte("warm"), nil))
	h.approve(h.expect(protocol.TypeSignRequest))
	verifyResult(t, awaitResp(t, res), h.pub, []byte("warm"))
	h.conn.Close()
	deadline := time.Now().Add(time.Second)
	for {
		got := n[0].post(signBody(h.pub, []byte("gone?"), map[string]any{"timeout_ms": 50}))
		if got.Status == http.StatusNotFound {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still counted a second after it closed: %d %s", got.Status, got.RawBody)
		}
	}
}

// §A.6: a node that shuts down ends the requests it answers with 503 and
// sign_cancel shutdown on every node; requests of other nodes go on.
func TestClusterOwnerShutdown(t *testing.T) {
	n := startCluster(t, 3, func(c *config.Config) { c.ShutdownGrace = 0 })
	h := n[1].connect(t, nil)
	mine := n[0].signAsync(signBody(h.pub, []byte("owned by node 0"), nil))
	r0 := h.expect(protocol.TypeSignRequest)
	other := n[2].signAsync(signBody(h.pub, []byte("owned by node 2"), nil))
	r2 := h.expect(protocol.TypeSignRequest)
	go n[0].shutdown()
	expectError(t, awaitResp(t, mine), http.StatusServiceUnavailable, "unavailable")
	h.expectCancel(r0.str("request_id"), protocol.CancelShutdown)
	h.approve(r2)
	verifyResult(t, awaitResp(t, other), h.pub, []byte("owned by node 2"))
}

// §A.6: a holder's node shuts down; the holder reconnects to another node
// and is handed the request again, which the backend then gets.
func TestClusterHolderNodeShutdown(t *testing.T) {
	n := startCluster(t, 3, func(c *config.Config) { c.ShutdownGrace = 0 })
	h := n[1].connect(t, nil)
	msg := []byte("outlives its node")
	res := n[0].signAsync(signBody(h.pub, msg, nil))
	first := h.expect(protocol.TypeSignRequest)
	go n[1].shutdown()
	h.expectClose(protocol.CloseGoingAway)
	again := n[2].connect(t, h.priv)
	req := again.expect(protocol.TypeSignRequest)
	if req.str("request_id") != first.str("request_id") {
		t.Fatalf("got %v, want %s again", req, first.str("request_id"))
	}
	again.approve(req)
	verifyResult(t, awaitResp(t, res), ed25519.PublicKey(h.pub), msg)
}

func (r *relay) readyz(t *testing.T) int {
	t.Helper()
	res, err := r.client.Get(r.base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// §A.8: a node cut off from the others (its embedded server has no route
// left) says so on /readyz and answers 503, not 404, for a key it does not
// hold itself; a key it holds still works.
func TestClusterCutOffNode(t *testing.T) {
	n := startCluster(t, 2, nil)
	// Ready only once the request store is open too (JetStream elects its
	// leaders seconds after the routes are up): a 200 while it is not
	// would send a load balancer's asynchronous requests into 503s. Two
	// new embedded nodes take about 15 s for that (two Raft elections).
	deadline := time.Now().Add(45 * time.Second)
	for n[0].readyz(t) != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("/readyz not 200 while connected")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !n[0].cn.Store.Ready() {
		t.Fatal("/readyz 200 before the request store was open")
	}
	local := n[0].connect(t, nil)
	n[1].shutdown()
	deadline = time.Now().Add(wait)
	for n[0].readyz(t) != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("/readyz still 200 with no route to the other node")
		}
	}
	pub, _ := newKey(t)
	expectError(t, n[0].post(signBody(pub, []byte("x"), nil)), http.StatusServiceUnavailable, "unavailable")
	res := n[0].signAsync(signBody(local.pub, []byte("local"), nil))
	local.approve(local.expect(protocol.TypeSignRequest))
	verifyResult(t, awaitResp(t, res), local.pub, []byte("local"))
}

// natsServer runs a standalone NATS server on port, as an operator's
// external server would be.
func natsServer(t *testing.T, port int) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true, MaxPayload: 1 << 20, JetStream: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(wait) {
		t.Fatal("NATS server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// External NATS: the server restarts under a pending request. Both nodes
// reconnect and resync; the request is answered across them, and new
// requests work. While the server is down, a node answers 503 (not 404)
// for keys it does not hold.
func TestClusterExternalNATSRestart(t *testing.T) {
	port := freePort(t)
	ns := natsServer(t, port)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	var n [2]*node
	for i := range n {
		nd := &node{}
		nd.relay = startRelayWith(t, func(c *config.Config) {
			c.Cluster.NATSURL = url
			c.Cluster.NodeID = fmt.Sprintf("ext%d", i)
		}, func(cfg config.Config, log *slog.Logger) (*httpapi.Server, error) {
			srv, cn, err := buildNode(cfg, log)
			// The route port was free when picked, but another test
			// process may have taken it since: pick another. The other
			// nodes learn the new one when this node connects to them
			// (NATS gossips route URLs).
			for try := 0; err != nil && strings.Contains(err.Error(), "address already in use") && try < 3; try++ {
				cfg.Cluster.Embedded.ClusterListen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
				srv, cn, err = buildNode(cfg, log)
			}
			if cn != nil {
				nd.link, nd.cn = cn.Link, cn
			}
			return srv, err
		})
		n[i] = nd
	}
	waitMesh(t, n[:])
	h := n[1].connect(t, nil)
	msg := []byte("across a NATS restart")
	res := n[0].signAsync(signBody(h.pub, msg, nil))
	req := h.expect(protocol.TypeSignRequest)

	ns.Shutdown()
	ns.WaitForShutdown()
	deadline := time.Now().Add(wait)
	for n[0].readyz(t) != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("/readyz still 200 with NATS down")
		}
	}
	pub, _ := newKey(t)
	expectError(t, n[0].post(signBody(pub, []byte("x"), nil)), http.StatusServiceUnavailable, "unavailable")

	natsServer(t, port)
	for _, nd := range n {
		deadline := time.Now().Add(wait)
		for nd.readyz(t) != http.StatusOK {
			if time.Now().After(deadline) {
				t.Fatal("/readyz not back after NATS came back")
			}
		}
	}
	waitMesh(t, n[:])
	h.approve(req)
	verifyResult(t, awaitResp(t, res), h.pub, msg)
	res = n[0].signAsync(signBody(h.pub, []byte("after"), nil))
	h.approve(h.expect(protocol.TypeSignRequest))
	verifyResult(t, awaitResp(t, res), h.pub, []byte("after"))
}

// The per-(API key, public key) rate limit holds when the key's holder is
// on another node.
func TestClusterPublicKeyRateLimit(t *testing.T) {
	n := startCluster(t, 2, withLimits(ample, frozen(1), ample))
	h := n[1].connect(t, nil)
	res := n[0].signAsync(signBody(h.pub, []byte("first"), nil))
	h.approve(h.expect(protocol.TypeSignRequest))
	verifyResult(t, awaitResp(t, res), h.pub, []byte("first"))
	expectError(t, n[0].post(signBody(h.pub, []byte("second"), nil)), http.StatusTooManyRequests, "rate_limited")
}

// An invalid answer from a connection on another node: the owner, which
// alone verifies a cross-node signature, tells the key holder, with the
// request_id; the connection may not answer that request again (as on one
// node: unknown_request), another connection's valid answer still wins,
// the one that failed gets sign_cancel like any other recipient, and each
// answer gets one error frame, no more.
func TestClusterInvalidAnswerRefusedByTheOwner(t *testing.T) {
	one := startRelay(t, nil)
	n := startCluster(t, 2, nil)
	for _, tc := range []struct {
		name             string
		backend, holders *relay
	}{
		{"one node", one, one},
		{"other node", n[0].relay, n[1].relay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.holders.connect(t, nil)
			b := tc.holders.connect(t, a.priv)
			msg := []byte("refused by the owner")
			res := tc.backend.signAsync(signBody(a.pub, msg, nil))
			ra, rb := a.expect(protocol.TypeSignRequest), b.expect(protocol.TypeSignRequest)
			id := ra.str("request_id")
			// The second answer goes before the first one's error is
			// back: on another node, it is refused there at once.
			a.badAnswer(ra)
			a.approve(ra)
			expectErrors(t, a, id, protocol.CodeInvalidSignature, protocol.CodeUnknownRequest)
			b.approve(rb)
			verifyResult(t, awaitResp(t, res), a.pub, msg)
			a.expectCancel(id, protocol.CancelAnsweredElsewhere)
			b.noMore(protocol.TypeSignCancel)
			// An answer after the end is unknown_request, as on one node.
			a.approve(ra)
			expectErrors(t, a, id, protocol.CodeUnknownRequest)
			a.noMore(protocol.TypeError)
		})
	}
}

// expectErrors reads one error frame for request id per code, in any
// order: on a cluster, the owner's word on an answer can come after the
// holder's node's word on a later one.
func expectErrors(t *testing.T, h *holder, id string, codes ...string) {
	t.Helper()
	want := make(map[string]int)
	for _, c := range codes {
		want[c]++
	}
	for range codes {
		e := h.expect(protocol.TypeError)
		if e.str("request_id") != id || want[e.str("code")] == 0 || e.str("message") == "" {
			t.Fatalf("error %v, want one of %v for %s", e, want, id)
		}
		want[e.str("code")]--
	}
}
