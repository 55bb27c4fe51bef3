package clusterproc

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/signrelay/signrelay/cluster"
)

// A relay pointed at an external NATS server without JetStream cannot
// keep request resources (§C on a cluster): it must not start, and must
// say why. The real nats-server runs without JetStream; the relay exits
// non-zero within 10 s with cluster.ErrNoJetStream's message.
func TestExternalNATSWithoutJetStreamStartUpError(t *testing.T) {
	nats := startNATSServer(t, false)
	path, data := writeRelayConfig(t, "node1", relayConfig(loopback(freePort(t)), "node1", nats))
	cmd := exec.Command(relayBin, "-config", path)
	cmd.Env = relayEnv()
	started := time.Now()
	p := startProc(t, "node1", cmd)
	t.Cleanup(p.kill) // a relay that started after all
	const limit = 10 * time.Second
	if !p.awaitExit(limit) {
		p.kill()
		t.Fatalf("the relay still runs %v after its start on a NATS server without JetStream; want a start-up error\nconfig:\n%s\noutput:\n%s", limit, data, p.out.tail(4000))
	}
	took := time.Since(started)
	out := p.out.String()
	if !p.state.Exited() || p.state.ExitCode() == 0 {
		t.Fatalf("the relay ended with %v on a NATS server without JetStream, want a non-zero exit\noutput:\n%s", p.state, out)
	}
	if !strings.Contains(out, cluster.ErrNoJetStream.Error()) {
		t.Fatalf("the relay exited with %v but did not say %q\noutput:\n%s", p.state, cluster.ErrNoJetStream, out)
	}
	t.Logf("the relay exited (%v) %v after its start, saying: %s", p.state, took.Round(time.Millisecond), lastLine(out))
}

// lastLine is the last line of out that is not empty.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// §A, issue 9: "a synchronous request without an idempotency key must not
// touch JetStream". On three nodes, blocking requests without an
// Idempotency-Key cross nodes and end in every way a blocking request can
// (signed, rejected, timeout, 404 not_connected); the stream of the
// request bucket (KV_<cluster.subject_prefix, dots as underscores>_requests)
// then has no message it did not have once the nodes were ready, and none
// was written meanwhile (its last sequence has not moved). One
// asynchronous request afterwards moves both, so the check sees writes.
func TestSyncRequestsWithoutIdempotencyKeyLeaveJetStreamAlone(t *testing.T) {
	nats := startNATS(t)
	// A prefix with a dot, to name the stream as the store does.
	const prefix = "signrelay.hotpath"
	n := make([]*relay, 3)
	for i := range n {
		name := fmt.Sprintf("node%d", i+1)
		n[i] = startRelay(t, name, func(listen string) map[string]any {
			cfg := relayConfig(listen, name, nats)
			cfg["cluster"].(map[string]any)["subject_prefix"] = prefix
			return cfg
		})
	}
	a, b, c := n[0], n[1], n[2]

	js := nats.jetStream(t)
	stream := "KV_" + strings.ReplaceAll(prefix, ".", "_") + "_requests"
	state := func(when string) jetstream.StreamState {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), step)
		defer cancel()
		s, err := js.Stream(ctx, stream)
		if err == nil {
			var info *jetstream.StreamInfo
			if info, err = s.Info(ctx); err == nil {
				return info.State
			}
		}
		var names []string
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			for nm := range js.StreamNames(ctx).Name() {
				names = append(names, nm)
			}
		}
		t.Fatalf("%s: stream %s: %v (streams on the server: %v)", when, stream, err, names)
		return jetstream.StreamState{}
	}
	// What the nodes wrote while they opened the bucket (every node is
	// ready only once its store is open, so nothing of the start comes
	// later); from here on only requests write.
	start := state("after the start")
	t.Logf("request stream %s after the start: %d messages, last sequence %d", stream, start.Msgs, start.LastSeq)

	hb, hc := b.connect(t, nil), c.connect(t, nil)
	roundTrip(t, a, hb, "sync node1 to node2")
	roundTrip(t, a, hc, "sync node1 to node3")
	roundTrip(t, b, hc, "sync node2 to node3")
	roundTrip(t, c, hb, "sync node3 to node2")
	roundTrip(t, b, hb, "sync on node2 alone")

	post := c.signAsync(signBody(hb.pub, randomMessage("rejected"), 10000), 20*time.Second)
	req := hb.expect("sign_request", step)
	hb.send(frame{"type": "sign_reject", "request_id": req.str("request_id"), "reason": "no"})
	expectStatus(t, awaitSign(t, post, step, "rejected"), http.StatusForbidden, "rejected", "rejected across nodes")

	post = a.signAsync(signBody(hc.pub, randomMessage("timeout"), 1000), 20*time.Second)
	req = hc.expect("sign_request", step)
	expectStatus(t, awaitSign(t, post, step, "timeout"), http.StatusGatewayTimeout, "timeout", "timeout across nodes")
	hc.expectCancel(req.str("request_id"), "timeout", step)

	nobody := newKey(t).Public().(ed25519.PublicKey)
	res := a.sign(signBody(nobody, randomMessage("nobody"), 5000), step)
	expectStatus(t, res, http.StatusNotFound, "not_connected", "a key no node holds")

	if st := state("after the blocking requests"); st.LastSeq != start.LastSeq || st.Msgs != start.Msgs {
		t.Fatalf("blocking requests without an Idempotency-Key wrote to JetStream: the request stream went from %d messages, last sequence %d, to %d messages, last sequence %d; want no change",
			start.Msgs, start.LastSeq, st.Msgs, st.LastSeq)
	}

	// One asynchronous request is a resource: it is in the bucket.
	id, _ := a.signLater(t, hb, "async", "")
	st := state("after an asynchronous request")
	if st.LastSeq <= start.LastSeq || st.Msgs <= start.Msgs {
		t.Fatalf("an asynchronous request took the request stream from %d messages, last sequence %d, to %d messages, last sequence %d: the check cannot see writes",
			start.Msgs, start.LastSeq, st.Msgs, st.LastSeq)
	}
	t.Logf("request stream %s after the asynchronous request: %d messages, last sequence %d", stream, st.Msgs, st.LastSeq)
	req = hb.expect("sign_request", step)
	if req.str("request_id") != id {
		t.Fatalf("holder got %v, want %s", req, id)
	}
	hb.approve(req)
	status, out := c.call(t, "GET", "/sign/"+id+"?wait_ms=10000", nil, nil)
	if status != http.StatusOK || out["status"] != "signed" {
		t.Fatalf("GET %s on node3: %d %v, want signed", id, status, out)
	}
}
