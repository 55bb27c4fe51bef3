package tests

import (
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/httpapi"
	"github.com/signrelay/signrelay/metrics"
	"github.com/signrelay/signrelay/protocol"
)

// The tests here make the counters that TestMetrics only sees at zero move,
// each through the real relay, and check that exactly the expected series
// moved by exactly the expected amount: every other value of the same
// families must stay where it was, so that an event counted under the
// wrong label fails as surely as one not counted.

const (
	seriesOverflows = `signrelay_send_queue_overflows_total`
	seriesNATSUp    = `signrelay_nats_up`
)

func introSeries(result string) string {
	return `signrelay_introductions_total{result="` + result + `"}`
}

func disconnectSeries(reason string) string {
	return `signrelay_holder_disconnects_total{reason="` + reason + `"}`
}

// lifecycleSeries is every series of the introduction and disconnect
// families (every label value the relay defines) and the overflow counter.
func lifecycleSeries() []string {
	out := []string{seriesOverflows}
	for _, r := range metrics.IntroductionResults {
		out = append(out, introSeries(r))
	}
	for _, r := range httpapi.CloseReasons() {
		out = append(out, disconnectSeries(r.String()))
	}
	return out
}

// snapshot is the value of each series now; every one must be exposed.
func snapshot(t *testing.T, url string, series []string) map[string]float64 {
	t.Helper()
	text := scrape(t, url)
	out := make(map[string]float64, len(series))
	for _, s := range series {
		v := metricValue(text, s)
		if v < 0 {
			t.Fatalf("%s is not exposed", s)
		}
		out[s] = v
	}
	return out
}

