package main

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/httpapi"
)

// The generator is exercised briefly against an in-process relay so that
// it cannot rot; the figures it prints here mean nothing (the relay and the
// generator share one process).

const smokeKey = "smoke-api-key-0123456789abcdef"

func startSmokeRelay(t *testing.T, mutate ...func(*config.Config)) string {
	t.Helper()
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.APIKeys = config.BareKeys(smokeKey)
	cfg.RateLimits.Enabled = false
	cfg.ShutdownGrace = config.Duration(time.Second)
	for _, m := range mutate {
		m(&cfg)
	}
	srv, err := httpapi.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
	})
	return ln.Addr().String()
}

func smokeLoad(addr string) loadOptions {
	verifyRounds, verifyPerRound = 1, 20
	return loadOptions{
		common:   common{addr: addr, apiKey: smokeKey, pid: os.Getpid()},
		holders:  4,
		backends: 4,
		duration: 500 * time.Millisecond,
		warmup:   100 * time.Millisecond,
		msgBytes: 32,
		timeout:  5 * time.Second,
		client:   "fasthttp",
		idle:     idleOptions{sources: 2, dialers: 4, settle: 10 * time.Millisecond, sweep: 50 * time.Millisecond},
	}
}

func TestLoadClosedLoop(t *testing.T) {
	o := smokeLoad(startSmokeRelay(t))
	o.checkSigs = true
	if err := runLoad(o); err != nil {
		t.Fatal(err)
	}
}

func TestLoadOpenLoopNetHTTPWithIdle(t *testing.T) {
	o := smokeLoad(startSmokeRelay(t))
	o.rate = 200
	o.client = "nethttp"
	o.idle.n = 20
	if err := runLoad(o); err != nil {
		t.Fatal(err)
	}
}

// TestIdle holds the connections for several of the relay's ping
// intervals: they stay open only if the sweeper answers the pings.
func TestIdle(t *testing.T) {
	addr := startSmokeRelay(t, func(c *config.Config) { c.WebSocket.PingInterval = config.Duration(100 * time.Millisecond) })
	c := common{addr: addr, pid: os.Getpid()}
	if err := runIdle(c, idleOptions{n: 30, sources: 3, dialers: 4, settle: 10 * time.Millisecond, sweep: 30 * time.Millisecond}, 600*time.Millisecond); err != nil {
		t.Fatal(err)
	}
}

func TestJSONString(t *testing.T) {
	cases := []struct{ frame, field, want string }{
		{`{"type":"sign_request","request_id":"abc","message":"AA=="}`, "request_id", "abc"},
		{`{"type":"sign_request","description":"say \"request_id\":\"x\"","request_id":"abc"}`, "request_id", "abc"},
		{`{"type":"error","message":"a \"quoted\" word"}`, "message", `a "quoted" word`},
		{`{"type":"error"}`, "message", ""},
	}
	for _, c := range cases {
		if got := jsonString([]byte(c.frame), c.field); got != c.want {
			t.Errorf("jsonString(%s, %s) = %q, want %q", c.frame, c.field, got, c.want)
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for q, want := range map[float64]time.Duration{50: 50, 90: 90, 99: 99, 100: 100} {
		if got := percentile(d, q); got != want {
			t.Errorf("p%v = %v, want %v", q, got, want)
		}
	}
}

func TestLoadAsync(t *testing.T) {
	o := smokeLoad(startSmokeRelay(t))
	o.mode = modeAsync
	o.checkSigs = true
	if err := runLoad(o); err != nil {
		t.Fatal(err)
	}
}

func TestLoadAsyncNetHTTPOpenLoop(t *testing.T) {
	o := smokeLoad(startSmokeRelay(t))
	o.mode = modeAsync
	o.client = "nethttp"
	o.rate = 200
	if err := runLoad(o); err != nil {
		t.Fatal(err)
	}
}

func TestLoadReplay(t *testing.T) {
	o := smokeLoad(startSmokeRelay(t))
	o.mode = modeReplay
	o.checkSigs = true
	if err := runLoad(o); err != nil {
		t.Fatal(err)
	}
}

func TestLoadReplayNetHTTP(t *testing.T) {
	o := smokeLoad(startSmokeRelay(t))
	o.mode = modeReplay
	o.client = "nethttp"
	if err := runLoad(o); err != nil {
		t.Fatal(err)
	}
}
