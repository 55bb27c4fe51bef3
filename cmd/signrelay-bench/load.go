package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"
)

// verifyRounds and verifyPerRound size the Verify yardstick of a load run.
var verifyRounds, verifyPerRound = 5, 1000

type loadOptions struct {
	common
	holderAddr string    // host:port the key holders connect to (-holder-url; default addr)
	pids       []procRef // more processes whose CPU time is reported (-pids)
	holders    int
	backends   int
	duration   time.Duration
	warmup     time.Duration
	rate       float64
	msgBytes   int
	timeout    time.Duration
	client     string
	checkSigs  bool
	mode       string      // -mode: sync, async or replay
	idle       idleOptions // idle.n > 0: open idle connections first
}

// workerResult is what one backend goroutine measured.
type workerResult struct {
	lat       []time.Duration // completed in the window (any status)
	status    map[int]int     // completed in the window, by HTTP status
	transport map[string]int  // transport errors in the window, by kind
	total     int             // every request finished, window or not
	totalBad  int             // every non-200 or failed request, window or not
	dropped   int             // open loop: sends the generator could not start in time
	firsts    int             // -mode replay: first requests made (each asks a holder once)
	gets      int             // -mode async: GET /sign/{id} calls made (pending ones repeated)
}

func newWorkerResult() *workerResult {
	return &workerResult{status: map[int]int{}, transport: map[string]int{}}
}