// awaitDeltas scrapes, bounded, until every series of before has moved by
// exactly want[series] (0 when absent from want) since before was taken,
// and fails with every difference if that does not happen. Counters only
// grow, so a series counted too often or under the wrong label never
// matches.
func awaitDeltas(t *testing.T, url string, before, want map[string]float64) {
	t.Helper()
	for s := range want {
		if _, ok := before[s]; !ok {
			t.Fatalf("%s is not in the snapshot", s)
		}
	}
	deadline := time.Now().Add(wait)
	for {
		now := snapshot(t, url, keys(before))
		var wrong []string
		for s, was := range before {
			if got := now[s] - was; got != want[s] {
				wrong = append(wrong, fmt.Sprintf("%s moved by %v, want %v", s, got, want[s]))
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			sort.Strings(wrong)
			t.Fatalf("metrics did not move as expected:\n\t%s", strings.Join(wrong, "\n\t"))
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, bounded
	}
}

func keys(m map[string]float64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// introduceWith sends an introduction for h's key signed by signer over the
// introduction message of nonce.
func (h *holder) introduceWith(signer ed25519.PrivateKey, nonce []byte) {
	h.t.Helper()
	h.send(frame{"type": "introduction", "public_key": b64(h.pub),
		"signature": b64(ed25519.Sign(signer, protocol.IntroductionMessage(nonce)))})
}

// A wrong proof (a signature by another key; one over another nonce) is
// counted as introductions{result="failed"} and, when the socket ends, as
// disconnects{reason="introduction_failed"}; nothing else moves.
func TestMetricsIntroductionFailed(t *testing.T) {
	r := startRelay(t, nil)
	url := r.base + "/metrics"
	before := snapshot(t, url, lifecycleSeries())

	_, priv := newKey(t)
	_, other := newKey(t)
	h, nonce := r.dialHolder(t, priv)
	h.introduceWith(other, nonce)
	h.expectError(protocol.CodeIntroductionFailed)
	h.expectClose(protocol.CloseIntroductionFailed)
	h.conn.Close()

	h, nonce = r.dialHolder(t, priv)
	nonce[0] ^= 0xff
	h.introduceWith(priv, nonce)
	h.expectError(protocol.CodeIntroductionFailed)
	h.expectClose(protocol.CloseIntroductionFailed)
	h.conn.Close()

	awaitDeltas(t, url, before, map[string]float64{
		introSeries("failed"):                   2,
		disconnectSeries("introduction_failed"): 2,
	})
	awaitMetric(t, url, `signrelay_holder_connections`, 0)
}

// No introduction within websocket.introduction_timeout is counted as
// introductions{result="timeout"} and disconnects{reason="introduction_timeout"}.
func TestMetricsIntroductionTimeout(t *testing.T) {
	r := startRelay(t, func(c *config.Config) {
		c.WebSocket.IntroductionTimeout = config.Duration(200 * time.Millisecond)
	})
	url := r.base + "/metrics"
	before := snapshot(t, url, lifecycleSeries())

	_, priv := newKey(t)
	h, _ := r.dialHolder(t, priv) // and never answers the challenge
	h.expectError(protocol.CodeIntroductionFailed)
	h.expectClose(protocol.CloseIntroductionFailed)
	h.conn.Close()

	awaitDeltas(t, url, before, map[string]float64{
		introSeries("timeout"):                   1,
		disconnectSeries("introduction_timeout"): 1,
	})
}

// A socket closed (with a close frame) before it answers the challenge is
// counted as introductions{result="abandoned"} and
// disconnects{reason="peer_closed"}.
func TestMetricsIntroductionAbandoned(t *testing.T) {
	r := startRelay(t, nil)
	url := r.base + "/metrics"
	before := snapshot(t, url, lifecycleSeries())

	_, priv := newKey(t)
	h, _ := r.dialHolder(t, priv)
	if err := h.conn.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	h.conn.Close()

	awaitDeltas(t, url, before, map[string]float64{
		introSeries("abandoned"):        1,
		disconnectSeries("peer_closed"): 1,
	})
}

// A correct introduction of a key already at
// websocket.max_connections_per_key is refused (too_many_connections, close
// 1013) and counted as introductions{result="too_many_connections"} and
// disconnects{reason="too_many_connections"}, not as "ok"; the connection
// that holds the key is left alone.
func TestMetricsTooManyConnections(t *testing.T) {
	r := startRelay(t, func(c *config.Config) { c.WebSocket.MaxConnectionsPerKey = 1 })
	url := r.base + "/metrics"
	first := r.connect(t, nil)
	awaitMetric(t, url, `signrelay_holder_connections`, 1)
	before := snapshot(t, url, lifecycleSeries())

	h, nonce := r.dialHolder(t, first.priv)
	h.introduceWith(first.priv, nonce)
	h.expectError(protocol.CodeTooManyConnections)
	h.expectClose(protocol.CloseTryAgainLater)
	h.conn.Close()

	awaitDeltas(t, url, before, map[string]float64{
		introSeries("too_many_connections"):      1,
		disconnectSeries("too_many_connections"): 1,
	})
	if v := metricValue(scrape(t, url), `signrelay_holder_connections`); v != 1 {
		t.Fatalf("signrelay_holder_connections = %v after the refusal, want 1", v)
	}
	// The first connection still serves the key.
	msg := []byte("still held")
	res := r.signAsync(signBody(first.pub, msg, nil))
	first.approve(first.expect(protocol.TypeSignRequest))
	verifyResult(t, awaitResp(t, res), first.pub, msg)
}

// A key holder that stops reading while the relay keeps queueing frames to
// it (a sign_request and a sign_cancel per request: asynchronous requests
// cancelled at once, so the pending limit of 1 is never reached) overflows
// its send queue once its socket is full: the connection is dropped, and
// counted once in signrelay_send_queue_overflows_total and as
// disconnects{reason="slow_reader"}, not as a failed write.
func TestMetricsSendQueueOverflow(t *testing.T) {
	r := startRelay(t, func(c *config.Config) {
		hostile(c)
		c.WebSocket.SendQueue = 8 // the minimum; raised to 2×1+32 by the relay
		c.Sign.MaxPendingPerKey = 1
		c.Sign.MaxMessageBytes = stuckMessageBytes
		// Longer than the test: a blocked write must not end the
		// connection as write_failed before the queue overflows.
		c.WebSocket.WriteTimeout = config.Duration(time.Minute)
	})
	url := r.base + "/metrics"
	pub, priv := newKey(t)
	conn, _, err := r.dialRaw(nil, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := introduceRaw(conn, priv); err != nil {
		t.Fatal(err)
	}
	// and never reads again
	awaitMetric(t, url, `signrelay_holder_connections`, 1)
	before := snapshot(t, url, lifecycleSeries())

	msg := make([]byte, stuckMessageBytes)
	for i := range msg {
		msg[i] = byte(i)
	}
	body := asyncBody(pub, msg, nil)
	// Some tens of requests without -race, about a hundred with it.
	deadline := time.Now().Add(2 * wait)
	for i := 0; ; i++ {
		if i > 10000 || time.Now().After(deadline) {
			t.Fatalf("the key's connection was not dropped after %d requests", i)
		}
		res := r.mustCall(t, "POST", "/sign", testAPIKey, body, nil)
		if res.Status == http.StatusNotFound && res.errCode() == "not_connected" {
			t.Logf("connection dropped after %d requests", i)
			break
		}
		if res.Status != http.StatusAccepted {
			t.Fatalf("POST %d: %d %s, want 202 until the connection is dropped, then 404", i, res.Status, res.Raw)
		}
		del := r.mustCall(t, "DELETE", "/sign/"+res.str("request_id"), testAPIKey, nil, nil)
		if del.Status != http.StatusOK {
			t.Fatalf("DELETE %d: %d %s", i, del.Status, del.Raw)
		}
	}
	awaitDeltas(t, url, before, map[string]float64{
		seriesOverflows:                 1,
		disconnectSeries("slow_reader"): 1,
	})
	awaitMetric(t, url, `signrelay_holder_connections`, 0)
}

// signrelay_nats_up on a node of an embedded cluster: 1 while a route to the
// other node is up, 0 once the other node is gone (cut off, as in
// TestClusterCutOffNode), and 1 again when a node comes back on the same
// routes.
func TestMetricsNATSUpCutOff(t *testing.T) {
	n := startCluster(t, 2, nil)
	url := n[0].base + "/metrics"
	awaitMetric(t, url, seriesNATSUp, 1)
	awaitMetric(t, n[1].base+"/metrics", seriesNATSUp, 1)

	n[1].shutdown()
	awaitMetric(t, url, seriesNATSUp, 0)

	back := restartNode(t, n[1])
	awaitMetric(t, url, seriesNATSUp, 1)
	awaitMetric(t, back.base+"/metrics", seriesNATSUp, 1)
}

// signrelay_nats_up on a node of an external NATS server: 0 while the
// server is down (the node's connection is lost), 1 again once it is back.
func TestMetricsNATSUpExternalRestart(t *testing.T) {
	port := freePort(t)
	ns := natsServer(t, port)
	nd := &node{}
	nd.relay = startRelayWith(t, func(c *config.Config) {
		c.Cluster.NATSURL = fmt.Sprintf("nats://127.0.0.1:%d", port)
		c.Cluster.NodeID = "metrics-ext"
	}, nodeBuilder(t, nd))
	url := nd.base + "/metrics"
	awaitMetric(t, url, seriesNATSUp, 1)

	ns.Shutdown()
	ns.WaitForShutdown()
	awaitMetric(t, url, seriesNATSUp, 0)

	natsServer(t, port)
	awaitMetric(t, url, seriesNATSUp, 1)
}

// restartNode starts a node again with old's configuration (its node ID
// and routes), after old has been shut down.
func restartNode(t *testing.T, old *node) *node {
	t.Helper()
	cfg := old.cfg
	nd := &node{}
	nd.relay = startRelayWith(t, func(c *config.Config) { *c = cfg }, nodeBuilder(t, nd))
	return nd
}

// nodeBuilder is startCluster's way of building a node into nd: main's
// wiring, with another route port if the chosen one was taken meanwhile.
func nodeBuilder(t *testing.T, nd *node) func(config.Config, *slog.Logger) (*httpapi.Server, error) {
	return func(cfg config.Config, log *slog.Logger) (*httpapi.Server, error) {
		srv, cn, err := buildNode(cfg, log)
		for try := 0; err != nil && strings.Contains(err.Error(), "address already in use") && cfg.Cluster.Embedded.ClusterListen != "" && try < 3; try++ {
			cfg.Cluster.Embedded.ClusterListen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
			srv, cn, err = buildNode(cfg, log)
		}
		if cn != nil {
			nd.link, nd.cn = cn.Link, cn
		}
		return srv, err
	}
}
