package hostile

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestPreIntroductionFrameLimit proves finding 4 (WebSocket before
// introduction): until a socket is introduced, a frame over 1024 bytes
// closes it with 1009, whatever the frame says, and the relay may stop
// reading as soon as the header declares the length. Many unintroduced
// sockets each announcing a 262,143-byte frame and sending 1,000 bytes of
// it are all closed, and cost the relay little memory. Before the fix the
// full websocket.max_frame_bytes (256 KiB) applied from the first frame, so
// a padded introduction was read and accepted, and an announced frame kept
// its socket open until the introduction deadline.
func TestPreIntroductionFrameLimit(t *testing.T) {
	r := startRelay(t, opts{Config: map[string]any{
		"log_level": "warn",
		"websocket": map[string]any{
			// Only the frame limit can close these sockets in time.
			"introduction_timeout":    "30s",
			"max_unintroduced":        10000,
			"max_unintroduced_per_ip": 10000,
		},
	}})

	t.Run("padded introduction", func(t *testing.T) {
		w := r.mustUpgrade(t)
		if err := w.readChallenge(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		// A valid introduction, made 2 KB long with an unknown field.
		if err := w.write(w.introductionFrame(t, 2000), 2*time.Second); err != nil {
			t.Fatal(err)
		}
		end := w.awaitEnd(time.Now().Add(3*time.Second), false)
		if end.closeCode != 1009 {
			t.Fatalf("a 2 KB introduction frame: %v, relay sent %s; want close 1009", end, dataFrames(end))
		}
	})

	t.Run("announced frame", func(t *testing.T) {
		w := r.mustUpgrade(t)
		if _, err := w.readJSON(5 * time.Second); err != nil {
			t.Fatalf("challenge: %v", err)
		}
		m := newMask()
		msg := append(frameHeader(true, opText, 1025, m), maskBytes(make([]byte, 1025), m)...)
		if err := w.write(msg, 2*time.Second); err != nil {
			t.Fatal(err)
		}
		end := w.awaitEnd(time.Now().Add(3*time.Second), false)
		if end.closeCode != 1009 {
			t.Fatalf("a 1025-byte frame before the introduction: %v, want close 1009", end)
		}
	})

	t.Run("many", func(t *testing.T) {
		n := pick(300, 3000)
		base, err := r.rss()
		if err != nil {
			t.Fatal(err)
		}
		sampler := r.sampleRSS()
		var mu sync.Mutex
		var socks []*rawWS
		var refused []string
		defer func() {
			for _, w := range socks {
				w.Close()
			}
		}()
		payload := make([]byte, 1000)
		started := parallel(n, 16, time.Now().Add(40*time.Second), func(i int) {
			w, res, err := r.upgrade(nil, 5*time.Second)
			if w == nil {
				mu.Lock()
				if len(refused) < 5 {
					refused = append(refused, fmt.Sprintf("%v %v", res, err))
				}
				mu.Unlock()
				return
			}
			mu.Lock()
			socks = append(socks, w)
			mu.Unlock()
			m := newMask()
			_ = w.write(append(frameHeader(true, opText, 262143, m), maskBytes(payload, m)...), 2*time.Second)
		})
		sent := time.Now()
		if len(socks) < n {
			t.Errorf("only %d of %d upgrades (%d started) succeeded: %v", len(socks), n, started, refused)
		}
		// Every socket must end, well before the 30 s introduction deadline.
		by := sent.Add(5 * time.Second)
		codes := map[int]int{}
		open := 0
		for _, w := range socks {
			end := w.awaitEnd(atLeast(by, 5*time.Millisecond), false)
			switch {
			case end.open():
				open++
			default:
				codes[end.closeCode]++
			}
		}
		peak := sampler.Stop()
		r.requireAlive(t, "during the frame attack")
		t.Logf("%d sockets: %d still open 5s after sending, ended with close codes %v (0: no close frame); RSS %s at start, peak %s (+%s)",
			len(socks), open, codes, mb(base), mb(peak), mb(peak-base))
		if open > 0 {
			t.Errorf("%d of %d unintroduced sockets that announced a 262143-byte frame are still open after 5s; want all closed (1009)", open, len(socks))
		}
		for code, k := range codes {
			if code != 0 && code != 1009 {
				t.Errorf("%d sockets closed with %d, want 1009", k, code)
			}
		}
		if peak-base >= 100*MiB {
			t.Errorf("relay RSS grew by %s with %d unintroduced sockets, want under 100 MiB", mb(peak-base), n)
		}
	})
}

// dataFrames lists the text of the data frames an ending socket received.
func dataFrames(e wsEnd) string {
	var out []string
	for _, f := range e.data {
		out = append(out, string(f.payload))
	}
	return fmt.Sprintf("%q", out)
}

// TestUnfinishedMessageDeadline proves finding 4 (WebSocket after
// introduction): an introduced key holder that starts a fragmented message
// (FIN=0) and never finishes it, while it keeps answering the relay's pings
// with pongs, is closed with 1008 within websocket.message_timeout (1s)
// plus slack. Before the fix every pong extended the read deadline, so such
// a socket (and the buffer of its half message) was held forever.
func TestUnfinishedMessageDeadline(t *testing.T) {
	r := startRelay(t, opts{Config: map[string]any{
		"websocket": map[string]any{"ping_interval": "200ms", "message_timeout": "1s"},
	}})
	introduced := func(t *testing.T) *rawWS {
		t.Helper()
		w := r.mustUpgrade(t)
		f, err := w.introduce(t)
		if err != nil || f.str("type") != "introduced" {
			t.Fatalf("introduction: %v %v", f, err)
		}
		return w
	}
	t.Run("first fragment only", func(t *testing.T) {
		w := introduced(t)
		start := time.Now()
		if err := w.write(clientFrame(false, opText, []byte(`{"type":"sign_response","request_id":"`)), time.Second); err != nil {
			t.Fatal(err)
		}
		end := w.awaitEnd(start.Add(4*time.Second), true)
		t.Logf("%v, %d pings answered", end, end.pings)
		if end.open() {
			t.Fatalf("unfinished message still open after %v while pongs flow (message_timeout 1s); want close 1008", end.elapsed.Round(time.Millisecond))
		}
		if end.closeCode != 1008 {
			t.Fatalf("unfinished message: %v, want close 1008", end)
		}
		if end.elapsed > 2500*time.Millisecond {
			t.Errorf("closed after %v, want within message_timeout 1s plus slack", end.elapsed.Round(time.Millisecond))
		}
	})
	// Stricter than the review's wording: the timeout bounds the whole
	// message, so continuation fragments trickling in do not extend it.
	t.Run("trickled continuation", func(t *testing.T) {
		if !full() {
			t.Skip("stricter variant; runs with SIGNRELAY_HOSTILE_FULL=1")
		}
		w := introduced(t)
		start := time.Now()
		if err := w.write(clientFrame(false, opText, []byte(`{"type":"sign_reject","reason":"`)), time.Second); err != nil {
			t.Fatal(err)
		}
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 12; i++ {
			<-tick.C
			if err := w.write(clientFrame(false, opCont, []byte("a")), time.Second); err != nil {
				break // closed: see below
			}
			// Answer pings in between; stop once the relay has closed.
			end := w.awaitEnd(time.Now().Add(10*time.Millisecond), true)
			if !end.open() {
				if end.closeCode != 1008 || time.Since(start) > 2500*time.Millisecond {
					t.Fatalf("trickled message: %v at %v, want close 1008 within 1s plus slack", end, time.Since(start).Round(time.Millisecond))
				}
				return
			}
		}
		end := w.awaitEnd(time.Now().Add(500*time.Millisecond), true)
		if end.open() || end.closeCode != 1008 {
			t.Fatalf("message trickled in for %v: %v, want close 1008 after about 1s", time.Since(start).Round(time.Millisecond), end)
		}
	})
}

// TestUnintroducedCaps proves finding 4 (unintroduced caps): sockets that
// are upgraded but not yet introduced are capped per client IP
// (websocket.max_unintroduced_per_ip) and in all (websocket.max_unintroduced).
// An upgrade over the per-IP cap is refused before the upgrade with 429
// rate_limited and Retry-After; over the global cap with 503 unavailable.
// A slot frees once one of them introduces itself or closes. Before the fix
// nothing bounded them but the introduction deadline, so one client could
// hold any number of sockets (and goroutines and buffers) for 10 s each.
func TestUnintroducedCaps(t *testing.T) {
	hold := func(t *testing.T, r *relay, n int) []*rawWS {
		t.Helper()
		var ws []*rawWS
		for i := 0; i < n; i++ {
			w := r.mustUpgrade(t)
			if err := w.readChallenge(5 * time.Second); err != nil {
				t.Fatalf("socket %d: %v", i, err)
			}
			ws = append(ws, w)
		}
		return ws
	}
	refused := func(t *testing.T, r *relay, status int, code string) {
		t.Helper()
		w, res, err := r.upgrade(nil, 5*time.Second)
		if err != nil {
			t.Fatalf("upgrade over the cap: %v, want %d %s", err, status, code)
		}
		if w != nil {
			w.Close()
			t.Fatalf("upgrade over the cap succeeded (101), want %d %s", status, code)
		}
		if res.status != status || res.code() != code {
			t.Fatalf("upgrade over the cap: %v, want %d %s", res, status, code)
		}
		if status == http.StatusTooManyRequests {
			ra := res.header.Get("Retry-After")
			if s, err := strconv.Atoi(ra); err != nil || s < 0 {
				t.Errorf("429 with Retry-After %q, want whole seconds", ra)
			}
		}
	}
	// admitted polls until an upgrade succeeds again, and holds it.
	admitted := func(t *testing.T, r *relay) *rawWS {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		var last *response
		for time.Now().Before(deadline) {
			w, res, err := r.upgrade(nil, 2*time.Second)
			if err != nil {
				t.Fatalf("upgrade: %v", err)
			}
			if w != nil {
				t.Cleanup(func() { w.Close() })
				return w
			}
			last = res
			<-tick.C
		}
		t.Fatalf("no upgrade admitted within 3s after a slot freed (last answer %v)", last)
		return nil
	}
	introduceHeld := func(t *testing.T, w *rawWS) {
		t.Helper()
		f, err := w.introduce(t)
		if err != nil || f.str("type") != "introduced" {
			t.Fatalf("introducing a held socket: %v %v", f, err)
		}
	}

	t.Run("per IP", func(t *testing.T) {
		r := startRelay(t, opts{Config: map[string]any{
			"websocket": map[string]any{"introduction_timeout": "30s", "max_unintroduced_per_ip": 4},
		}})
		ws := hold(t, r, 4)
		refused(t, r, http.StatusTooManyRequests, "rate_limited")
		introduceHeld(t, ws[0])
		admitted(t, r) // ws[1..3] and this one: at the cap again
		refused(t, r, http.StatusTooManyRequests, "rate_limited")
		ws[1].Close()
		admitted(t, r)
	})

	t.Run("global", func(t *testing.T) {
		r := startRelay(t, opts{Config: map[string]any{
			"websocket": map[string]any{"introduction_timeout": "30s", "max_unintroduced": 6, "max_unintroduced_per_ip": 6},
		}})
		ws := hold(t, r, 6)
		refused(t, r, http.StatusServiceUnavailable, "unavailable")
		ws[0].Close()
		admitted(t, r)
		refused(t, r, http.StatusServiceUnavailable, "unavailable")
		introduceHeld(t, ws[1])
		admitted(t, r)
	})

	// The global cap alone: sockets from several addresses, each address
	// under its own cap, together over the global one.
	t.Run("global from several addresses", func(t *testing.T) {
		r := startRelay(t, opts{Config: map[string]any{
			"websocket": map[string]any{"introduction_timeout": "30s", "max_unintroduced": 6, "max_unintroduced_per_ip": 4},
		}})
		from := func(ip string) (*rawWS, *response) {
			w, res, err := r.upgrade(&net.TCPAddr{IP: net.ParseIP(ip)}, 5*time.Second)
			if errors.Is(err, syscall.EADDRNOTAVAIL) {
				t.Skipf("cannot connect from %s: %v", ip, err)
			}
			if err != nil {
				t.Fatalf("upgrade from %s: %v", ip, err)
			}
			if w != nil {
				t.Cleanup(func() { w.Close() })
			}
			return w, res
		}
		for i := 0; i < 3; i++ {
			for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
				if w, res := from(ip); w == nil {
					t.Fatalf("upgrade %d from %s refused: %v", i, ip, res)
				}
			}
		}
		if w, res := from("127.0.0.4"); w != nil || res.status != http.StatusServiceUnavailable || res.code() != "unavailable" {
			t.Fatalf("7th unintroduced socket (new address, global cap 6): %v, want 503 unavailable", res)
		}
	})
}