func runLoad(o loadOptions) error {
	limit := raiseFileLimit()
	verifyMedian, verifyMin := measureVerify(verifyRounds, verifyPerRound)
	mode := "closed loop"
	if o.rate > 0 {
		mode = fmt.Sprintf("open loop at %.0f req/s", o.rate)
	}
	switch o.mode {
	case modeAsync:
		mode += fmt.Sprintf(`, -mode async ("wait": false, 202, then GET /sign/{id}?wait_ms=%d until signed)`, asyncWaitMS)
	case modeReplay:
		mode += ", -mode replay (one blocking request per backend with an Idempotency-Key, then its replays are measured)"
	}
	fmt.Printf("== signrelay-bench load: %s, %d holders, %d backends, %s measured after %s warm-up, %d-byte messages, client %s\n",
		mode, o.holders, o.backends, o.duration, o.warmup, o.msgBytes, o.client)
	report("relay", "%s (pid %d)", o.addr, o.pid)
	holderAddr := o.holderAddr
	if holderAddr == "" {
		holderAddr = o.addr
	}
	if holderAddr != o.addr {
		report("key holders' relay", "%s (the key holders connect here; backends call the relay above)", holderAddr)
	}
	names := procNames(o.pids)
	for i, p := range o.pids {
		report("also measured", "%s (pid %d)", names[i], p.pid)
	}
	report("ed25519.Verify", "%s/op CPU in this process before the run (median of %d rounds of %d, 32-byte messages; fastest round %s)", us(verifyMedian), verifyRounds, verifyPerRound, us(verifyMin))
	report("open-file limit", "%d", limit)

	var idle *idleSet
	if o.idle.n > 0 {
		var err error
		idle, err = openIdle(o.common, o.idle)
		if idle != nil {
			defer idle.close()
		}
		if err != nil {
			return err
		}
	}

	// Key holders: connect and introduce them all before the clock starts.
	holders := make([]*holder, o.holders)
	var hst holderStats
	d := &net.Dialer{Timeout: 5 * time.Second}
	var wg sync.WaitGroup
	errs := make(chan error, o.holders)
	sem := make(chan struct{}, 16)
	for i := range holders {
		seed := make([]byte, ed25519.SeedSize)
		_, _ = rand.Read(seed)
		holders[i] = newHolder(seed)
		wg.Add(1)
		sem <- struct{}{}
		go func(h *holder) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := h.connect(d, holderAddr, 10*time.Second); err != nil {
				errs <- err
			}
		}(holders[i])
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		for _, h := range holders {
			h.close()
		}
		return fmt.Errorf("key holder: %w", err)
	}
	holderDone := make(chan error, len(holders))
	for _, h := range holders {
		go func() { holderDone <- h.serve(&hst) }()
	}
	defer func() {
		for _, h := range holders {
			h.close()
		}
		for range holders {
			<-holderDone
		}
	}()
	report("key holders", "%d introduced", len(holders))

	clientTimeout := o.timeout + 5*time.Second
	if o.mode == modeAsync {
		clientTimeout = max(o.timeout, asyncWaitMS*time.Millisecond) + 5*time.Second
	}
	client, err := newSignClient(o.client, o.addr, o.apiKey, o.backends, clientTimeout)
	if err != nil {
		return err
	}
	defer client.close()

	start := time.Now()
	winStart := start.Add(o.warmup)
	winEnd := winStart.Add(o.duration)
	var before, after cpuSample
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		time.Sleep(time.Until(winStart))
		before = sampleCPU(o.pid, o.pids...)
		time.Sleep(time.Until(winEnd))
		after = sampleCPU(o.pid, o.pids...)
	}()

	results := make([]*workerResult, o.backends)
	var sched chan time.Time
	var dropped int
	if o.rate > 0 {
		// Open loop: the pacer schedules sends at a constant rate; latency
		// runs from the scheduled time, so a stalled server is not hidden
		// by a generator that waits for it (coordinated omission).
		sched = make(chan time.Time, max(int(o.rate), 1024))
		go func() {
			defer close(sched)
			interval := time.Duration(float64(time.Second) / o.rate)
			for i := 0; ; i++ {
				t := start.Add(time.Duration(i) * interval)
				if !t.Before(winEnd) {
					return
				}
				if wait := time.Until(t); wait > 0 {
					time.Sleep(wait)
				}
				select {
				case sched <- t:
				default:
					dropped++
				}
			}
		}()
	}
	for w := range results {
		results[w] = newWorkerResult()
		wg.Add(1)
		go func(r *workerResult) {
			defer wg.Done()
			switch o.mode {
			case modeAsync:
				backendAsync(o, client.caller(), holders, r, sched, winStart, winEnd)
			case modeReplay:
				backendReplay(o, client.caller(), holders, r, sched, winStart, winEnd)
			default:
				backend(o, client.caller(), holders, r, sched, winStart, winEnd)
			}
		}(results[w])
	}
	wg.Wait()
	<-sampled

	// Merge.
	var lat []time.Duration
	status := map[int]int{}
	transport := map[string]int{}
	total, totalBad, firsts, gets := 0, 0, 0, 0
	for _, r := range results {
		firsts += r.firsts
		gets += r.gets
		lat = append(lat, r.lat...)
		for k, v := range r.status {
			status[k] += v
		}
		for k, v := range r.transport {
			transport[k] += v
		}
		total += r.total
		totalBad += r.totalBad
	}
	slices.Sort(lat)
	completed := len(lat)
	ok := status[200]
	window := after.at.Sub(before.at)
	errorsInWindow := completed - ok
	for _, v := range transport {
		errorsInWindow += v
	}

	fmt.Println("-- results (requests that completed inside the measured window)")
	report("window", "%.2f s", window.Seconds())
	report("completed", "%d (200 OK: %d)", completed, ok)
	report("errors", "%d; by status: %s; transport: %s", errorsInWindow, counts(without200(status)), counts(transport))
	report("whole run", "%d requests finished, %d not 200 OK (warm-up and drain included)", total, totalBad)
	if o.rate > 0 {
		report("not sent in time", "%d (generator could not keep up with the schedule)", dropped)
	}
	report("throughput", "%.1f req/s (200 OK)", float64(ok)/window.Seconds())
	report("latency", "p50 %s  p90 %s  p99 %s  max %s", ms(percentile(lat, 50)), ms(percentile(lat, 90)), ms(percentile(lat, 99)), ms(percentile(lat, 100)))
	if ok > 0 {
		self := after.self - before.self
		report("generator CPU", "%s per request (%.2f cores busy)", us(self/time.Duration(ok)), self.Seconds()/window.Seconds())
		if after.relay >= 0 && before.relay >= 0 {
			relay := after.relay - before.relay
			per := relay / time.Duration(ok)
			sys := (after.rsys - before.rsys) / time.Duration(ok)
			report("relay CPU", "%s per request (user %s, kernel %s; %.2f cores busy)", us(per), us(per-sys), us(sys), relay.Seconds()/window.Seconds())
			busy := after.busy - before.busy
			report("machine CPU", "%.2f of %.0f cores busy: relay %.2f, generator %.2f, everything else %.2f",
				busy.Seconds()/window.Seconds(), (after.total-before.total).Seconds()/window.Seconds(),
				relay.Seconds()/window.Seconds(), self.Seconds()/window.Seconds(), (busy-relay-self).Seconds()/window.Seconds())
			if len(o.pids) > 0 {
				reportCluster(before, after, names, ok, window, relay, self)
			}
		}
	}
	report("holders", "sign_request %d, signed %d, sign_cancel %d, error frames %d, pings %d",
		hst.requests.Load(), hst.signed.Load(), hst.cancels.Load(), hst.errors.Load(), hst.pings.Load())
	if o.mode == modeAsync && total > 0 {
		report("long polls", "%d GET /sign/{id} for %d requests (%.2f each; warm-up and drain included)", gets, total, float64(gets)/float64(total))
	}
	var prompted int64
	if o.mode == modeReplay {
		// Every first request asks one holder once; a replay asks none.
		prompted = max(hst.requests.Load()-int64(firsts), 0)
		report("replays asking a holder", "%d (sign_request %d for %d first requests)", prompted, hst.requests.Load(), firsts)
	}
	if e, _ := hst.lastErr.Load().(string); e != "" {
		report("last error frame", "%s", e)
	}
	verifyAfter, _ := measureVerify(verifyRounds, verifyPerRound)
	report("ed25519.Verify after", "%s/op (the yardstick below is the mean of before and after)", us(verifyAfter))
	verifyMedian = (verifyMedian + verifyAfter) / 2
	if ok > 0 && after.relay >= 0 && before.relay >= 0 {
		per := (after.relay - before.relay) / time.Duration(ok)
		report("relay CPU / Verify", "%.2f (relay CPU per request %s / ed25519.Verify %s)", float64(per)/float64(verifyMedian), us(per), us(verifyMedian))
		if sum, ok2 := clusterCPU(before, after); ok2 && len(o.pids) > 0 {
			per := sum / time.Duration(ok)
			report("cluster CPU / Verify", "%.2f (cluster CPU per request %s / ed25519.Verify %s)", float64(per)/float64(verifyMedian), us(per), us(verifyMedian))
		}
	}
	if idle != nil {
		alive := idle.sweep()
		report("idle connections open", "%d of %d after the load run", alive, idle.n())
	}
	if o.pid > 0 {
		if rss, err := procStatusKB(o.pid, "VmRSS"); err == nil {
			report("relay VmRSS", "%d KiB", rss)
		}
	}
	for i, p := range o.pids {
		if rss, err := procStatusKB(p.pid, "VmRSS"); err == nil {
			report(names[i]+" VmRSS", "%d KiB", rss)
		}
	}
	if errorsInWindow > 0 || totalBad > 0 || dropped > 0 || prompted > 0 {
		return errors.New("the run had errors")
	}
	return nil
}

