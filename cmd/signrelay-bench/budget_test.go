package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/httpapi"
)

func TestParseStatusKB(t *testing.T) {
	status := []byte("Name:\tsignrelay\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t 1262140 kB\nVmRSS:\t   12204 kB\nRssAnon:\t    4096 kB\nThreads:\t7\n")
	for field, want := range map[string]int64{"VmRSS": 12204, "VmPeak": 1262140, "RssAnon": 4096} {
		if got, err := parseStatusKB(status, field); err != nil || got != want {
			t.Errorf("parseStatusKB(%s) = %d, %v; want %d", field, got, err, want)
		}
	}
	if _, err := parseStatusKB(status, "VmSwap"); err == nil {
		t.Error("a missing field must be an error")
	}
	if _, err := parseStatusKB([]byte("VmRSS:\n"), "VmRSS"); err == nil {
		t.Error("an empty field must be an error")
	}
	// A field whose name is a prefix of another is not confused with it.
	if got, err := parseStatusKB([]byte("VmRSSx:\t1 kB\nVmRSS:\t2 kB\n"), "VmRSS"); err != nil || got != 2 {
		t.Errorf("got %d, %v; want 2", got, err)
	}
	meminfo := []byte("MemTotal:       24683584 kB\nMemFree:        20000000 kB\n")
	if got, err := parseStatusKB(meminfo, "MemTotal"); err != nil || got != 24683584 {
		t.Errorf("MemTotal = %d, %v", got, err)
	}
	// And the real thing.
	if kb, err := procStatusKB(os.Getpid(), "VmRSS"); err != nil || kb <= 0 {
		t.Errorf("procStatusKB(self, VmRSS) = %d, %v", kb, err)
	}
}

func TestStoppedGrowing(t *testing.T) {
	cases := []struct {
		samples []int64
		k       int
		want    bool
	}{
		{[]int64{1000, 1000}, 1, true},
		{[]int64{1000}, 1, false},                         // too few samples
		{[]int64{1000, 1000, 1000, 1000, 1200}, 4, false}, // the last grew by 200 KiB
		{[]int64{1000, 1000, 1050, 1060, 1064}, 4, true},  // within 64 KiB
		{[]int64{1000, 1100, 1000, 1000}, 2, true},        // the window starts after the bump
		{[]int64{100000, 100150, 100190}, 2, true},        // within 0.2 %
		{[]int64{100000, 100150, 100300}, 2, false},
		{[]int64{5000, 4000, 3000}, 2, true}, // shrinking counts as settled
	}
	for _, c := range cases {
		if got := stoppedGrowing(c.samples, c.k); got != c.want {
			t.Errorf("stoppedGrowing(%v, %d) = %v, want %v", c.samples, c.k, got, c.want)
		}
	}
}

