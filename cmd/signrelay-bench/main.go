// Command signrelay-bench measures a running signing relay from outside,
// exactly as its users reach it: key holders over WebSocket (GET /ws) that
// sign with crypto/ed25519, and backends calling POST /sign.
//
//	signrelay-bench load  -url http://127.0.0.1:18080 -api-key KEY -pid PID [-holders 100] [-backends 64] [-duration 25s] [-rate 0] [-idle 0]
//	                      [-mode sync|async|replay]   (blocking calls; "wait": false and long polls; Idempotency-Key replays)
//	                      [-holder-url http://127.0.0.1:18081 -pids B=PID,nats=PID]   (a cluster: holders on another node)
//	signrelay-bench idle  -url http://127.0.0.1:18080 -pid PID -n 19000
//	signrelay-bench relay -config bench.yaml -cpuprofile relay.pprof   (the relay itself, profiled)
//	signrelay-bench budget [-budget-scenarios 1,6,8] [-relay-bin /tmp/signrelay]   (also: -mode budget)
//	signrelay-bench verify                                             (ed25519.Verify yardstick)
//
// load prints completed requests, errors by status, throughput, latency
// percentiles, and with -pid the relay's CPU time per completed request
// (from /proc/PID/stat) next to the generator's own, and the ratio of the
// relay's CPU per request to one ed25519.Verify measured in this process.
// With -holder-url the key holders connect to another relay (another node
// of a cluster) while the backends still call -url; -pids adds more
// processes (the other node, nats-server), each reported on its own line
// and summed with -pid's into the cluster's CPU per request.
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
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
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
		addr, err := loopbackHostPort("-url", *u)
		if err != nil {
			return common{}, err
		}
		return common{addr: addr, apiKey: *key, pid: *pid}, nil
	}
}

// loopbackHostPort checks that raw (the value of flag name) is
// http://HOST:PORT with HOST resolving to loopback addresses only, and
// returns HOST:PORT.
func loopbackHostPort(name, raw string) (string, error) {
	p, err := url.Parse(raw)
	if err != nil || p.Scheme != "http" || p.Host == "" {
		return "", fmt.Errorf("%s %q: want http://HOST:PORT", name, raw)
	}
	host, _, err := net.SplitHostPort(p.Host)
	if err != nil {
		return "", fmt.Errorf("%s %q: want an explicit port", name, raw)
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return "", fmt.Errorf("%s %q: %v", name, raw, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return "", fmt.Errorf("%s %q: only loopback relays may be loaded (%s is not)", name, raw, ip)
		}
	}
	return p.Host, nil
}

// procRef is one more process whose CPU time a load run reports (-pids).
type procRef struct {
	name string // a label given as NAME=PID, else the process's comm
	pid  int
}

// maxExtraPIDs bounds -pids.
const maxExtraPIDs = 16

// parsePIDs parses -pids: a comma-separated list of PID or NAME=PID, each
// PID positive and none repeated (nor equal to main, the -pid value).
// Names are 1–32 letters, digits, '-', '_' or '.', distinct, and none of the
// words that start the report's own lines (relay, machine, cluster,
// generator), so that "NAME CPU:" cannot be mistaken for one of them.
func parsePIDs(s string, main int) ([]procRef, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	seen, names := map[int]bool{}, map[string]bool{}
	if main > 0 {
		seen[main] = true
	}
	var out []procRef
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		name, num, labelled := strings.Cut(f, "=")
		if !labelled {
			name, num = "", f
		} else if !isLabel(name) {
			return nil, fmt.Errorf("-pids: %q: a name is 1 to 32 letters, digits, '-', '_' or '.'", f)
		} else if reservedLabels[strings.ToLower(name)] {
			return nil, fmt.Errorf("-pids: %q: %q names a line of the report already; choose another name", f, name)
		} else if names[name] {
			return nil, fmt.Errorf("-pids: the name %q is given twice", name)
		}
		if labelled {
			names[name] = true
		}
		pid, err := strconv.Atoi(num)
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("-pids: %q: want PID or NAME=PID with a positive PID", f)
		}
		if seen[pid] {
			return nil, fmt.Errorf("-pids: pid %d is given twice (or is -pid's)", pid)
		}
		seen[pid] = true
		out = append(out, procRef{name: name, pid: pid})
	}
	if len(out) > maxExtraPIDs {
		return nil, fmt.Errorf("-pids: at most %d processes", maxExtraPIDs)
	}
	return out, nil
}