// reportCluster prints, for a run with -pids, each extra process's CPU per
// request, their sum with the relay's (-pid), and the machine's busy cores
// split between the measured processes, the generator and everything else.
// relay and self are the relay's and the generator's CPU over the window.
func reportCluster(before, after cpuSample, names []string, ok int, window, relay, self time.Duration) {
	sum, all := relay, true
	parts := []string{"relay " + us(relay/time.Duration(ok))}
	for i := range names {
		b, a := before.extra[i], after.extra[i]
		if b.cpu < 0 || a.cpu < 0 {
			report(names[i]+" CPU", "unreadable (pid %d gone?)", a.pid)
			parts = append(parts, names[i]+" ?")
			all = false
			continue
		}
		d := a.cpu - b.cpu
		per := d / time.Duration(ok)
		sys := (a.sys - b.sys) / time.Duration(ok)
		report(names[i]+" CPU", "%s per request (user %s, kernel %s; %.2f cores busy)", us(per), us(per-sys), us(sys), d.Seconds()/window.Seconds())
		parts = append(parts, names[i]+" "+us(per))
		sum += d
	}
	partial := ""
	if !all {
		partial = ", some processes unreadable: a lower bound"
	}
	report("cluster CPU", "%s per request = %s (%.2f cores busy%s)", us(sum/time.Duration(ok)), strings.Join(parts, " + "), sum.Seconds()/window.Seconds(), partial)
	busy := after.busy - before.busy
	report("machine CPU, cluster", "%.2f of %.0f cores busy: measured processes %.2f, generator %.2f, everything else %.2f",
		busy.Seconds()/window.Seconds(), (after.total-before.total).Seconds()/window.Seconds(),
		sum.Seconds()/window.Seconds(), self.Seconds()/window.Seconds(), (busy-sum-self).Seconds()/window.Seconds())
}

