package tests

import (
	"testing"
	"time"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// §A.5: everything of §B–§C on a three-node cluster: backends on node 0,
// key holders on node 1, reads and cancels on node 2.

func threeNodes(t *testing.T, mutate func(*config.Config)) deploy {
	n := startCluster(t, 3, mutate)
	waitStores(t, n)
	return deploy{n[0].relay, n[1].relay, n[2].relay}
}

// waitStores waits until every node's request bucket is open (a JetStream
// cluster elects its leader first).
func waitStores(t *testing.T, nodes []*node) {
	t.Helper()
	deadline := time.Now().Add(40 * time.Second)
	for _, n := range nodes {
		for !n.cn.Store.Ready() {
			if time.Now().After(deadline) {
				t.Fatal("request bucket not open")
			}
			time.Sleep(20 * time.Millisecond) // polling a condition, bounded
		}
	}
}

// One cluster for every clause: a JetStream cluster takes seconds to elect
// its leader, and each subtest uses keys of its own.
func TestClusterResources(t *testing.T) {
	d := threeNodes(t, namedKeys)
	for _, tc := range []struct {
		name string
		run  func(*testing.T, deploy)
	}{
		{"NamedRequester", testNamedRequester},
		{"AsyncSignAndLongPoll", testAsyncSignAndLongPoll},
		{"Visibility", testResourceVisibility},
		{"AsyncTimeout", testAsyncTimeout},
		{"Cancel", testCancel},
		{"IdempotentReplay", testIdempotentReplay},
		{"IdempotentConcurrentRetries", testIdempotentConcurrentRetries},
		{"NothingRecordedOnEarlyFailure", testIdempotencyNothingRecordedOnEarlyFailure},
		{"IdempotentCallerGone", testIdempotentCallerGone},
		{"WaitForHolder", testWaitForHolder},
		{"LongPollWakesOnEnd", testLongPollWakesOnEnd},
		{"InvalidSignatureResource", testInvalidSignatureResource},
		{"TimeoutReplayed", testTimeoutReplayed},
		{"AsyncReplayAfterEnd", testAsyncReplayAfterEnd},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, d) })
	}
}

// sign.result_ttl and sign.max_async_timeout on a cluster: a cluster of
// its own, since TestClusterResources' keeps results for the default hour.
func TestClusterResultTTL(t *testing.T) {
	d := threeNodes(t, ttlConfig)
	t.Run("ResultTTL", func(t *testing.T) { testResultTTL(t, d) })
	t.Run("MaxAsyncTimeout", func(t *testing.T) { testMaxAsyncTimeout(t, d) })
}

// §D on a cluster: the NATS link and the bus traffic are counted.
func TestClusterMetrics(t *testing.T) {
	n := startCluster(t, 2, nil)
	h := n[1].connect(t, nil)
	msg := []byte("counted across")
	ch := n[0].signAsync(signBody(h.pub, msg, nil))
	h.approve(h.expect("sign_request"))
	verifyResult(t, awaitResp(t, ch), h.pub, msg)
	for _, nd := range n {
		text := scrape(t, nd.base+"/metrics")
		if v := metricValue(text, "signrelay_nats_up"); v != 1 {
			t.Fatalf("signrelay_nats_up %v on %s", v, nd.base)
		}
		for _, dir := range []string{"in", "out"} {
			if v := metricValue(text, `signrelay_bus_messages_total{direction="`+dir+`"}`); v < 1 {
				t.Fatalf("bus messages %s: %v on %s", dir, v, nd.base)
			}
		}
	}
}

// §A.6: a node that shuts down ends the blocking requests it answers, an
// idempotent one too (503 to its caller, sign_cancel shutdown to every
// recipient on every node), and leaves the asynchronous ones to be taken
// over: their recipients keep them.
func TestClusterShutdownEndsBlockingLeavesAsync(t *testing.T) {
	n := startCluster(t, 2, nil)
	waitStores(t, n)
	h := n[1].connect(t, nil)
	blocking := n[0].callAsync(t, "POST", "/sign", testAPIKey, signBody(h.pub, []byte("blocking"), nil), map[string]string{"Idempotency-Key": "shutdown-" + b64(h.pub)[:10]})
	rb := h.expect(protocol.TypeSignRequest)
	async := n[0].mustCall(t, "POST", "/sign", testAPIKey, asyncBody(h.pub, []byte("async"), nil), nil)
	h.expect(protocol.TypeSignRequest)
	go n[0].shutdown()
	h.expectCancel(rb.str("request_id"), protocol.CancelShutdown)
	expectStatus(t, recv(t, blocking), 503, "unavailable")
	// The asynchronous one is not cancelled: the next frame is not about it.
	for _, f := range h.barrier() {
		if f.str("request_id") == async.str("request_id") {
			t.Fatalf("the holder was told %v about a request left for takeover", f)
		}
	}
}
