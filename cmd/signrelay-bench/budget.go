package main

// The budget mode: what each kind of resource a client can hold costs the
// relay in resident memory. For every scenario it starts a fresh relay
// process from a built binary (loopback only), lets its RSS settle, opens N
// items of one kind (idle sockets, half-sent headers or bodies, WebSockets
// at each stage, pending sign requests), lets the RSS settle again and
// reports (RSS after − RSS before) / N. Every count and wait is bounded, and
// every socket is closed before the relay is stopped.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"debug/buildinfo"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/signrelay/signrelay/protocol"
)

const (
	budgetAPIKey = "budget-api-key-0123456789abcdef"
	// budgetPerHolder is how many pending requests share one holder (one key).
	budgetPerHolder = 64
	// budgetTimeoutMS is the timeout_ms of the pending requests: longer
	// than any measurement, so none ends while it is measured.
	budgetTimeoutMS = 60000
)

// budgetScenario is one kind of client-held resource.
type budgetScenario struct {
	id   int
	name string
	n    int // default count
	// pending scenarios: one holder (its own key, never answering) per
	// budgetPerHolder requests, connected before the baseline, and the
	// message size of each request.
	pending  bool
	msgBytes int
	// open makes one item and returns its socket, which the generator then
	// holds without reading until the measurement is over.
	open func(e *budgetEnv, d *net.Dialer, i int) (net.Conn, error)
}

func budgetScenarios() []budgetScenario {
	return []budgetScenario{
		{id: 1, name: "idle TCP, nothing sent", n: 4000, open: openIdleTCP},
		{id: 2, name: "TCP, 2 KiB of header, no end", n: 4000, open: openPartialHeader},
		{id: 3, name: "keep-alive, idle after GET /healthz", n: 4000, open: openKeepAlive},
		{id: 4, name: "POST /sign no auth, CL 1 MiB, headers", n: 2000, open: openUnauthLarge},
		{id: 5, name: "POST /sign auth, 80 KiB of body, stalls", n: 1000, open: openPartialBody},
		{id: 6, name: "WS upgraded, not introduced", n: 3000, open: openWSChallenged},
		{id: 7, name: "WS not introduced, 900 of 1000 B frame", n: 3000, open: openWSPartialIntro},
		{id: 8, name: "WS introduced, idle", n: 3000, open: openWSIntroduced},
		{id: 9, name: "WS introduced, 261000 of 262000 B frame", n: 256, open: openWSPartialFrame},
		{id: 10, name: "pending POST /sign, 64 KiB message", n: 512, pending: true, msgBytes: 65536, open: openPending},
		{id: 11, name: "pending POST /sign, 32 B message", n: 2048, pending: true, msgBytes: 32, open: openPending},
	}
}

type budgetOptions struct {
	scenarios []int // ids to run, in order
	relayBin  string
	build     bool
	repo      string
	outDir    string // relay configurations and logs
	scale     float64
	sources   int
	dialers   int
	settleMin time.Duration // the least wait before RSS counts as settled
	settleMax time.Duration // the most wait for RSS to stop growing
	poll      time.Duration // RSS sampling interval
	window    time.Duration // RSS must not grow over this long to be settled
	timeout   time.Duration // bound of one scenario
	start     relayStarter  // nil: the binary at relayBin
	git       string        // the work tree's revision and changes when built
}

// relayProc is one relay under measurement.
type relayProc struct {
	addr   string
	pid    int
	log    string        // its stderr, "" in process
	exited chan struct{} // closed when the process ends
	stop   func() error
}

// relayStarter starts a relay on addr with the configuration at cfgPath.
type relayStarter func(cfgPath, addr, logPath string) (*relayProc, error)

// budgetEnv is what a scenario's open function needs.
type budgetEnv struct {
	addr    string
	sc      budgetScenario
	holders []*holder // pending scenarios
	body5   []byte    // scenario 5's whole body; only part of it is sent
}

// budgetRow is one scenario's measurement.
type budgetRow struct {
	id         int
	name       string
	n, opened  int
	before     int64 // relay VmRSS, KiB
	after      int64
	settled    bool
	settleWait time.Duration
	fdsDelta   int
	goroutines int // Δ, when haveG
	haveG      bool
	sockets    string // what the held sockets looked like at measurement
	openTime   time.Duration
	busy       float64 // machine cores busy during the scenario
	note       string
	err        string
}

func (r budgetRow) delta() int64 { return r.after - r.before }

// perItemKiB is the RSS growth per item opened.
func (r budgetRow) perItemKiB() float64 {
	if r.opened == 0 {
		return math.NaN()
	}
	return float64(r.delta()) / float64(r.opened)
}