func TestParseScenarioList(t *testing.T) {
	cases := map[string]string{
		"":          "1,2,3,4,5,6,7,8,9,10,11",
		"all":       "1,2,3,4,5,6,7,8,9,10,11",
		"1,6,8":     "1,6,8",
		" 8 , 1 ":   "8,1",
		"3-5,9,4":   "3,4,5,9",
		"11":        "11",
		"10-11,1-1": "10,11,1",
	}
	for in, want := range cases {
		got, err := parseScenarioList(in, 11)
		if err != nil || joinInts(got) != want {
			t.Errorf("parseScenarioList(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"0", "12", "1,,2", "x", "5-3", "1-12", "-1"} {
		if _, err := parseScenarioList(bad, 11); err == nil {
			t.Errorf("parseScenarioList(%q): no error", bad)
		}
	}
}

func TestFormatBudgetTable(t *testing.T) {
	rows := []budgetRow{
		{id: 1, name: "idle TCP, nothing sent", n: 4000, opened: 4000, before: 12000, after: 44000,
			settled: true, settleWait: 3200 * time.Millisecond, fdsDelta: 4000, busy: 0.25, sockets: "open 4000; nothing received"},
		{id: 4, name: "POST /sign no auth, CL 1 MiB, headers", n: 2000, opened: 2000, before: 12000, after: 11900,
			settled: false, settleWait: 12 * time.Second, fdsDelta: -1, sockets: "open 0, closed 2000; received HTTP 401 ×2000"},
		{id: 9, name: "WS introduced, 261000 of 262000 B frame", n: 256, opened: 250, before: 13000, after: 13000 + 250*300,
			settled: true, settleWait: 3 * time.Second, fdsDelta: 250, sockets: "open 250; nothing received", note: "6 failed"},
		{id: 10, name: "pending POST /sign, 64 KiB message", n: 512, err: "starting the relay: boom"},
	}
	out := formatBudgetTable(rows)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 6 {
		t.Fatalf("want a header, 4 rows and the goroutine note, got %d lines:\n%s", len(lines), out)
	}
	for _, want := range []string{
		"KiB/item", "B/item", "Δ total KiB",
	} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("header lacks %q: %s", want, lines[0])
		}
	}
	checks := []struct {
		line  int
		wants []string
	}{
		{1, []string{"  1  idle TCP, nothing sent", " 4000 ", " 12000 ", " 44000 ", " +32000 ", " 8.00 ", " 8192 ", " +4000 ", " 3.2s ", " 0.25 ", "open 4000; nothing received"}},
		{2, []string{"  4  ", " -100 ", " -0.05 ", " -51 ", " -1 ", " 12.0s* ", "HTTP 401 ×2000"}},
		{3, []string{"  9  ", " 250/256 ", " +75000 ", " 300.00 ", " 307200 "}},
		{4, []string{" 10  ", " 512 ", "FAILED: starting the relay: boom"}},
		{5, []string{"goroutines", "not reported"}},
	}
	for _, c := range checks {
		for _, w := range c.wants {
			if !strings.Contains(lines[c.line], w) {
				t.Errorf("line %d lacks %q:\n%s", c.line, w, lines[c.line])
			}
		}
	}
	// Columns line up: every measured row is as long as the header up to
	// the sockets column.
	col := strings.Index(lines[0], "  sockets")
	for _, l := range lines[1:4] {
		if []rune(l)[len([]rune(lines[0][:col]))] != ' ' {
			t.Errorf("misaligned row:\n%s\n%s", lines[0], l)
		}
	}

	// With a goroutine count from the relay, a column appears.
	rows[0].haveG, rows[0].goroutines = true, 4000
	out = formatBudgetTable(rows[:1])
	if !strings.Contains(out, "gor./item") || !strings.Contains(out, " 1.00 ") || strings.Contains(out, "not reported") {
		t.Errorf("goroutine column missing:\n%s", out)
	}
}

func TestClassifyAndSummarize(t *testing.T) {
	for in, want := range map[string]string{
		"":                                  "",
		"HTTP/1.1 401 Unauthorized\r\n":     "HTTP 401",
		"HTTP/1.1 413 Request Entity Too L": "HTTP 413",
		"\x88\x02\x03\xf1":                  "WS close 1009",
		"\x88\x00":                          "WS close",
		"\x81\x05hello":                     "WS opcode 1",
	} {
		if got := classifyReceived([]byte(in)); got != want {
			t.Errorf("classifyReceived(%q) = %q, want %q", in, got, want)
		}
	}
	ps := []probeResult{{open: true}, {open: true}, {got: "HTTP 401"}, {got: "HTTP 401"}, {got: "WS close 1009"}}
	if got, want := summarizeProbes(ps), "open 2, closed 3; received HTTP 401 ×2, WS close 1009 ×1"; got != want {
		t.Errorf("summarizeProbes = %q, want %q", got, want)
	}
	if got, want := summarizeProbes(ps[:2]), "open 2; nothing received"; got != want {
		t.Errorf("summarizeProbes = %q, want %q", got, want)
	}
}

