#!/usr/bin/env bash
# Cross-node round trips: the figures of "Cluster: cross-node round trips"
# in docs/benchmarks.md. Builds the relay and the load generator into a
# temporary directory, finds or builds nats-server, then, in one run on this
# machine, each step against fresh processes on 127.0.0.1:
#
#   a. one relay, no cluster: the single-node yardstick (= scripts/bench.sh step 1)
#   b. two relays joined by an external nats-server; holders on B, backends on A
#   b'. the same, open loop at 500 req/s (latency)
#   c. two relays, each with an embedded NATS server, routed to each other
#   d. one relay with cluster.nats_url "" (the same as a: single-node figures unchanged)
#   e. what a NATS subscription costs: 100,000 subscriptions on one of two
#      routed NATS servers, their live heap and RSS
#
# Everything stays on loopback, every step is bounded in time and every
# process started here is stopped on exit. About 3 minutes.
#
#   scripts/bench-cluster.sh          # everything
#   scripts/bench-cluster.sh quick    # 5-second windows, 20,000 subscriptions
#
# Environment: BENCH_OUT (results, default /tmp/signrelay-bench-cluster),
# BENCH_PORT (the first port tried, default 19480; ports in use are skipped),
# BENCH_DURATION (closed-loop window, default 20s), NATS_SERVER (a
# nats-server binary to use), BENCH_PROFILE=1 (build the relay with
# -tags signrelay_pprof and write CPU profiles of relay A and B over step b's
# window to $BENCH_OUT/b-relay-{a,b}.pprof; read them with
# go tool pprof $BENCH_OUT/signrelay $BENCH_OUT/b-relay-a.pprof).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

OUT=${BENCH_OUT:-/tmp/signrelay-bench-cluster}
DURATION=${BENCH_DURATION:-20s}
RATE=500
RATE_DURATION=10s
SUBS=100000
if [[ "${1:-}" == quick ]]; then
	DURATION=5s RATE_DURATION=5s SUBS=20000