func cmdBudget(args []string) error {
	fs := flag.NewFlagSet("budget", flag.ExitOnError)
	var o budgetOptions
	list := fs.String("budget-scenarios", "", "scenarios to run, such as 1,6,8 (default: all, 1-11)")
	fs.StringVar(&o.relayBin, "relay-bin", "/tmp/signrelay", "relay binary to start for each scenario")
	fs.BoolVar(&o.build, "build", true, "build -relay-bin first (go build -o BIN . in -repo)")
	fs.StringVar(&o.repo, "repo", "", "the relay's module root (default: found from the working directory)")
	fs.StringVar(&o.outDir, "out", "", "directory for the relay configurations and logs (default: a new temporary directory)")
	fs.Float64Var(&o.scale, "budget-scale", 1, "multiply every scenario's N by this (0 < scale ≤ 4)")
	fs.IntVar(&o.sources, "sources", 4, "loopback source addresses (127.0.0.2 and up)")
	fs.IntVar(&o.dialers, "dialers", 32, "items opened at once")
	fs.DurationVar(&o.settleMin, "settle-min", 3*time.Second, "least wait before the relay's RSS is read")
	fs.DurationVar(&o.settleMax, "settle-max", 12*time.Second, "most wait for the relay's RSS to stop growing")
	fs.DurationVar(&o.timeout, "scenario-timeout", 60*time.Second, "bound of one scenario")
	_ = fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("budget: unexpected arguments %q", fs.Args())
	}
	var err error
	if o.scenarios, err = parseScenarioList(*list, len(budgetScenarios())); err != nil {
		return err
	}
	switch {
	case !(o.scale > 0 && o.scale <= 4):
		return errors.New("budget: -budget-scale must be in (0, 4]")
	case o.sources < 1 || o.sources > 250 || o.dialers < 1 || o.dialers > 1024:
		return errors.New("budget: -sources must be 1..250 and -dialers 1..1024")
	case o.settleMin < 0 || o.settleMax < o.settleMin || o.settleMax > 2*time.Minute:
		return errors.New("budget: want 0 ≤ -settle-min ≤ -settle-max ≤ 2m")
	case o.timeout < 10*time.Second || o.timeout > 5*time.Minute:
		return errors.New("budget: -scenario-timeout must be 10s..5m")
	}
	o.poll, o.window = 250*time.Millisecond, time.Second
	if o.repo == "" && o.build {
		if o.repo, err = findModuleRoot(); err != nil {
			return err
		}
	}
	if o.outDir == "" {
		if o.outDir, err = os.MkdirTemp("", "signrelay-budget-"); err != nil {
			return err
		}
	}
	if o.repo != "" {
		o.git = gitState(o.repo)
	}
	if o.build {
		abs, err := filepath.Abs(o.relayBin)
		if err != nil {
			return err
		}
		o.relayBin = abs
		fmt.Printf("-- building the relay: (cd %s && go build -o %s .)\n", o.repo, o.relayBin)
		cmd := exec.Command("go", "build", "-o", o.relayBin, ".")
		cmd.Dir = o.repo
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("budget: building the relay: %v\n%s", err, out)
		}
	}
	if _, err := os.Stat(o.relayBin); err != nil {
		return fmt.Errorf("budget: relay binary: %w (build it with go build -o %s . or pass -build)", err, o.relayBin)
	}
	_, err = runBudget(o)
	return err
}

// runBudget runs the chosen scenarios one after the other, each against a
// fresh relay, and prints the machine facts and the table.
func runBudget(o budgetOptions) ([]budgetRow, error) {
	var rl syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	limit := raiseFileLimit() // the relay inherits it
	if o.start == nil {
		o.start = binaryStarter(o.relayBin)
	}
	all := budgetScenarios()
	fmt.Printf("== signrelay-bench budget: relay RSS per client-held resource, scenarios %s\n", joinInts(o.scenarios))
	printBudgetFacts(o, rl, limit)
	report("relay configuration", "every scenario: %s", budgetConfigSummary)
	report("relay files", "%s (budget-N.yaml and budget-N.log)", o.outDir)

	need := 64
	for _, id := range o.scenarios {
		sc := all[id-1]
		n := scaledN(sc.n, o.scale)
		need = max(need, n+n/budgetPerHolder+64)
	}
	if uint64(need) > limit {
		return nil, fmt.Errorf("budget: the open-file limit %d is below the %d this run needs; lower -budget-scale", limit, need)
	}

	var rows []budgetRow
	var failed []string
	start := time.Now()
	for _, id := range o.scenarios {
		sc := all[id-1]
		row := runBudgetScenario(o, sc, scaledN(sc.n, o.scale))
		if row.err != "" {
			failed = append(failed, fmt.Sprintf("%d: %s", row.id, row.err))
		}
		rows = append(rows, row)
	}
	fmt.Printf("\n-- relay RSS per held item (VmRSS of a fresh relay per scenario; %s in all)\n", time.Since(start).Round(100*time.Millisecond))
	fmt.Print(formatBudgetTable(rows))
	fmt.Printf(budgetLegend, o.window, o.settleMin, o.settleMax)
	if len(failed) > 0 {
		return rows, fmt.Errorf("budget: %d scenario(s) failed: %s", len(failed), strings.Join(failed, "; "))
	}
	return rows, nil
}

const budgetConfigSummary = "rate_limits off; http.max_connections_per_ip 0 (no cap); http.header_timeout, read_timeout, idle_timeout 2m; " +
	"websocket.introduction_timeout and message_timeout 2m, ping_interval 10m, max_unintroduced(_per_ip) 100000; " +
	"sign.max_pending_per_key 128, max_pending(_per_api_key) 100000, max_pending_bytes(_per_api_key) 16 GiB; other keys default"

const budgetLegend = `per item = (RSS after − RSS before) / N opened. RSS is the relay's VmRSS, read once it
stopped growing (no sample more than max(64 KiB, 0.2%%) above the one %s earlier, after at
least %s); "*" after the wait: still growing when the wait ended (%s at most). fds Δ: the
relay's open descriptors after − before. busy: cores busy on the whole machine during the
scenario (of nproc). Pending scenarios measure "before" with their holders connected.
RSS counts memory the relay freed but has not yet returned to the kernel.
`

