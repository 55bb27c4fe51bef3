package clusterproc

import (
	"crypto/ed25519"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// roundTrip makes one request on owner for h's key, which h approves: the
// next frame h gets must be that request, and the backend a 200 whose
// signature verifies. It returns the request's id.
func roundTrip(t *testing.T, owner *relay, h *holder, what string) string {
	t.Helper()
	return roundTripIgnoring(t, owner, h, what, "")
}

// roundTripIgnoring is roundTrip, but a sign_cancel for the request
// answered (one h answered itself) is only logged: see settleHolder.
func roundTripIgnoring(t *testing.T, owner *relay, h *holder, what, answered string) string {
	t.Helper()
	msg := randomMessage(what)
	post := owner.signAsync(signBody(h.pub, msg, 10000), 20*time.Second)
	req := h.expect("", step)
	for answered != "" && req.str("type") == "sign_cancel" && req.str("request_id") == answered {
		t.Errorf("holder on %s was sent %v for the request it answered itself before the outage", h.name, req)
		req = h.expect("", step)
	}
	if req.str("type") != "sign_request" {
		t.Fatalf("%s: holder on %s got %v, want a sign_request frame", what, h.name, req)
	}
	if req.str("message") != b64(msg) {
		t.Fatalf("%s: holder on %s got %v, want the request for %q", what, h.name, req, msg)
	}
	h.approve(req)
	res := awaitSign(t, post, step, what)
	expectSigned(t, res, h.pub, msg, what)
	if res.requestID != req.str("request_id") {
		t.Fatalf("%s: 200 for request %s, but the holder answered %s", what, res.requestID, req.str("request_id"))
	}
	return res.requestID
}

// §A.7: the node that owns a blocking request dies with SIGKILL while its
// key holder, on another node, has the request on screen. The holder hears
// sign_cancel requester_gone within 10 s (its node asks the owner every
// 2 s, and NATS answers "no responders" for a node whose connection is
// gone); the backend's call fails with the connection; and the holder's
// node goes on serving requests from the nodes that are left.
func TestOwnerKilledHolderHearsRequesterGone(t *testing.T) {
	nats := startNATS(t)
	n := startNodes(t, nats, 3)
	a, b, c := n[0], n[1], n[2]
	h := b.connect(t, nil)
	roundTrip(t, a, h, "warm-up from node1")

	msg := randomMessage("owner dies")
	post := a.signAsync(signBody(h.pub, msg, 60000), 90*time.Second)
	req := h.expect("sign_request", step)
	if req.str("message") != b64(msg) {
		t.Fatalf("got %v, want the request for %q", req, msg)
	}

	killed := time.Now()
	a.sigkill()
	h.expectCancel(req.str("request_id"), "requester_gone", 10*time.Second)
	took := time.Since(killed)
	t.Logf("requester_gone reached the holder on node2 %v after SIGKILL of node1", took.Round(time.Millisecond))

	res := awaitSign(t, post, step, "the killed node's request")
	if res.err == nil {
		t.Fatalf("the backend got an answer from a node that was killed: %v", res)
	}
	if !b.alive() {
		t.Fatal("node2 exited")
	}
	roundTrip(t, c, h, "from node3 after node1 died")
}

// §A.7 and clause 8 across nodes: the node a key holder is connected to
// dies with SIGKILL while a request of another node waits for the holder.
// The holder's socket breaks; it connects again, to a third node, with the
// same key, is handed the same request (same request_id and expires_at),
// approves it, and the backend's call on the owner gets a 200 whose
// signature verifies. The request did not end while no holder was
// connected.
func TestHolderNodeKilledHolderMovesOn(t *testing.T) {
	nats := startNATS(t)
	n := startNodes(t, nats, 3)
	a, b, c := n[0], n[1], n[2]
	h := b.connect(t, nil)

	msg := randomMessage("holder's node dies")
	post := a.signAsync(signBody(h.pub, msg, 60000), 90*time.Second)
	first := h.expect("sign_request", step)
	if first.str("message") != b64(msg) {
		t.Fatalf("got %v, want the request for %q", first, msg)
	}

	b.sigkill()
	if err := h.awaitBroken(step); err != nil {
		t.Fatalf("the holder's socket on node2 did not break after SIGKILL: %v", err)
	}
	reconnected := time.Now()
	h2 := c.connect(t, h.priv)
	again := h2.expect("sign_request", step)
	t.Logf("the request reached the holder on node3 %v after it connected there", time.Since(reconnected).Round(time.Millisecond))
	for _, k := range []string{"request_id", "expires_at", "message"} {
		if again.str(k) != first.str(k) {
			t.Fatalf("%s changed when the holder moved from node2 to node3: %q -> %q", k, first.str(k), again.str(k))
		}
	}
	select {
	case res := <-post:
		t.Fatalf("the request ended before the holder answered it: %v", res)
	default:
	}
	h2.approve(again)
	res := awaitSign(t, post, step, "the request of node1")
	expectSigned(t, res, h.pub, msg, "the request of node1")
	if res.requestID != first.str("request_id") {
		t.Fatalf("200 for request %s, want %s", res.requestID, first.str("request_id"))
	}
}

// §A.8, then recovery: nats-server is frozen with SIGSTOP (its sockets
// stay open, it answers nothing: the relays notice only through their
// pings). node1's /readyz turns 503 unavailable, and POST /sign on node1
// for a key held only on node2 answers 503 unavailable, never 404; a key
// holder connected to node1 itself still gets node1's requests. After
// SIGCONT every /readyz is 200 again, cross-node round trips work in both
// directions, and nothing is stuck: every POST made during the outage
// returned, and every request the holder on node2 was shown ended (it was
// answered or cancelled).
func TestNATSFrozenAndThawed(t *testing.T) {
	nats := startNATS(t)
	n := startNodes(t, nats, 3)
	a := n[0]
	local := a.connect(t, nil)     // a key held on node1 only
	remote := n[1].connect(t, nil) // a key held on node2 only
	warm := roundTrip(t, a, remote, "before the outage")

	nats.signal(syscall.SIGSTOP)
	frozen := time.Now()
	t.Log("nats-server stopped (SIGSTOP)")

	// A request made before any node noticed: it must end, one way or
	// the other, and not hang.
	early := randomMessage("made as NATS froze")
	const earlyTimeoutMS = 15000
	earlyPost := a.signAsync(signBody(remote.pub, early, earlyTimeoutMS), earlyTimeoutMS*time.Millisecond+20*time.Second)

	down := awaitReadiness(t, n, http.StatusServiceUnavailable, frozen, 15*time.Second)
	for i, d := range down {
		t.Logf("node%d: /readyz 503 %v after SIGSTOP", i+1, d.Round(time.Millisecond))
	}

	// POST /sign for a key node1 does not hold: 503 unavailable. A call
	// made before the sign path noticed may time out (504); a 404 would
	// tell the backend a lie.
	deadline := time.Now().Add(10 * time.Second)
	var during []signResult
	for {
		res := a.sign(signBody(remote.pub, randomMessage("during the outage"), 1000), 10*time.Second)
		during = append(during, res)
		if res.err != nil {
			t.Fatalf("POST /sign on node1 during the outage: %v", res)
		}
		if res.status == http.StatusServiceUnavailable && res.code == "unavailable" {
			break
		}
		if res.status != http.StatusGatewayTimeout {
			t.Fatalf("POST /sign on node1 for a key held on node2, during the outage: %v, want 503 unavailable", res)
		}
		if time.Now().After(deadline) {
			t.Fatalf("POST /sign on node1 during the outage: still %v, not 503 unavailable", res)
		}
	}
	t.Logf("POST /sign on node1 for a remote key: 503 unavailable %v after SIGSTOP (%d calls)", time.Since(frozen).Round(time.Millisecond), len(during))
	// Nor can node1 know that no node holds a key.
	nobody := newKey(t).Public().(ed25519.PublicKey)
	expectStatus(t, a.sign(signBody(nobody, randomMessage("nobody's"), 1000), step), http.StatusServiceUnavailable, "unavailable", "a key no node holds, during the outage")

	// The local path does not need NATS.
	lm := randomMessage("local during the outage")
	lp := a.signAsync(signBody(local.pub, lm, 10000), 20*time.Second)
	lr := local.expect("sign_request", step)
	local.approve(lr)
	expectSigned(t, awaitSign(t, lp, step, "local request during the outage"), local.pub, lm, "local request during the outage")

	nats.signal(syscall.SIGCONT)
	thawed := time.Now()
	t.Log("nats-server continued (SIGCONT)")
	up := awaitReadiness(t, n, http.StatusOK, thawed, 15*time.Second)
	for i, d := range up {
		t.Logf("node%d: /readyz 200 %v after SIGCONT", i+1, d.Round(time.Millisecond))
	}

	// Nothing stuck. The early request must end by its deadline; if the
	// holder is shown it after the recovery (node2 announces its keys
	// again, node1 hands over what is pending), it approves it. Every
	// request the holder is shown must end: answered, or cancelled.
	earlyRes, shown := settleHolder(t, remote, early, earlyPost, warm, earlyTimeoutMS*time.Millisecond+20*time.Second)
	switch {
	case earlyRes.err != nil:
		t.Fatalf("the request made as NATS froze: %v", earlyRes)
	case earlyRes.status == http.StatusOK:
		expectSigned(t, earlyRes, remote.pub, early, "the request made as NATS froze")
		t.Logf("the request made as NATS froze reached the holder after the recovery and was signed (%v)", earlyRes.took.Round(time.Millisecond))
	default:
		t.Fatalf("the request made as NATS froze: %v, want 200: its holder was connected throughout", earlyRes)
	}
	t.Logf("requests shown to the holder on node2 around the outage: %d", shown)

	roundTripIgnoring(t, a, remote, "after the outage, node1 to node2", warm)
	roundTrip(t, n[2], local, "after the outage, node3 to node1")
}

// awaitReadiness polls every node's /readyz until it answers want (with
// error code unavailable for 503), and returns how long after since each
// one did.
func awaitReadiness(t *testing.T, nodes []*relay, want int, since time.Time, limit time.Duration) []time.Duration {
	t.Helper()
	got := make([]time.Duration, len(nodes))
	done := make([]bool, len(nodes))
	deadline := since.Add(limit)
	for left := len(nodes); left > 0; {
		for i, r := range nodes {
			if done[i] {
				continue
			}
			st, code, err := r.readyz()
			if err == nil && st == want && (want == http.StatusOK || code == "unavailable") {
				got[i], done[i] = time.Since(since), true
				left--
				continue
			}
			if err == nil && st != http.StatusOK && st != http.StatusServiceUnavailable {
				t.Fatalf("%s: /readyz %d %s", r.name, st, code)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: /readyz not %d within %v (last %d %q %v)", r.name, want, limit, st, code, err)
			}
		}
		if left > 0 {
			pause(50 * time.Millisecond)
		}
	}
	return got
}

// settleHolder reads h's frames until post (the request for early) has
// returned and every request shown to h has ended. It approves the request
// for early when it comes; any other request it is shown must be
// cancelled. It returns the result of post and how many requests h was
// shown. answered is a request h answered itself before: a sign_cancel for
// it is against the contract (clause 6: only a request that ended for
// another reason than this connection's own answer is cancelled), but it
// is only logged here, as it depends on timing (an "end" lost in the
// outage, recovered by the holder node's check with the owner, which does
// not say who won).
func settleHolder(t *testing.T, h *holder, early []byte, post <-chan signResult, answered string, limit time.Duration) (signResult, int) {
	t.Helper()
	deadline := time.Now().Add(limit)
	open := map[string]frame{} // shown, not yet ended
	shown := 0
	var res *signResult
	for res == nil || len(open) > 0 {
		if res == nil {
			select {
			case r := <-post:
				res = &r
				continue
			default:
			}
		}
		if time.Now().After(deadline) {
			var ids []string
			for id, f := range open {
				ids = append(ids, id+" ("+f.str("message")+", expires "+f.str("expires_at")+")")
			}
			t.Fatalf("not settled within %v: POST returned: %v; requests shown to the holder and never ended: %s",
				limit, res != nil, strings.Join(ids, ", "))
		}
		f, err := h.next(100 * time.Millisecond)
		if err != nil {
			if strings.HasPrefix(err.Error(), "connection ended") {
				t.Fatalf("holder on %s: %v", h.name, err)
			}
			continue
		}
		id := f.str("request_id")
		switch f.str("type") {
		case "sign_request":
			shown++
			if f.str("message") == b64(early) {
				t.Logf("holder on %s: shown the request made as NATS froze", h.name)
				h.approve(f)
				continue
			}
			t.Logf("holder on %s: shown %s (%q) after the outage", h.name, id, f.str("message"))
			open[id] = f
		case "sign_cancel":
			if id == answered {
				t.Errorf("holder on %s was sent %v for the request it answered itself before the outage", h.name, f)
			}
			if _, ok := open[id]; ok {
				t.Logf("holder on %s: %s cancelled (%s)", h.name, id, f.str("reason"))
				delete(open, id)
			}
		default:
			t.Fatalf("holder on %s: unexpected %v", h.name, f)
		}
	}
	return *res, shown
}

// §A.1, §A.2 with the external server: a request made on node1 reaches
// the key's connections on node2 and node3, the one that answers wins, the
// other is told answered_elsewhere (and the winner is told nothing); a key
// no node holds is 404 not_connected at once.
func TestCrossNodeFanOutAndNotConnected(t *testing.T) {
	nats := startNATS(t)
	n := startNodes(t, nats, 3)
	a, b, c := n[0], n[1], n[2]
	hb := b.connect(t, nil)
	hc := c.connect(t, hb.priv)

	msg := randomMessage("fan out")
	post := a.signAsync(signBody(hb.pub, msg, 20000), 30*time.Second)
	rb, rc := hb.expect("sign_request", step), hc.expect("sign_request", step)
	for _, k := range []string{"request_id", "expires_at", "message"} {
		if rb.str(k) != rc.str(k) {
			t.Fatalf("node2 and node3 were shown different requests: %v and %v", rb, rc)
		}
	}
	hc.approve(rc)
	res := awaitSign(t, post, step, "fan-out")
	expectSigned(t, res, hb.pub, msg, "fan-out")
	if res.requestID != rb.str("request_id") {
		t.Fatalf("200 for %s, want %s", res.requestID, rb.str("request_id"))
	}
	hb.expectCancel(rb.str("request_id"), "answered_elsewhere", step)
	hc.expectQuiet(300 * time.Millisecond)

	unknown := newKey(t).Public().(ed25519.PublicKey)
	res = a.sign(signBody(unknown, randomMessage("nobody"), 5000), step)
	expectStatus(t, res, http.StatusNotFound, "not_connected", "a key no node holds")
	if res.took > 2*time.Second {
		t.Fatalf("404 took %v; it should come at once", res.took)
	}
	t.Logf("cluster-wide 404 in %v", res.took.Round(time.Millisecond))
}

// A request made on node1 in the seconds before anyone notices that NATS
// is gone must reach its holder on node2 once NATS is back, whichever node
// reconnects first. This test fixes the order that lost it: node2
// reconnects while node1 is still away (node1 is held with SIGSTOP), so
// node2's announcement of its keys (Bus.Resync: "hello" on the key's wait
// subject) reaches no owner, and node1, when it is back, announces only its
// own keys and hands over nothing. The request then ends with 504 at its
// deadline although its holder was connected throughout and NATS was up
// for most of its life. Fixed: an owner re-offers its pending requests
// when its link comes back (Bus.Resync).
func TestNATSThawOwnerReconnectsLast(t *testing.T) {
	nats := startNATS(t)
	n := startNodes(t, nats, 3)
	a, b := n[0], n[1]
	h := b.connect(t, nil)
	roundTrip(t, a, h, "before the outage")

	nats.signal(syscall.SIGSTOP)
	frozen := time.Now()
	msg := randomMessage("made as NATS froze")
	post := a.signAsync(signBody(h.pub, msg, 30000), 60*time.Second)
	awaitReadiness(t, n, http.StatusServiceUnavailable, frozen, 15*time.Second)

	a.signal(syscall.SIGSTOP)
	t.Cleanup(func() { a.signal(syscall.SIGCONT) })
	nats.signal(syscall.SIGCONT)
	awaitReadiness(t, n[1:], http.StatusOK, time.Now(), 15*time.Second)
	a.signal(syscall.SIGCONT)
	awaitReadiness(t, n[:1], http.StatusOK, time.Now(), 15*time.Second)

	f, err := h.next(10 * time.Second)
	if err != nil {
		t.Fatalf("the holder on node2 was not shown the request node1 made as NATS froze, 10s after both were back: %v (the POST: %v)",
			err, awaitSign(t, post, 40*time.Second, "the request made as NATS froze"))
	}
	if f.str("type") != "sign_request" || f.str("message") != b64(msg) {
		t.Fatalf("holder got %v, want the request made as NATS froze (the POST: %v)", f, awaitSign(t, post, 40*time.Second, "the request made as NATS froze"))
	}
	h.approve(f)
	expectSigned(t, awaitSign(t, post, step, "the request made as NATS froze"), h.pub, msg, "the request made as NATS froze")
}

// A key holder's answer sent while NATS is frozen, before its node has
// noticed, was lost: the holder's node writes it into a connection
// that is about to be given up, and nothing sends it again. The holder's
// node still holds the request after the recovery (and asks its owner
// about it every 2 s), yet the backend gets 504 at the deadline and the
// holder, who approved, is sent sign_cancel timeout. Measured: 3 runs in
// 3. Fixed: the holder's node keeps the answer it forwarded and sends it
// again when the owner says the request is still pending.
func TestNATSFreezeAnswerInFlight(t *testing.T) {
	nats := startNATS(t)
	n := startNodes(t, nats, 3)
	a, b := n[0], n[1]
	h := b.connect(t, nil)
	roundTrip(t, a, h, "before the outage")
	msg := randomMessage("answered while NATS is frozen")
	post := a.signAsync(signBody(h.pub, msg, 30000), 60*time.Second)
	req := h.expect("sign_request", step)

	nats.signal(syscall.SIGSTOP)
	h.approve(req)
	awaitReadiness(t, n, http.StatusServiceUnavailable, time.Now(), 15*time.Second)
	nats.signal(syscall.SIGCONT)
	thawed := time.Now()
	awaitReadiness(t, n, http.StatusOK, thawed, 15*time.Second)

	select {
	case res := <-post:
		expectSigned(t, res, h.pub, msg, "the request answered during the outage")
	case <-time.After(10 * time.Second):
		t.Fatalf("the answer the holder sent during the outage did not reach node1 within 10s of the recovery (the POST: %v; the holder: %v)",
			awaitSign(t, post, 40*time.Second, "the request answered during the outage"), firstFrame(h))
	}
}

// firstFrame is h's next frame, for a failure message.
func firstFrame(h *holder) any {
	f, err := h.next(time.Second)
	if err != nil {
		return err
	}
	return f
}