var reservedLabels = map[string]bool{"relay": true, "machine": true, "cluster": true, "generator": true}

func isLabel(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

func idleFlags(fs *flag.FlagSet, o *idleOptions, nName string, nDefault int) {
	fs.IntVar(&o.n, nName, nDefault, "introduced idle connections to open")
	fs.IntVar(&o.sources, "sources", 8, "loopback source addresses for idle connections (127.0.0.2 and up)")
	fs.IntVar(&o.dialers, "dialers", 32, "idle connections opened at once")
	fs.DurationVar(&o.settle, "settle", 3*time.Second, "wait after the last introduction before reading the relay's RSS")
	fs.DurationVar(&o.sweep, "sweep", 5*time.Second, "how often idle connections are read to answer pings")
}

func cmdLoad(args []string) error {
	o, err := parseLoadFlags(args, flag.ExitOnError, os.Stderr)
	if err != nil {
		return err
	}
	return runLoad(o)
}

// parseLoadFlags parses and checks the flags of load mode.
func parseLoadFlags(args []string, onError flag.ErrorHandling, output io.Writer) (loadOptions, error) {
	fs := flag.NewFlagSet("load", onError)
	fs.SetOutput(output)
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
	fs.StringVar(&o.mode, "mode", modeSync, `request mode: sync (blocking POST /sign), async ("wait": false, 202, then GET /sign/{id}?wait_ms=30000 until signed) or replay (per backend one request with an Idempotency-Key, then its replays are what is measured)`)
	fs.BoolVar(&o.checkSigs, "check-sigs", false, "verify every returned signature in the generator (costs one Verify per request)")
	holderURL := fs.String("holder-url", "", "relay base URL the key holders connect to (loopback only; default -url), e.g. another node of a cluster: backends still call -url, and so do -idle connections (their RSS is -pid's)")
	pids := fs.String("pids", "", "more processes (PID or NAME=PID, comma-separated; e.g. the other relay and nats-server) whose CPU time is reported each and summed with -pid's per request")
	idleFlags(fs, &o.idle, "idle", 0)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	c, err := get()
	if err != nil {
		return o, err
	}
	o.common = c
	o.holderAddr = c.addr
	if *holderURL != "" {
		if o.holderAddr, err = loopbackHostPort("-holder-url", *holderURL); err != nil {
			return o, err
		}
	}
	if o.pids, err = parsePIDs(*pids, o.pid); err != nil {
		return o, err
	}
	switch {
	case o.apiKey == "":
		return o, errors.New("load: -api-key (or $SIGNRELAY_BENCH_API_KEY) is required")
	case len(o.pids) > 0 && o.pid <= 0:
		return o, errors.New("load: -pids needs -pid (the relay that takes POST /sign)")
	case o.holders < 1 || o.holders > 10000:
		return o, errors.New("load: -holders must be 1..10000")
	case o.backends < 1 || o.backends > 4096:
		return o, errors.New("load: -backends must be 1..4096")
	case o.duration <= 0 || o.duration > time.Hour || o.warmup < 0 || o.warmup > 10*time.Minute:
		return o, errors.New("load: -duration must be in (0, 1h] and -warmup in [0, 10m]")
	case o.rate < 0 || o.rate > 1e6:
		return o, errors.New("load: -rate must be 0..1e6")
	case o.msgBytes < 1 || o.msgBytes > 1<<16:
		return o, errors.New("load: -msg-bytes must be 1..65536")
	case o.timeout < time.Millisecond || o.timeout > 60*time.Second:
		return o, errors.New("load: -timeout must be 1ms..60s")
	case o.mode != modeSync && o.mode != modeAsync && o.mode != modeReplay:
		return o, fmt.Errorf("load: -mode %q: want sync, async or replay", o.mode)
	case o.idle.n < 0 || o.idle.n > 60000 || o.idle.sources < 1 || o.idle.sources > 250 || o.idle.dialers < 1:
		return o, errors.New("load: -idle must be 0..60000, -sources 1..250, -dialers ≥ 1")
	}
	return o, nil
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