// budgetConfigYAML is the relay configuration of every scenario: the
// defaults, with every cap that would refuse a scenario raised and every
// timeout that would end an item before it is measured made long.
func budgetConfigYAML(listen string) string {
	return fmt.Sprintf(`listen: %s
api_keys: [%s]
log_level: warn
shutdown_grace: 1s
http:
  max_connections_per_ip: 0
  header_timeout: 2m
  read_timeout: 2m
  idle_timeout: 2m
sign:
  max_pending_per_key: 128
  max_pending: 100000
  max_pending_bytes: 17179869184
  max_pending_per_api_key: 100000
  max_pending_bytes_per_api_key: 17179869184
websocket:
  introduction_timeout: 2m
  message_timeout: 2m
  ping_interval: 10m
  max_unintroduced: 100000
  max_unintroduced_per_ip: 100000
rate_limits:
  enabled: false
`, listen, budgetAPIKey)
}

func scaledN(n int, scale float64) int { return max(1, int(math.Round(float64(n)*scale))) }

// runBudgetScenario measures one scenario against a relay of its own. A
// failure is recorded in the row; the relay and every socket are closed
// whatever happens.
func runBudgetScenario(o budgetOptions, sc budgetScenario, n int) (row budgetRow) {
	row = budgetRow{id: sc.id, name: sc.name, n: n}
	deadline := time.Now().Add(o.timeout)
	fmt.Printf("\n-- %d. %s: N = %d\n", sc.id, sc.name, n)
	fail := func(format string, args ...any) budgetRow {
		row.err = fmt.Sprintf(format, args...)
		fmt.Printf("   FAILED: %s\n", row.err)
		return row
	}
	addr, err := freeLoopbackAddr()
	if err != nil {
		return fail("%v", err)
	}
	cfgPath := filepath.Join(o.outDir, fmt.Sprintf("budget-%d.yaml", sc.id))
	logPath := filepath.Join(o.outDir, fmt.Sprintf("budget-%d.log", sc.id))
	if err := os.WriteFile(cfgPath, []byte(budgetConfigYAML(addr)), 0o644); err != nil {
		return fail("%v", err)
	}
	rp, err := o.start(cfgPath, addr, logPath)
	if err != nil {
		return fail("starting the relay: %v", err)
	}
	var conns []*heldConn
	var holders []*holder
	var holderWG sync.WaitGroup
	defer func() {
		closeHeld(conns)
		for _, h := range holders {
			h.close()
		}
		waitTimeout(&holderWG, 5*time.Second)
		if err := rp.stop(); err != nil && row.err == "" {
			row.note = joinNote(row.note, "relay stop: "+err.Error())
		}
	}()
	cpu0 := sampleCPU(0)

	env := &budgetEnv{addr: rp.addr, sc: sc}
	if sc.id == 5 {
		env.body5 = signBody(randomPub64(), randomBytes(65536))
	}
	// Warm the HTTP path once, so that the baseline already has it.
	if st, err := httpGet(rp.addr, "/healthz"); err != nil || st != 200 {
		return fail("GET /healthz: status %d, %v", st, err)
	}
	var requests atomic.Int64 // sign_request frames the holders received
	if sc.pending {
		nh := (n + budgetPerHolder - 1) / budgetPerHolder
		d := &net.Dialer{Timeout: 5 * time.Second}
		for range nh {
			h := newHolder(randomBytes(ed25519.SeedSize))
			if err := h.connect(d, rp.addr, 10*time.Second); err != nil {
				return fail("holder: %v", err)
			}
			holders = append(holders, h)
			holderWG.Add(1)
			go func() { defer holderWG.Done(); drainHolder(h.ws, &requests) }()
		}
		env.holders = holders
		fmt.Printf("   %d holders connected (one key each, %d requests per key; they read every frame and never answer)\n", nh, budgetPerHolder)
	}
	g0, haveG := relayGoroutines(rp.addr)
	before, waitB, okB, err := settleRSS(rp.pid, o.settleMin, o.settleMax, o.poll, o.window, rp.exited)
	if err != nil {
		return fail("RSS before: %v", err)
	}
	fds0 := procFDs(rp.pid)
	row.before = before
	fmt.Printf("   relay pid %d on %s: RSS before %d KiB (%s%s), %d open files\n", rp.pid, rp.addr, before, waitB.Round(10*time.Millisecond), unsettled(okB), fds0)

	t0 := time.Now()
	openBy := deadline.Add(-o.settleMax - 5*time.Second)
	var failures map[string]int
	conns, failures = openItems(env, o, n, openBy)
	row.opened = len(conns)
	row.openTime = time.Since(t0)
	fmt.Printf("   opened %d of %d in %.2f s; failures: %s\n", row.opened, n, row.openTime.Seconds(), counts(failures))
	if row.opened == 0 {
		return fail("no item could be opened: %s", counts(failures))
	}
	if len(failures) > 0 {
		row.note = joinNote(row.note, fmt.Sprintf("%d failed: %s", n-row.opened, counts(failures)))
	}
	maxWait := min(o.settleMax, time.Until(deadline)-3*time.Second)
	after, waitA, okA, err := settleRSS(rp.pid, min(o.settleMin, maxWait), maxWait, o.poll, o.window, rp.exited)
	if err != nil {
		return fail("RSS after: %v", err)
	}
	row.after, row.settled, row.settleWait = after, okA, waitA
	row.fdsDelta = procFDs(rp.pid) - fds0
	if g1, ok := relayGoroutines(rp.addr); ok && haveG {
		row.goroutines, row.haveG = g1-g0, true
	}
	row.sockets = summarizeProbes(probeAll(conns))
	if sc.pending {
		row.note = joinNote(row.note, fmt.Sprintf("holders got %d sign_request", requests.Load()))
	}
	cpu1 := sampleCPU(0)
	if dt := cpu1.total - cpu0.total; dt > 0 {
		row.busy = float64(cpu1.busy-cpu0.busy) / float64(dt) * float64(runtime.NumCPU())
	}
	fmt.Printf("   RSS after %d KiB (%s%s): %+d KiB, %.2f KiB per item; fds %+d; sockets: %s\n",
		after, waitA.Round(10*time.Millisecond), unsettled(okA), row.delta(), row.perItemKiB(), row.fdsDelta, row.sockets)
	if row.note != "" {
		fmt.Printf("   note: %s\n", row.note)
	}
	return row
}