// clusterCPU is the CPU time -pid and every -pids process used between two
// samples; false if any of them could not be read.
func clusterCPU(before, after cpuSample) (time.Duration, bool) {
	if before.relay < 0 || after.relay < 0 {
		return 0, false
	}
	sum := after.relay - before.relay
	for i := range after.extra {
		if before.extra[i].cpu < 0 || after.extra[i].cpu < 0 {
			return 0, false
		}
		sum += after.extra[i].cpu - before.extra[i].cpu
	}
	return sum, true
}

func without200(m map[int]int) map[int]int {
	out := map[int]int{}
	for k, v := range m {
		if k != 200 {
			out[k] = v
		}
	}
	return out
}

// backend is one backend: it posts sign requests against random holders,
// back to back (sched nil) or at the times the pacer sends on sched.
func backend(o loadOptions, c signCaller, holders []*holder, r *workerResult, sched <-chan time.Time, winStart, winEnd time.Time) {
	rng := mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64()))
	msg := make([]byte, o.msgBytes)
	body := make([]byte, 0, 128+base64.StdEncoding.EncodedLen(o.msgBytes))
	capHint := int(o.duration.Seconds()*o.rate/float64(o.backends)) + 1024
	if o.rate <= 0 {
		capHint = 1 << 14
	}
	r.lat = make([]time.Duration, 0, capHint)
	timeoutField := fmt.Sprintf(`,"timeout_ms":%d}`, o.timeout.Milliseconds())
	for {
		var t0 time.Time
		if sched != nil {
			var ok bool
			if t0, ok = <-sched; !ok {
				return
			}
		} else {
			t0 = time.Now()
			if !t0.Before(winEnd) {
				return
			}
		}
		h := holders[rng.IntN(len(holders))]
		body = loadBody(rng, body, msg, h, timeoutField)

		status, resp, err := c.sign(body)
		done := time.Now()
		if err == nil && status == 200 && !goodSignature(resp, h.pub, msg, o.checkSigs) {
			err = errBadSignature
		}
		record(r, t0, done, winStart, winEnd, status, resp, err)
	}
}

var errBadSignature = errors.New("bad_signature")

// goodSignature checks a 200 body: always that it carries a 64-byte
// signature, and with full set that the signature verifies (which costs the
// generator one ed25519.Verify per request).
func goodSignature(resp, pub, msg []byte, full bool) bool {
	s, ok := jsonRaw(resp, "signature")
	if !ok || len(s) != 88 {
		return false
	}
	if !full {
		return true
	}
	var buf [66]byte
	sig, err := base64.StdEncoding.AppendDecode(buf[:0], s)
	return err == nil && ed25519.Verify(pub, msg, sig)
}

func errKind(err error) string {
	if errors.Is(err, errBadSignature) {
		return "bad_signature"
	}
	if errors.Is(err, errNotReplayed) {
		return "not_replayed"
	}
	if errors.Is(err, errBadResource) {
		return "bad_resource"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	s := err.Error()
	for _, k := range []string{"refused", "reset", "broken pipe", "EOF", "closed"} {
		if strings.Contains(s, k) {
			return strings.ReplaceAll(k, " ", "_")
		}
	}
	return "other"
}
