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

// §A.7 with answers in the gap: the owner of an asynchronous request is
// gone, and two connections on another node answer before any node has
// taken it over, one with a bad signature, then one with a good one. Both
// answers were sent to the gone owner and heard by nobody; the node that
// takes the request over counts both, in order: the first holder gets its
// invalid_signature then (nobody verified it before), the second's
// signature ends the request, and nobody is asked again.
func TestClusterAnswersInTheTakeoverGapCountInOrder(t *testing.T) {
	n := startCluster(t, 3, nil)
	waitStores(t, n)
	a := n[1].connect(t, nil)
	b := n[1].connect(t, a.priv)
	msg := []byte("answered while nobody owned it")
	res := n[0].mustCall(t, "POST", "/sign", testAPIKey, asyncBody(a.pub, msg, nil), nil)
	if res.Status != 202 {
		t.Fatalf("POST /sign: %d %s", res.Status, res.Raw)
	}
	id := res.str("request_id")
	ra, rb := a.expect(protocol.TypeSignRequest), b.expect(protocol.TypeSignRequest)
	n[0].shutdown()
	a.badAnswer(ra)
	// a's read loop has handled the answer when it answers the barrier:
	// b's answer comes after it.
	if fs := a.barrier(); len(fs) > 0 {
		t.Fatalf("frames before the takeover: %v", fs)
	}
	b.approve(rb)
	// The error, and the cancel for the answer that won, in either order:
	// the node that took it over may be another one (see cluster.md).
	for seen := map[string]bool{}; !seen[protocol.TypeError] || !seen[protocol.TypeSignCancel]; {
		f, err := a.read()
		if err != nil {
			t.Fatalf("waiting for the error and the cancel: %v", err)
		}
		switch {
		case f.str("request_id") != id:
			t.Fatalf("got %v, want frames about %s", f, id)
		case f.str("type") != protocol.TypeError && f.str("type") != protocol.TypeSignCancel,
			f.str("type") == protocol.TypeError && f.str("code") != protocol.CodeInvalidSignature,
			f.str("type") == protocol.TypeSignCancel && f.str("reason") != protocol.CancelAnsweredElsewhere,
			seen[f.str("type")]:
			t.Fatalf("got %v", f)
		}
		seen[f.str("type")] = true
	}
	got := n[2].mustCall(t, "GET", "/sign/"+id+"?wait_ms=10000", testAPIKey, nil, nil)
	checkResource(t, got, "signed", a.pub, msg) // its signature verifies
	for _, h := range []*holder{a, b} {
		for _, f := range h.barrier() {
			if f.str("type") == protocol.TypeSignRequest {
				t.Fatalf("asked again after the takeover: %v", f)
			}
		}
	}
}