func unsettled(ok bool) string {
	if ok {
		return " to settle"
	}
	return ", still growing"
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// openItems opens up to n items with o.dialers workers, spread over the
// source addresses, until n are open, too many failed, or by passes.
func openItems(e *budgetEnv, o budgetOptions, n int, by time.Time) ([]*heldConn, map[string]int) {
	dialers := make([]*net.Dialer, o.sources)
	for i := range dialers {
		ip := net.IPv4(127, 0, byte((2+i)>>8), byte(2+i))
		dialers[i] = &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: ip}}
	}
	var (
		mu       sync.Mutex
		conns    = make([]*heldConn, 0, n)
		failures = map[string]int{}
		next     atomic.Int64
		nfail    atomic.Int64
		wg       sync.WaitGroup
	)
	maxFail := int64(max(10, n/20))
	for range min(o.dialers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || nfail.Load() > maxFail || time.Now().After(by) {
					return
				}
				c, err := e.sc.open(e, dialers[i%len(dialers)], i)
				var h *heldConn
				if err == nil {
					h, err = newHeldConn(c)
				}
				mu.Lock()
				if err != nil {
					nfail.Add(1)
					failures[shortErr(err)]++
				} else {
					conns = append(conns, h)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if time.Now().After(by) && len(conns) < n {
		failures["out of time"] += n - len(conns) - int(nfail.Load())
	}
	return conns, failures
}

// --- the items -----------------------------------------------------------

// bounded runs fn on a fresh connection from d with an overall deadline,
// which it clears when fn succeeds.
func bounded(d *net.Dialer, addr string, fn func(c net.Conn) error) (net.Conn, error) {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if err := fn(c); err != nil {
		_ = c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func openIdleTCP(e *budgetEnv, d *net.Dialer, _ int) (net.Conn, error) {
	return bounded(d, e.addr, func(net.Conn) error { return nil })
}

// partialHeader is 2048 bytes of a request head that never ends.
var partialHeader = func() []byte {
	b := []byte("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: signrelay-bench\r\n")
	for i := 0; len(b) < 2048; i++ {
		b = fmt.Appendf(b, "X-Pad-%03d: %s\r\n", i, strings.Repeat("a", 60))
	}
	return b[:2048]
}()

func openPartialHeader(e *budgetEnv, d *net.Dialer, _ int) (net.Conn, error) {
	return bounded(d, e.addr, func(c net.Conn) error {
		_, err := c.Write(partialHeader)
		return err
	})
}

func openKeepAlive(e *budgetEnv, d *net.Dialer, _ int) (net.Conn, error) {
	return bounded(d, e.addr, func(c net.Conn) error {
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: "+e.addr+"\r\n\r\n"); err != nil {
			return err
		}
		st, err := readHTTPResponse(c)
		if err == nil && st != 200 {
			err = fmt.Errorf("GET /healthz: status %d", st)
		}
		return err
	})
}

func openUnauthLarge(e *budgetEnv, d *net.Dialer, _ int) (net.Conn, error) {
	return bounded(d, e.addr, func(c net.Conn) error {
		_, err := io.WriteString(c, "POST /sign HTTP/1.1\r\nHost: "+e.addr+
			"\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n")
		return err
	})
}

// partialBodyBytes is how much of scenario 5's body is sent.
const partialBodyBytes = 80 << 10

func openPartialBody(e *budgetEnv, d *net.Dialer, _ int) (net.Conn, error) {
	return bounded(d, e.addr, func(c net.Conn) error {
		req := signRequestHead(e.addr, budgetAPIKey, len(e.body5))
		req = append(req, e.body5[:partialBodyBytes]...)
		_, err := c.Write(req)
		return err
	})
}

// wsChallenged upgrades and reads the challenge.
func wsChallenged(d *net.Dialer, addr string) (*wsConn, error) {
	deadline := time.Now().Add(15 * time.Second)
	ws, err := wsDial(d, addr, "/ws", 512, deadline)
	if err != nil {
		return nil, err
	}
	_ = ws.c.SetDeadline(deadline)
	for {
		op, p, err := ws.next()
		if err != nil {
			_ = ws.c.Close()
			return nil, fmt.Errorf("challenge: %w", err)
		}
		if op == opClose {
			_ = ws.c.Close()
			return nil, fmt.Errorf("challenge: relay closed the connection (%s)", closeText(p))
		}
		if op == opText && jsonType(p) == protocol.TypeChallenge {
			_ = ws.c.SetDeadline(time.Time{})
			return ws, nil
		}
	}
}

func openWSChallenged(e *budgetEnv, d *net.Dialer, _ int) (net.Conn, error) {
	ws, err := wsChallenged(d, e.addr)
	if err != nil {
		return nil, err
	}
	return ws.c, nil
}

// partialFrame is the start of one masked text frame that declares
// declared payload bytes, with the first sent of them.
func partialFrame(declared, sent int) []byte {
	b := []byte{0x80 | opText}
	switch {
	case declared < 126:
		b = append(b, 0x80|byte(declared))
	case declared <= 0xffff:
		b = append(b, 0x80|126, byte(declared>>8), byte(declared))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(declared))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	b = append(b, mask[:]...)
	for i := range sent {
		b = append(b, 'x'^mask[i&3])
	}
	return b
}

func sendPartial(ws *wsConn, declared, sent int) (net.Conn, error) {
	_ = ws.c.SetWriteDeadline(time.Now().Add(15 * time.Second))
	if _, err := ws.c.Write(partialFrame(declared, sent)); err != nil {
		_ = ws.c.Close()
		return nil, err
	}
	_ = ws.c.SetWriteDeadline(time.Time{})
	return ws.c, nil
}

func openWSPartialIntro(e *budgetEnv, d *net.Dialer, _ int) (net.Conn, error) {
	ws, err := wsChallenged(d, e.addr)
	if err != nil {
		return nil, err
	}
	return sendPartial(ws, 1000, 900)
}

func wsIntroduced(d *net.Dialer, addr string) (*wsConn, error) {
	deadline := time.Now().Add(15 * time.Second)
	ws, err := wsDial(d, addr, "/ws", 512, deadline)
	if err != nil {
		return nil, err
	}
	if err := ws.introduce(ed25519.NewKeyFromSeed(randomBytes(ed25519.SeedSize)), deadline); err != nil {
		_ = ws.c.Close()
		return nil, err
	}
	return ws, nil
}

func openWSIntroduced(e *budgetEnv, d *net.Dialer, _ int) (net.Conn, error) {
	ws, err := wsIntroduced(d, e.addr)
	if err != nil {
		return nil, err
	}
	return ws.c, nil
}

func openWSPartialFrame(e *budgetEnv, d *net.Dialer, _ int) (net.Conn, error) {
	ws, err := wsIntroduced(d, e.addr)
	if err != nil {
		return nil, err
	}
	return sendPartial(ws, 262000, 261000)
}

func openPending(e *budgetEnv, d *net.Dialer, i int) (net.Conn, error) {
	h := e.holders[(i/budgetPerHolder)%len(e.holders)]
	body := signBody(h.pub64, randomBytes(e.sc.msgBytes))
	return bounded(d, e.addr, func(c net.Conn) error {
		_, err := c.Write(append(signRequestHead(e.addr, budgetAPIKey, len(body)), body...))
		return err
	})
}

// drainHolder reads every frame the relay sends a holder and answers pings,
// but never a sign_request; it counts those. It returns when the
// connection ends.
func drainHolder(ws *wsConn, requests *atomic.Int64) {
	for {
		op, p, err := ws.next()
		if err != nil {
			return
		}
		switch op {
		case opPing:
			_ = ws.write(opPong, p)
		case opClose:
			return
		case opText:
			if t, _ := jsonRaw(p, "type"); string(t) == protocol.TypeSignRequest {
				requests.Add(1)
			}
		}
	}
}

func signBody(pub64 string, msg []byte) []byte {
	b := make([]byte, 0, base64.StdEncoding.EncodedLen(len(msg))+128)
	b = append(b, `{"public_key":"`...)
	b = append(b, pub64...)
	b = append(b, `","message":"`...)
	b = base64.StdEncoding.AppendEncode(b, msg)
	b = fmt.Appendf(b, `","timeout_ms":%d}`, budgetTimeoutMS)
	return b
}

func signRequestHead(host, apiKey string, contentLength int) []byte {
	return fmt.Appendf(nil, "POST /sign HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
		host, apiKey, contentLength)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func randomPub64() string {
	pub := ed25519.NewKeyFromSeed(randomBytes(ed25519.SeedSize)).Public().(ed25519.PublicKey)
	return base64.StdEncoding.EncodeToString(pub)
}

// readHTTPResponse reads one response with a Content-Length body and
// returns its status.
func readHTTPResponse(c net.Conn) (int, error) {
	buf := make([]byte, 0, 1024)
	tmp := make([]byte, 1024)
	for {
		if i := bytes.Index(buf, []byte("\r\n\r\n")); i >= 0 {
			st, cl, err := parseResponseHead(buf[:i])
			if err != nil {
				return 0, err
			}
			for len(buf)-(i+4) < cl {
				n, err := c.Read(tmp)
				buf = append(buf, tmp[:n]...)
				if err != nil {
					return st, err
				}
			}
			return st, nil
		}
		if len(buf) > 64<<10 {
			return 0, errors.New("response head too large")
		}
		n, err := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if err != nil && n == 0 {
			return 0, err
		}
	}
}

// parseResponseHead returns the status and Content-Length (0 if absent)
// of a response head without its final blank line.
func parseResponseHead(head []byte) (status, contentLength int, err error) {
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	f := bytes.Fields(line)
	if len(f) < 2 || !bytes.HasPrefix(f[0], []byte("HTTP/1.")) {
		return 0, 0, fmt.Errorf("not an HTTP response: %q", line)
	}
	if status, err = strconv.Atoi(string(f[1])); err != nil {
		return 0, 0, fmt.Errorf("bad status line %q", line)
	}
	for _, l := range bytes.Split(rest, []byte("\r\n")) {
		name, value, ok := bytes.Cut(l, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("Content-Length")) {
			if contentLength, err = strconv.Atoi(string(bytes.TrimSpace(value))); err != nil || contentLength < 0 {
				return 0, 0, fmt.Errorf("bad Content-Length %q", value)
			}
		}
	}
	return status, contentLength, nil
}

// httpGet makes one GET on a connection of its own (closed after).
func httpGet(addr, path string) (int, error) {
	st, _, err := httpGetBody(addr, path)
	return st, err
}

func httpGetBody(addr, path string) (int, []byte, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: "+addr+"\r\nConnection: close\r\n\r\n"); err != nil {
		return 0, nil, err
	}
	b, err := io.ReadAll(io.LimitReader(c, 4<<20))
	if err != nil && len(b) == 0 {
		return 0, nil, err
	}
	i := bytes.Index(b, []byte("\r\n\r\n"))
	if i < 0 {
		return 0, nil, errors.New("no response head")
	}
	st, _, err := parseResponseHead(b[:i])
	return st, b[i+4:], err
}

// relayGoroutines reads go_goroutines from the relay's GET /metrics, if it
// has one.
func relayGoroutines(addr string) (int, bool) {
	st, body, err := httpGetBody(addr, "/metrics")
	if err != nil || st != 200 {
		return 0, false
	}
	return parseGoroutines(body)
}

// parseGoroutines finds the go_goroutines sample of a Prometheus text
// exposition.
func parseGoroutines(b []byte) (int, bool) {
	for _, line := range bytes.Split(b, []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) >= 2 && string(f[0]) == "go_goroutines" {
			v, err := strconv.ParseFloat(string(f[1]), 64)
			return int(v), err == nil
		}
	}
	return 0, false
}

// --- held sockets --------------------------------------------------------

// heldConn is one item's socket, held without a goroutine and read only
// once, without blocking, at the end (probe).
type heldConn struct {
	c  *net.TCPConn
	rc syscall.RawConn
}

func newHeldConn(c net.Conn) (*heldConn, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		_ = c.Close()
		return nil, errors.New("not a TCP connection")
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		_ = tc.Close()
		return nil, err
	}
	return &heldConn{c: tc, rc: rc}, nil
}

