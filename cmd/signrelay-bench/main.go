// Command signrelay-bench measures a running signing relay from outside,
// exactly as its users reach it: key holders over WebSocket (GET /ws) that
// sign with crypto/ed25519, and backends calling POST /sign.
//
//	signrelay-bench load  -url http://127.0.0.1:18080 -api-key KEY -pid PID [-holders 100] [-backends 64] [-duration 25s] [-rate 0] [-idle 0]
//	signrelay-bench idle  -url http://127.0.0.1:18080 -pid PID -n 19000
//	signrelay-bench relay -config bench.yaml -cpuprofile relay.pprof   (the relay itself, profiled)
//	signrelay-bench budget [-budget-scenarios 1,6,8] [-relay-bin /tmp/signrelay]   (also: -mode budget)
//	signrelay-bench verify                                             (ed25519.Verify yardstick)
//
// load prints completed requests, errors by status, throughput, latency
// percentiles, and with -pid the relay's CPU time per completed request
// (from /proc/PID/stat) next to the generator's own, and the ratio of the
// relay's CPU per request to one ed25519.Verify measured in this process.
// idle opens N introduced connections and prints the relay's RSS growth per
// connection and the introduction rate. budget starts a relay binary of its
// own per scenario and prints the relay's RSS per client-held resource (idle
// sockets, half-sent requests, WebSockets at each stage, pending requests).
// Traffic goes to loopback only.
// docs/benchmarks.md has the figures and how they were made.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// common are the flags every client mode shares.
type common struct {
	addr   string // host:port of the relay, loopback only
	apiKey string
	pid    int
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	mode, args := os.Args[1], os.Args[2:]
	// "-mode NAME" and "-mode=NAME" are accepted in place of the mode word.
	if (mode == "-mode" || mode == "--mode") && len(args) > 0 {
		mode, args = args[0], args[1:]
	} else if v, ok := strings.CutPrefix(strings.TrimPrefix(mode, "-"), "-mode="); ok {
		mode = v // --mode=NAME
	} else if v, ok := strings.CutPrefix(mode, "-mode="); ok {
		mode = v
	}
	var err error
	switch mode {
	case "load":
		err = cmdLoad(args)
	case "idle":
		err = cmdIdle(args)
	case "relay":
		err = cmdRelay(args)
	case "budget":
		err = cmdBudget(args)
	case "verify":
		m, f := measureVerify(9, 2000)
		report("ed25519.Verify", "%s/op median, %s/op fastest (9 rounds of 2000, 32-byte messages)", us(m), us(f))
	case "-h", "-help", "--help", "help":
		usage()
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "signrelay-bench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: signrelay-bench load|idle|relay|verify|budget [flags]   (signrelay-bench MODE -h for the flags)
`)
}

func commonFlags(fs *flag.FlagSet) func() (common, error) {
	u := fs.String("url", "http://127.0.0.1:18080", "relay base URL (loopback only)")
	key := fs.String("api-key", os.Getenv("SIGNRELAY_BENCH_API_KEY"), "API key for POST /sign (default $SIGNRELAY_BENCH_API_KEY)")
	pid := fs.Int("pid", 0, "relay process id: report its CPU time and RSS from /proc")
	return func() (common, error) {
		p, err := url.Parse(*u)
		if err != nil || p.Scheme != "http" || p.Host == "" {
			return common{}, fmt.Errorf("-url %q: want http://HOST:PORT", *u)
		}
		host, _, err := net.SplitHostPort(p.Host)
		if err != nil {
			return common{}, fmt.Errorf("-url %q: want an explicit port", *u)
		}
		ips, err := net.LookupIP(host)
		if err != nil || len(ips) == 0 {
			return common{}, fmt.Errorf("-url %q: %v", *u, err)
		}
		for _, ip := range ips {
			if !ip.IsLoopback() {
				return common{}, fmt.Errorf("-url %q: only loopback relays may be loaded (%s is not)", *u, ip)
			}
		}
		return common{addr: p.Host, apiKey: *key, pid: *pid}, nil
	}
}

func idleFlags(fs *flag.FlagSet, o *idleOptions, nName string, nDefault int) {
	fs.IntVar(&o.n, nName, nDefault, "introduced idle connections to open")
	fs.IntVar(&o.sources, "sources", 8, "loopback source addresses for idle connections (127.0.0.2 and up)")
	fs.IntVar(&o.dialers, "dialers", 32, "idle connections opened at once")
	fs.DurationVar(&o.settle, "settle", 3*time.Second, "wait after the last introduction before reading the relay's RSS")
	fs.DurationVar(&o.sweep, "sweep", 5*time.Second, "how often idle connections are read to answer pings")
}

func cmdLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	get := commonFlags(fs)
	var o loadOptions
	fs.IntVar(&o.holders, "holders", 100, "key holders connected over WebSocket")
	fs.IntVar(&o.backends, "backends", 64, "concurrent backends calling POST /sign")
	fs.DurationVar(&o.duration, "duration", 25*time.Second, "measured window")
	fs.DurationVar(&o.warmup, "warmup", 3*time.Second, "unmeasured warm-up before the window")
	fs.Float64Var(&o.rate, "rate", 0, "open loop: requests per second in total (0: closed loop, as fast as the backends go)")
	fs.IntVar(&o.msgBytes, "msg-bytes", 32, "message size in bytes")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "timeout_ms sent with each request")
	fs.StringVar(&o.client, "client", "fasthttp", "HTTP client: fasthttp or nethttp")
	fs.BoolVar(&o.checkSigs, "check-sigs", false, "verify every returned signature in the generator (costs one Verify per request)")
	idleFlags(fs, &o.idle, "idle", 0)
	_ = fs.Parse(args)
	c, err := get()
	if err != nil {
		return err
	}
	o.common = c
	switch {
	case o.apiKey == "":
		return errors.New("load: -api-key (or $SIGNRELAY_BENCH_API_KEY) is required")
	case o.holders < 1 || o.holders > 10000:
		return errors.New("load: -holders must be 1..10000")
	case o.backends < 1 || o.backends > 4096:
		return errors.New("load: -backends must be 1..4096")
	case o.duration <= 0 || o.duration > time.Hour || o.warmup < 0 || o.warmup > 10*time.Minute:
		return errors.New("load: -duration must be in (0, 1h] and -warmup in [0, 10m]")
	case o.rate < 0 || o.rate > 1e6:
		return errors.New("load: -rate must be 0..1e6")
	case o.msgBytes < 1 || o.msgBytes > 1<<16:
		return errors.New("load: -msg-bytes must be 1..65536")
	case o.timeout < time.Millisecond || o.timeout > 60*time.Second:
		return errors.New("load: -timeout must be 1ms..60s")
	case o.idle.n < 0 || o.idle.n > 60000 || o.idle.sources < 1 || o.idle.sources > 250 || o.idle.dialers < 1:
		return errors.New("load: -idle must be 0..60000, -sources 1..250, -dialers ≥ 1")
	}
	return runLoad(o)
}

func cmdIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	get := commonFlags(fs)
	var o idleOptions
	idleFlags(fs, &o, "n", 19000)
	hold := fs.Duration("hold", 5*time.Second, "how long to hold the connections before checking them and closing")
	_ = fs.Parse(args)
	c, err := get()
	if err != nil {
		return err
	}
	if o.n < 1 || o.n > 60000 || o.sources < 1 || o.sources > 250 || o.dialers < 1 || *hold < 0 || *hold > time.Hour {
		return errors.New("idle: -n must be 1..60000, -sources 1..250, -dialers ≥ 1, -hold 0..1h")
	}
	return runIdle(c, o, *hold)
}

func cmdRelay(args []string) error {
	fs := flag.NewFlagSet("relay", flag.ExitOnError)
	path := fs.String("config", "config.yaml", "relay configuration file")
	cpu := fs.String("cpuprofile", "", "write a CPU profile, from start to SIGINT/SIGTERM, to this file")
	mem := fs.String("memprofile", "", "write a heap profile to this file on SIGUSR1 (and to FILE.atstop at stop)")
	rate := fs.Int("memprofilerate", 0, "runtime.MemProfileRate (0: the runtime's default)")
	_ = fs.Parse(args)
	return runRelay(*path, *cpu, *mem, *rate)
}