func TestParseResponseHeadAndGoroutines(t *testing.T) {
	st, cl, err := parseResponseHead([]byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 15"))
	if err != nil || st != 200 || cl != 15 {
		t.Errorf("got %d %d %v", st, cl, err)
	}
	if _, _, err := parseResponseHead([]byte("SSH-2.0-OpenSSH")); err == nil {
		t.Error("a non-HTTP head must be an error")
	}
	exp := []byte("# HELP go_goroutines Number of goroutines that currently exist.\n# TYPE go_goroutines gauge\ngo_goroutines 4021\ngo_threads 9\n")
	if n, ok := parseGoroutines(exp); !ok || n != 4021 {
		t.Errorf("parseGoroutines = %d, %v", n, ok)
	}
	if _, ok := parseGoroutines([]byte("signrelay_sign_pending 0\n")); ok {
		t.Error("no go_goroutines must be reported as none")
	}
}

func TestPartialRequests(t *testing.T) {
	if len(partialHeader) != 2048 || bytes.Contains(partialHeader, []byte("\r\n\r\n")) {
		t.Errorf("partial header: %d bytes, ends the head: %v", len(partialHeader), bytes.Contains(partialHeader, []byte("\r\n\r\n")))
	}
	for _, c := range []struct{ declared, sent, hdr int }{{1000, 900, 8}, {262000, 261000, 14}, {100, 10, 6}} {
		f := partialFrame(c.declared, c.sent)
		if got := frameHeaderLen(f[1]); got != c.hdr || len(f) != c.hdr+c.sent {
			t.Errorf("partialFrame(%d, %d): header %d (want %d), length %d", c.declared, c.sent, got, c.hdr, len(f))
		}
		if got := framePayloadLen(f); got != uint64(c.declared) || f[0] != 0x81 || f[1]&0x80 == 0 {
			t.Errorf("partialFrame(%d, %d): declares %d, first bytes %x", c.declared, c.sent, got, f[:2])
		}
	}
	body := signBody(randomPub64(), randomBytes(65536))
	if len(body) < 87384 || len(body) > 87384+128 || partialBodyBytes >= len(body) {
		t.Errorf("a 64 KiB message's body is %d bytes", len(body))
	}
}

// inProcessStarter runs the relay in this test's process: the figures mean
// nothing, but every step of a scenario runs.
func inProcessStarter(t *testing.T) relayStarter {
	return func(cfgPath, addr, _ string) (*relayProc, error) {
		cfg, err := config.Load(cfgPath, true, func(string) string { return "" })
		if err != nil {
			return nil, err
		}
		srv, err := httpapi.New(cfg, nil)
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, err
		}
		served := make(chan struct{})
		go func() { defer close(served); _ = srv.Serve(ln) }()
		stopped := false
		stop := func() error {
			if stopped {
				return nil
			}
			stopped = true
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := srv.Shutdown(ctx)
			<-served
			return err
		}
		t.Cleanup(func() { _ = stop() })
		return &relayProc{addr: ln.Addr().String(), pid: os.Getpid(), exited: make(chan struct{}), stop: stop}, nil
	}
}

// TestBudgetSmoke runs three cheap scenarios with a few items each: idle
// TCP, introduced WebSockets and pending small requests (with a holder).
func TestBudgetSmoke(t *testing.T) {
	o := budgetOptions{
		scenarios: []int{1, 8, 11},
		scale:     0.005,
		sources:   2,
		dialers:   4,
		settleMin: 0,
		settleMax: 300 * time.Millisecond,
		poll:      50 * time.Millisecond,
		window:    100 * time.Millisecond,
		timeout:   20 * time.Second,
		outDir:    t.TempDir(),
		start:     inProcessStarter(t),
	}
	rows, err := runBudget(o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 {
		t.Fatalf("%d rows", len(rows))
	}
	for _, r := range rows {
		if r.err != "" || r.opened != r.n || r.n < 10 || !strings.HasPrefix(r.sockets, fmt.Sprintf("open %d;", r.n)) {
			t.Errorf("scenario %d: %+v", r.id, r)
		}
	}
	if !strings.Contains(rows[2].note, fmt.Sprintf("holders got %d sign_request", rows[2].n)) {
		t.Errorf("pending scenario: %q", rows[2].note)
	}
}