func closeHeld(conns []*heldConn) {
	for _, h := range conns {
		_ = h.c.Close()
	}
}

// probeResult is what one held socket showed at the end: whether the relay
// still had it open, and what it had sent meanwhile.
type probeResult struct {
	open bool
	got  string // classifyReceived of the first bytes, "" for none
}

// probe reads what has arrived without blocking (at most 1 MiB).
func (h *heldConn) probe() probeResult {
	var first []byte
	tmp := make([]byte, 4096)
	total := 0
	for total < 1<<20 {
		var n int
		var rerr error
		err := h.rc.Read(func(fd uintptr) bool {
			n, rerr = syscall.Read(int(fd), tmp)
			return true
		})
		switch {
		case err != nil, rerr != nil && !errors.Is(rerr, syscall.EAGAIN) && !errors.Is(rerr, syscall.EINTR):
			return probeResult{open: false, got: joinGot(classifyReceived(first), "reset")}
		case rerr == nil && n == 0:
			return probeResult{open: false, got: classifyReceived(first)}
		case n <= 0:
			return probeResult{open: true, got: classifyReceived(first)}
		}
		if len(first) < 64 {
			first = append(first, tmp[:min(n, 64-len(first))]...)
		}
		total += n
	}
	return probeResult{open: true, got: classifyReceived(first)}
}