elif [[ $# -gt 0 ]]; then
	echo "usage: $0 [quick]" >&2
	exit 2
fi
KEY=bench-api-key-0123456789abcdef
NATS_PASSWORD=bench-nats-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
mkdir -p "$OUT"
BIN=$(mktemp -d /tmp/signrelay-bench-cluster-bin.XXXXXX)

# --- processes -----------------------------------------------------------

PIDS=()     # every process started here
STOPPING=
stop_pids() { # stop_pids PID...: SIGTERM, then SIGKILL after 15 s
	local p alive=() deadline=$((SECONDS + 15))
	for p in "$@"; do
		kill -TERM "$p" 2>/dev/null && alive+=("$p")
	done
	while ((${#alive[@]} > 0)); do
		local still=()
		for p in "${alive[@]}"; do
			kill -0 "$p" 2>/dev/null && still+=("$p")
		done
		alive=("${still[@]+"${still[@]}"}")
		((${#alive[@]} > 0)) || break
		if ((SECONDS >= deadline)); then
			echo "!! pids ${alive[*]} did not stop within 15 s; killing them" >&2
			kill -KILL "${alive[@]}" 2>/dev/null || true
			break
		fi
		sleep 0.1
	done
	for p in "$@"; do
		wait "$p" 2>/dev/null || true
	done
}
stop_all() { # stops every process started so far, the last started first
	# (the relays before the NATS server they use, so that they do not log a lost connection)
	local i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		stop_pids "${PIDS[i]}"
	done
	PIDS=()
}
cleanup() {
	[[ -z $STOPPING ]] || return 0
	STOPPING=1
	stop_all
	rm -rf "$BIN"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
NEXT_PORT=${BENCH_PORT:-19480}
free_port() { # sets PORT to the next port from NEXT_PORT on that nobody listens on
	while in_use "$NEXT_PORT"; do
		NEXT_PORT=$((NEXT_PORT + 1))
	done
	((NEXT_PORT < 65536)) || { echo "no free port" >&2; exit 1; }
	PORT=$NEXT_PORT
	NEXT_PORT=$((NEXT_PORT + 1))
}

# http_status PORT PATH prints the status code of GET PATH, or nothing.
http_status() {
	(
		exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
		printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
		IFS=' ' read -r -t 2 _ code _ <&3 || true
		printf '%s' "${code:-}"
	) 2>/dev/null
}

LAST_PID=
start() { # start NAME COMMAND...: in the background, output to $OUT/NAME.log
	local name=$1
	shift
	"$@" >>"$OUT/$name.log" 2>&1 &
	LAST_PID=$!
	PIDS+=("$LAST_PID")
}
# launch_relay NAME CONFIG: a relay (its pid in LAST_PID; the environment's
# SIGNRELAY_LISTEN and SIGNRELAY_API_KEYS would override the configuration).
PPROF= # host:port for the next relay's pprof (BENCH_PROFILE builds only)
launch_relay() {
	start "$1" env -u SIGNRELAY_LISTEN -u SIGNRELAY_API_KEYS SIGNRELAY_PPROF="$PPROF" "$BIN/signrelay" -config "$2"
}
# wait_ready NAME PID PORT: until the relay's GET /readyz is 200 (30 s at most).
wait_ready() {
	local deadline=$((SECONDS + 30))
	until [[ $(http_status "$3" /readyz) == 200 ]]; do
		if ! kill -0 "$2" 2>/dev/null; then
			echo "relay $1 exited; the end of $OUT/$1.log:" >&2
			tail -n 20 "$OUT/$1.log" >&2
			exit 1
		fi
		if ((SECONDS >= deadline)); then
			echo "relay $1: GET /readyz is not 200 after 30 s; the end of $OUT/$1.log:" >&2
			tail -n 20 "$OUT/$1.log" >&2
			exit 1
		fi
		sleep 0.1
	done
}
start_relay() { # start_relay NAME CONFIG PORT: a relay, once ready
	launch_relay "$1" "$2"
	wait_ready "$1" "$LAST_PID" "$3"
}
wait_port() { # wait_port NAME PID PORT: until something listens on PORT
	local deadline=$((SECONDS + 20))
	until in_use "$3"; do
		kill -0 "$2" 2>/dev/null || { echo "$1 exited; see $OUT/$1.log" >&2; tail -n 20 "$OUT/$1.log" >&2; exit 1; }
		((SECONDS < deadline)) || { echo "$1 does not listen on $3 after 20 s" >&2; exit 1; }
		sleep 0.1
	done
}

# bench OUTFILE ARGS...: the generator, bounded, its output shown and kept.
# It runs in the background so that a signal to this script stops it at once.
bench() {
	local out=$1 rc=0
	shift
	: >"$out"
	timeout 300 "$BIN/signrelay-bench" "$@" >"$out" 2>&1 &
	local pid=$!
	PIDS+=("$pid")
	tail -n +1 -f --pid="$pid" "$out" &
	local tailer=$!
	PIDS+=("$tailer")
	wait "$pid" || rc=$?
	wait "$tailer" || true
	if ((rc != 0)); then
		echo "!! this run reported errors (exit status $rc)"
	fi
	return 0
}
step() { echo; echo "== $1 (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"; }

# --- build ----------------------------------------------------------------

echo "== building into $BIN"
if [[ ${BENCH_PROFILE:-} == 1 ]]; then
	go build -tags signrelay_pprof -o "$BIN/signrelay" .
	cp "$BIN/signrelay" "$OUT/signrelay" # the binary the profiles need
else
	go build -o "$BIN/signrelay" .
fi
go build -o "$BIN/signrelay-bench" ./cmd/signrelay-bench

NATS=${NATS_SERVER:-}
if [[ -z $NATS ]]; then
	if command -v nats-server >/dev/null; then
		NATS=$(command -v nats-server)
	elif [[ -x "$(go env GOPATH)/bin/nats-server" ]]; then
		NATS=$(go env GOPATH)/bin/nats-server
	else
		echo "== go install github.com/nats-io/nats-server/v2@v2.15.3"
		timeout 600 go install github.com/nats-io/nats-server/v2@v2.15.3
		NATS=$(go env GOPATH)/bin/nats-server
	fi
fi
[[ -x $NATS ]] || { echo "nats-server: $NATS is not an executable" >&2; exit 1; }

# The subscription counter of step e: a NATS server (the nats-server library
# of go.mod) that prints its live heap after a GC on SIGUSR1, and a client
# that subscribes the way a relay node does (ChanSubscribe on one channel).
cat >"$BIN/natssubs.go" <<'EOF'
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

func main() {
	var err error
	switch mode := os.Args[1]; mode {
	case "server":
		err = runServer(os.Args[2:])
	case "client":
		err = runClient(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "natssubs:", err)
		os.Exit(1)
	}
}

func rssKB() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range bytes.Split(b, []byte("\n")) {
		if f := bytes.Fields(l); len(f) >= 2 && string(f[0]) == "VmRSS:" {
			var v int64
			fmt.Sscan(string(f[1]), &v)
			return v
		}
	}
	return -1
}

func heap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func runServer(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	name := fs.String("name", "s", "server name")
	port := fs.Int("port", 4222, "client port on 127.0.0.1")
	cport := fs.Int("cluster-port", 0, "route port on 127.0.0.1")
	route := fs.String("route", "", "route URL of the other server")
	_ = fs.Parse(args)
	u, err := url.Parse(*route)
	if err != nil {
		return err
	}
	s, err := server.NewServer(&server.Options{ServerName: *name, Host: "127.0.0.1", Port: *port, NoSigs: true, NoLog: true,
		Cluster: server.ClusterOpts{Name: "natssubs", Host: "127.0.0.1", Port: *cport}, Routes: []*url.URL{u}})
	if err != nil {
		return err
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("server %s not ready", *name)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)
	for sig := range sigs {
		if sig != syscall.SIGUSR1 {
			break
		}
		a := heap()
		fmt.Printf("%s subscriptions %d routes %d heap_kib %d rss_kib %d\n", *name, s.NumSubscriptions(), s.NumRoutes(), a>>10, rssKB())
	}
	s.Shutdown()
	return nil
}

func runClient(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	u := fs.String("url", "nats://127.0.0.1:4222", "NATS server")
	n := fs.Int("n", 100000, "subscriptions")
	hold := fs.Duration("hold", 10*time.Second, "how long to hold them")
	ready := fs.String("ready", "", "file to create once subscribed and flushed")
	_ = fs.Parse(args)
	nc, err := nats.Connect(*u, nats.Timeout(5*time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	ch := make(chan *nats.Msg, 1024)
	subs := make([]*nats.Subscription, *n)
	a0 := heap()
	b := make([]byte, 16)
	t0 := time.Now()
	for i := range subs {
		_, _ = rand.Read(b)
		if subs[i], err = nc.ChanSubscribe("signrelay.key."+hex.EncodeToString(b), ch); err != nil {
			return err
		}
	}
	if err := nc.FlushTimeout(30 * time.Second); err != nil {
		return err
	}
	took := time.Since(t0)
	a1 := heap()
	fmt.Printf("client: %d subscriptions (signrelay.key.<32 hex digits>, ChanSubscribe) in %.2f s, %.0f/s; client heap +%d KiB, %.0f bytes per subscription\n",
		*n, took.Seconds(), float64(*n)/took.Seconds(), (a1-a0)>>10, float64(a1-a0)/float64(*n))
	if *ready != "" {
		if err := os.WriteFile(*ready, nil, 0o600); err != nil {
			return err
		}
	}
	time.Sleep(*hold)
	runtime.KeepAlive(subs)
	return nil
}
EOF
go build -o "$BIN/natssubs" "$BIN/natssubs.go"

# --- configurations -------------------------------------------------------

free_port; P_A=$PORT        # relay A (and the single relay)
free_port; P_B=$PORT        # relay B
free_port; P_NATS=$PORT     # the external nats-server
free_port; P_EA=$PORT       # A's embedded NATS, clients
free_port; P_EB=$PORT       # B's embedded NATS, clients
free_port; P_RA=$PORT       # A's embedded NATS, routes
free_port; P_RB=$PORT       # B's embedded NATS, routes
free_port; P_S1=$PORT       # step e: two NATS servers, clients and routes
free_port; P_S1R=$PORT
free_port; P_S2=$PORT
free_port; P_S2R=$PORT
free_port; P_PA=$PORT       # BENCH_PROFILE: pprof of relay A and B in step b
free_port; P_PB=$PORT

base() { # base PORT: what every relay of this run has
	cat <<EOF
listen: 127.0.0.1:$1
api_keys: [$KEY]
rate_limits:
  enabled: false
log_level: warn
shutdown_grace: 2s
websocket:
  max_unintroduced_per_ip: 4096   # the generator's holders all come from 127.0.0.1
EOF
}
base "$P_A" >"$OUT/single.yaml"
{ base "$P_A"; printf 'cluster:\n  nats_url: ""\n'; } >"$OUT/single-nats-url-empty.yaml"
for n in a b; do
	if [[ $n == a ]]; then p=$P_A; else p=$P_B; fi
	{ base "$p"; printf 'cluster:\n  nats_url: nats://127.0.0.1:%s\n  node_id: bench-%s\n' "$P_NATS" "$n"; } >"$OUT/external-$n.yaml"
	if [[ $n == a ]]; then e=$P_EA r=$P_RA; else e=$P_EB r=$P_RB; fi
	{
		base "$p"
		cat <<EOF
cluster:
  node_id: bench-$n
  embedded:
    listen: 127.0.0.1:$e
    cluster_listen: 127.0.0.1:$r
    routes: [nats://127.0.0.1:$P_RA, nats://127.0.0.1:$P_RB]
    cluster_name: signrelay-bench
    user: bench
    password: "$NATS_PASSWORD"
EOF
	} >"$OUT/embedded-$n.yaml"
done
chmod 600 "$OUT"/embedded-*.yaml
: >"$OUT/nats.log"
for f in single single-nats-url-empty relay-a relay-b; do : >"$OUT/$f.log"; done

# --- machine --------------------------------------------------------------

{
	echo "date:    $(date -u +%FT%TZ)"
	echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (work tree modified)')"
	echo "changed: $(git status --short 2>/dev/null | awk '{print $2}' | tr '\n' ' ')"
	echo "nproc:   $(nproc)"
	echo "cpu:     $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "memory:  $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
	echo "kernel:  $(uname -r)"
	echo "go:      $(go version)"
	echo "nats:    $NATS ($("$NATS" --version 2>&1 | head -1))"
	echo "nofile:  $(ulimit -Sn) soft / $(ulimit -Hn) hard"
	echo "loadavg: $(cat /proc/loadavg)"
	echo "ports:   relay A $P_A, relay B $P_B, nats-server $P_NATS, embedded A $P_EA/$P_RA, B $P_EB/$P_RB"
} | tee "$OUT/machine.txt"

URL_A=http://127.0.0.1:$P_A
URL_B=http://127.0.0.1:$P_B
LOAD=(-api-key "$KEY" -holders 100 -backends 64)

step "ed25519.Verify yardstick"
bench "$OUT/verify.txt" verify

step "a. one relay, no cluster: 100 holders, 64 backends, closed loop, $DURATION"
start_relay single "$OUT/single.yaml" "$P_A"
bench "$OUT/a-single.txt" load -url "$URL_A" "${LOAD[@]}" -pid "$LAST_PID" -duration "$DURATION"
stop_all

start_external() { # relay A and B on a fresh external nats-server
	start nats "$NATS" -a 127.0.0.1 -p "$P_NATS" -n bench-nats -js -sd "$BIN/js"
	NATS_PID=$LAST_PID
	wait_port nats "$NATS_PID" "$P_NATS"
	[[ -z ${PROFILING:-} ]] || PPROF=127.0.0.1:$P_PA
	start_relay relay-a "$OUT/external-a.yaml" "$P_A"
	A_PID=$LAST_PID
	[[ -z ${PROFILING:-} ]] || PPROF=127.0.0.1:$P_PB
	start_relay relay-b "$OUT/external-b.yaml" "$P_B"
	B_PID=$LAST_PID
	PPROF=
}
# profile_window: CPU profiles of relay A and B over the load's window
# (after its 3-s warm-up), in the background.
profile_window() {
	local secs=${DURATION%s} n
	[[ $secs =~ ^[0-9]+$ ]] || { echo "BENCH_PROFILE needs BENCH_DURATION in whole seconds" >&2; return 0; }
	for n in a b; do
		local port=$P_PA
		[[ $n == b ]] && port=$P_PB
		(sleep 3.2 && exec curl -s -o "$OUT/b-relay-$n.pprof" "http://127.0.0.1:$port/debug/pprof/profile?seconds=$((secs - 1))") &
		PIDS+=("$!")
	done
}

step "b. cross-node, external nats-server: holders on B, backends on A, closed loop, $DURATION"
PROFILING=
[[ ${BENCH_PROFILE:-} != 1 ]] || PROFILING=1
start_external
PROFILING=
[[ ${BENCH_PROFILE:-} != 1 ]] || profile_window
bench "$OUT/b-external.txt" load -url "$URL_A" -holder-url "$URL_B" "${LOAD[@]}" -pid "$A_PID" -pids "B=$B_PID,nats=$NATS_PID" -duration "$DURATION"
stop_all

step "b'. cross-node, external nats-server: open loop at $RATE req/s for $RATE_DURATION"
start_external
bench "$OUT/b-external-rate$RATE.txt" load -url "$URL_A" -holder-url "$URL_B" "${LOAD[@]}" -pid "$A_PID" -pids "B=$B_PID,nats=$NATS_PID" -rate "$RATE" -duration "$RATE_DURATION"
stop_all

step "c. cross-node, embedded NATS routed A <-> B: holders on B, backends on A, closed loop, $DURATION"
# A node with routes is ready only once a route is up: both start, then both are awaited.
launch_relay relay-a "$OUT/embedded-a.yaml"
A_PID=$LAST_PID
launch_relay relay-b "$OUT/embedded-b.yaml"
B_PID=$LAST_PID
wait_ready relay-a "$A_PID" "$P_A"
wait_ready relay-b "$B_PID" "$P_B"
bench "$OUT/c-embedded.txt" load -url "$URL_A" -holder-url "$URL_B" "${LOAD[@]}" -pid "$A_PID" -pids "B=$B_PID" -duration "$DURATION"
stop_all

step "d. one relay with cluster.nats_url \"\" (= a), closed loop, $DURATION"
start_relay single-nats-url-empty "$OUT/single-nats-url-empty.yaml" "$P_A"
bench "$OUT/d-single.txt" load -url "$URL_A" "${LOAD[@]}" -pid "$LAST_PID" -duration "$DURATION"
stop_all

step "e. what a subscription costs: $SUBS subscriptions from one client on server 1 of two routed NATS servers"
rm -f "$OUT/subs-ready" "$OUT/subs-server.txt"
start subs-s1 "$BIN/natssubs" server -name server1 -port "$P_S1" -cluster-port "$P_S1R" -route "nats://127.0.0.1:$P_S2R"
S1=$LAST_PID
start subs-s2 "$BIN/natssubs" server -name server2 -port "$P_S2" -cluster-port "$P_S2R" -route "nats://127.0.0.1:$P_S1R"
S2=$LAST_PID
wait_port subs-s1 "$S1" "$P_S1"
wait_port subs-s2 "$S2" "$P_S2"
sleep 2 # the routes
snapshot() { # snapshot LABEL: both servers' subscriptions, live heap and RSS
	: >"$OUT/subs-s1.log" && : >"$OUT/subs-s2.log"
	kill -USR1 "$S1" "$S2"
	local deadline=$((SECONDS + 20))
	until [[ -s $OUT/subs-s1.log && -s $OUT/subs-s2.log ]]; do
		((SECONDS < deadline)) || { echo "step e: no answer to SIGUSR1" >&2; exit 1; }
		sleep 0.1
	done
	sed "s/^/$1 /" "$OUT/subs-s1.log" "$OUT/subs-s2.log" | tee -a "$OUT/subs-server.txt"
}
snapshot before
start subs-client "$BIN/natssubs" client -url "nats://127.0.0.1:$P_S1" -n "$SUBS" -hold 15s -ready "$OUT/subs-ready"
C=$LAST_PID
deadline=$((SECONDS + 60))
until [[ -e $OUT/subs-ready ]]; do
	kill -0 "$C" 2>/dev/null || { echo "step e: the client exited; see $OUT/subs-client.log" >&2; exit 1; }
	((SECONDS < deadline)) || { echo "step e: not subscribed after 60 s" >&2; exit 1; }
	sleep 0.2
done
sleep 3 # interest reaches server 2 over the route
snapshot held
echo "client RSS while holding them: $(awk '/VmRSS/ {print $2}' "/proc/$C/status") KiB"
cat "$OUT/subs-client.log"
stop_all
awk -v n="$SUBS" '
	$1 == "before" { h0[$2] = $8; r0[$2] = $10 }
	$1 == "held"   { printf "%s: +%d subscriptions: live heap +%.0f bytes, RSS +%.0f bytes per subscription (%s)\n", $2, $4 - s0[$2], ($8 - h0[$2]) * 1024 / n, ($10 - r0[$2]) * 1024 / n, ($2 == "server1" ? "the client is here" : "interest learned over the route") }
	$1 == "before" { s0[$2] = $4 }' "$OUT/subs-server.txt" | tee "$OUT/subs.txt"

# --- summary --------------------------------------------------------------

echo
echo "== summary (raw output in $OUT)"
summary() { # summary LABEL FILE
	awk -v label="$1" '
		function num(s) { gsub(/[^0-9.]/, "", s); return s + 0 }
		/^throughput:/                 { tput = $2 }
		/^errors:/                     { errs = $2; sub(/;$/, "", errs) }
		/^latency:/                    { p50 = $3; p99 = $9 }
		/^relay CPU:/                  { a = $3 }
		/^B CPU:/                      { b = $3 }
		/^nats CPU:/                   { n = $3 }
		/^cluster CPU:/                { sum = $3 }
		/^relay CPU \/ Verify:/        { v = $(NF-1) }
		/^machine CPU:/                { busy = $3 }
		END {
			if (sum == "") sum = a
			printf "%-34s %9s req/s  errors %-4s p50 %7s  p99 %7s ms  CPU/req A %6s B %6s nats %6s sum %6s µs  Verify %5s µs  sum/Verify %5.2f  machine %s cores\n",
				label, tput, errs, p50, p99, a, (b == "" ? "-" : b), (n == "" ? "-" : n), sum, v, (v > 0 ? sum / v : 0), busy
		}' "$2"
}
{
	summary "a. single node" "$OUT/a-single.txt"
	summary "b. cross-node, external NATS" "$OUT/b-external.txt"
	summary "b'. cross-node, external, $RATE/s" "$OUT/b-external-rate$RATE.txt"
	summary "c. cross-node, embedded NATS" "$OUT/c-embedded.txt"
	summary "d. single node, nats_url \"\"" "$OUT/d-single.txt"
} | tee "$OUT/summary.txt"
awk '
	{ for (i = 1; i <= NF; i++) if ($i == "sum") s[NR] = $(i + 1) }
	END {
		printf "cross-node CPU (sum) / single-node relay CPU, per request: b/a %.2f  c/a %.2f  b/d %.2f  c/d %.2f  (target <= 2)\n", s[2] / s[1], s[4] / s[1], s[2] / s[5], s[4] / s[5]
	}' "$OUT/summary.txt" | tee -a "$OUT/summary.txt"
echo "loadavg at the end: $(cat /proc/loadavg)"