func joinGot(a, b string) string {
	if a == "" {
		return b
	}
	return a + " + " + b
}

func probeAll(conns []*heldConn) []probeResult {
	out := make([]probeResult, len(conns))
	for i, h := range conns {
		out[i] = h.probe()
	}
	return out
}

// classifyReceived names the first bytes the relay sent on a held socket:
// an HTTP status, a WebSocket close frame with its code, another frame.
func classifyReceived(b []byte) string {
	switch {
	case len(b) == 0:
		return ""
	case bytes.HasPrefix(b, []byte("HTTP/1.")):
		f := bytes.Fields(b)
		if len(f) >= 2 {
			return "HTTP " + string(f[1])
		}
		return "HTTP"
	case b[0]&0x0f == opClose:
		if len(b) >= 4 && b[1]&0x7f >= 2 {
			return fmt.Sprintf("WS close %d", binary.BigEndian.Uint16(b[2:4]))
		}
		return "WS close"
	}
	return fmt.Sprintf("WS opcode %d", b[0]&0x0f)
}

// summarizeProbes counts the sockets by state: "open 4000" or
// "open 10, closed 1990; received: HTTP 401 ×2000".
func summarizeProbes(ps []probeResult) string {
	open := 0
	got := map[string]int{}
	for _, p := range ps {
		if p.open {
			open++
		}
		if p.got != "" {
			got[p.got]++
		}
	}
	s := fmt.Sprintf("open %d", open)
	if closed := len(ps) - open; closed > 0 {
		s += fmt.Sprintf(", closed %d", closed)
	}
	if len(got) > 0 {
		keys := make([]string, 0, len(got))
		for k := range got {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s ×%d", k, got[k])
		}
		s += "; received " + strings.Join(parts, ", ")
	} else {
		s += "; nothing received"
	}
	return s
}

// --- RSS -----------------------------------------------------------------

// parseStatusKB reads a "kB" field, such as VmRSS, of /proc/PID/status (or
// /proc/meminfo, which has the same form).
func parseStatusKB(b []byte, field string) (int64, error) {
	for _, line := range bytes.Split(b, []byte("\n")) {
		name, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok || string(name) != field {
			continue
		}
		v := bytes.Fields(rest)
		if len(v) == 0 {
			break
		}
		return strconv.ParseInt(string(v[0]), 10, 64)
	}
	return 0, fmt.Errorf("no %s field", field)
}

// settleRSS samples a process's VmRSS every poll until it has stopped
// growing for window (stoppedGrowing), after at least least and at most
// most. It returns the last sample, the time waited and whether it
// settled; an error when the process cannot be read or exited.
func settleRSS(pid int, least, most, poll, window time.Duration, exited <-chan struct{}) (int64, time.Duration, bool, error) {
	start := time.Now()
	k := max(1, int(window/poll))
	var samples []int64
	for {
		select {
		case <-exited:
			return 0, time.Since(start), false, errors.New("the relay exited")
		default:
		}
		v, err := procStatusKB(pid, "VmRSS")
		if err != nil {
			return 0, time.Since(start), false, err
		}
		samples = append(samples, v)
		waited := time.Since(start)
		if waited >= least && stoppedGrowing(samples, k) {
			return v, waited, true, nil
		}
		if waited >= most {
			return v, waited, false, nil
		}
		time.Sleep(poll)
	}
}

// stoppedGrowing reports whether none of the last k samples is more than
// max(64 KiB, 0.2 %) above the sample k before the last.
func stoppedGrowing(samples []int64, k int) bool {
	if k < 1 || len(samples) < k+1 {
		return false
	}
	base := samples[len(samples)-1-k]
	tol := max(64, base/500)
	for _, v := range samples[len(samples)-k:] {
		if v > base+tol {
			return false
		}
	}
	return true
}

// --- the relay process ---------------------------------------------------

// binaryStarter starts the relay binary bin as a child process, with its
// stderr in logPath, and waits until GET /healthz answers.
func binaryStarter(bin string) relayStarter {
	return func(cfgPath, addr, logPath string) (*relayProc, error) {
		logf, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(bin, "-config", cfgPath)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = relaySysProcAttr()
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "SIGNRELAY_") { // they would override the file
				cmd.Env = append(cmd.Env, kv)
			}
		}
		if err := cmd.Start(); err != nil {
			_ = logf.Close()
			return nil, err
		}
		rp := &relayProc{addr: addr, pid: cmd.Process.Pid, log: logPath, exited: make(chan struct{})}
		var waitErr error
		go func() { waitErr = cmd.Wait(); _ = logf.Close(); close(rp.exited) }()
		rp.stop = func() error {
			select {
			case <-rp.exited:
				return fmt.Errorf("the relay had exited: %v", waitErr)
			default:
			}
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-rp.exited:
				return nil
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-rp.exited
				return errors.New("the relay did not stop within 10 s of SIGTERM; killed")
			}
		}
		for deadline := time.Now().Add(10 * time.Second); ; {
			select {
			case <-rp.exited:
				return nil, fmt.Errorf("the relay exited at start: %v: %s", waitErr, tail(logPath, 600))
			default:
			}
			if st, err := httpGet(addr, "/healthz"); err == nil && st == 200 {
				return rp, nil
			}
			if time.Now().After(deadline) {
				_ = rp.stop()
				return nil, fmt.Errorf("the relay did not answer GET /healthz within 10 s: %s", tail(logPath, 600))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// freeLoopbackAddr returns a loopback address with a port free right now.
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr, nil
}

// findModuleRoot walks up from the working directory to the relay's go.mod.
func findModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.HasPrefix(bytes.TrimSpace(b), []byte("module github.com/signrelay/signrelay\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("budget: no github.com/signrelay/signrelay go.mod above the working directory; pass -repo or -build=false")
		}
		dir = parent
	}
}

// --- the report ----------------------------------------------------------

// gitState describes the work tree at repo: HEAD, and the paths that differ
// from it that the relay binary is built from (Go files and the module files,
// outside tests and this generator).
func gitState(repo string) string {
	head, err := exec.Command("git", "-C", repo, "log", "-1", "--format=%H %s").Output()
	if err != nil {
		return ""
	}
	s := "HEAD " + strings.TrimSpace(string(head))
	st, err := exec.Command("git", "-C", repo, "status", "--porcelain", "--untracked-files=all").Output()
	if err != nil {
		return s
	}
	var relay []string
	all := 0
	for _, line := range strings.Split(strings.TrimRight(string(st), "\n"), "\n") {
		if len(line) < 4 {
			continue
		}
		all++
		path := line[3:]
		if (strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") &&
			!strings.HasPrefix(path, "tests/") && !strings.HasPrefix(path, "cmd/signrelay-bench/")) ||
			path == "go.mod" || path == "go.sum" {
			relay = append(relay, strings.TrimSpace(line[:2])+" "+path)
		}
	}
	switch {
	case all == 0:
		s += "; clean"
	case len(relay) == 0:
		s += fmt.Sprintf("; %d paths differ, none of them the relay's own sources", all)
	default:
		s += fmt.Sprintf("; %d paths differ, of them the relay's sources: %s", all, strings.Join(relay, ", "))
	}
	return s
}

func printBudgetFacts(o budgetOptions, before syscall.Rlimit, raised uint64) {
	mem := "unknown"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if kb, err := parseStatusKB(b, "MemTotal"); err == nil {
			mem = fmt.Sprintf("%.1f GiB (%d kB)", float64(kb)/(1<<20), kb)
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	report("date", "%s", time.Now().UTC().Format(time.RFC3339))
	report("nproc", "%d", runtime.NumCPU())
	report("memory", "%s", mem)
	report("open files (ulimit -n)", "%d soft / %d hard; the generator raises its soft limit to %d, and the relay inherits it", before.Cur, before.Max, raised)
	report("load average", "%s", strings.TrimSpace(string(load)))
	goVersion := "go not found"
	if out, err := exec.Command("go", "version").Output(); err == nil {
		goVersion = strings.TrimSpace(string(out))
	}
	report("go", "%s (generator built with %s)", goVersion, runtime.Version())
	if o.relayBin == "" {
		report("relay", "in this process (a test: the figures mean nothing)")
	} else if bi, err := buildinfo.ReadFile(o.relayBin); err == nil {
		set := map[string]string{}
		for _, s := range bi.Settings {
			set[s.Key] = s.Value
		}
		rev := set["vcs.revision"]
		if rev == "" {
			rev = "not stamped in the binary (-buildvcs=false); see the work tree line"
		}
		if set["vcs.modified"] == "true" {
			rev += " + uncommitted changes in the work tree"
		}
		report("relay binary", "%s, %s", o.relayBin, bi.GoVersion)
		if t := set["vcs.time"]; t != "" {
			rev += " (commit time " + t + ")"
		}
		report("relay git revision", "%s", rev)
	} else {
		report("relay binary", "%s (no build info: %v)", o.relayBin, err)
	}
	if o.repo != "" && o.git != "" {
		report("work tree at build", "%s: %s", o.repo, o.git)
	}
	for _, k := range []string{"GOGC", "GOMEMLIMIT", "GOMAXPROCS", "GODEBUG"} {
		if v := os.Getenv(k); v != "" {
			report(k, "%s (the relay inherits it)", v)
		}
	}
}

// formatBudgetTable lays the rows out as a fixed-width table.
func formatBudgetTable(rows []budgetRow) string {
	withG := false
	for _, r := range rows {
		withG = withG || r.haveG
	}
	var b strings.Builder
	head := fmt.Sprintf("%3s  %-40s %9s %10s %10s %11s %9s %8s %7s %8s %5s", "#", "scenario", "N", "before KiB", "after KiB", "Δ total KiB", "KiB/item", "B/item", "fds Δ", "settle", "busy")
	if withG {
		head += fmt.Sprintf(" %9s", "gor./item")
	}
	b.WriteString(head + "  sockets at measurement\n")
	for _, r := range rows {
		if r.err != "" && r.opened == 0 {
			fmt.Fprintf(&b, "%3d  %-40s %9d  FAILED: %s\n", r.id, r.name, r.n, r.err)
			continue
		}
		n := strconv.Itoa(r.opened)
		if r.opened != r.n {
			n = fmt.Sprintf("%d/%d", r.opened, r.n)
		}
		settle := fmt.Sprintf("%.1fs", r.settleWait.Seconds())
		if !r.settled {
			settle += "*"
		}
		per := r.perItemKiB()
		fmt.Fprintf(&b, "%3d  %-40s %9s %10d %10d %+11d %9.2f %8.0f %+7d %8s %5.2f",
			r.id, r.name, n, r.before, r.after, r.delta(), per, per*1024, r.fdsDelta, settle, r.busy)
		if withG {
			if r.haveG {
				fmt.Fprintf(&b, " %9.2f", float64(r.goroutines)/float64(max(r.opened, 1)))
			} else {
				fmt.Fprintf(&b, " %9s", "-")
			}
		}
		b.WriteString("  " + r.sockets)
		if r.err != "" {
			b.WriteString("  FAILED: " + r.err)
		}
		b.WriteString("\n")
	}
	if !withG {
		b.WriteString("goroutines: the relay exposes no goroutine count (no go_goroutines on GET /metrics); not reported\n")
	}
	return b.String()
}

// parseScenarioList parses "1,6,8" or "3-5,9" into ids in 1..count, in the
// order given; "" or "all" is every one.
func parseScenarioList(s string, count int) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "all" {
		ids := make([]int, count)
		for i := range ids {
			ids[i] = i + 1
		}
		return ids, nil
	}
	var ids []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(strings.TrimSpace(lo))
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(strings.TrimSpace(hi))
		}
		if err1 != nil || err2 != nil || a < 1 || b > count || a > b {
			return nil, fmt.Errorf("-budget-scenarios: %q is not a scenario number or range in 1..%d", part, count)
		}
		for id := a; id <= b; id++ {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}
