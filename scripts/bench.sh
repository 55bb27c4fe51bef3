#!/usr/bin/env bash
# Reproduces the figures of docs/benchmarks.md: builds the relay and the load
# generator, runs each measurement against a fresh relay on 127.0.0.1, runs
# the testing.B benchmarks and takes CPU and heap profiles. Everything stays
# on loopback and every step is bounded in time. About 7 minutes.
#
#   scripts/bench.sh            # everything
#   scripts/bench.sh quick      # short runs (5 s windows, 2,000 idle connections)
#
# Environment: BENCH_OUT (results, default /tmp/signrelay-bench), BENCH_PORT
# (default 19380), BENCH_DURATION (load window, default 25s), BENCH_IDLE
# (idle connections, default 19000).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${BENCH_OUT:-/tmp/signrelay-bench}
PORT=${BENCH_PORT:-19380}
DURATION=${BENCH_DURATION:-25s}
RATE_DURATION=30s
IDLE_N=${BENCH_IDLE:-19000}
PROFILE_DURATION=15s
BENCHTIME=1s
if [[ "${1:-}" == quick ]]; then
	DURATION=5s RATE_DURATION=5s IDLE_N=2000 PROFILE_DURATION=5s BENCHTIME=200ms
fi
KEY=bench-api-key-0123456789abcdef
URL=http://127.0.0.1:$PORT
mkdir -p "$OUT"
BIN=$OUT/bin
mkdir -p "$BIN"

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
	echo "port $PORT is in use; set BENCH_PORT" >&2
	exit 1
fi

echo "== building into $BIN"
go build -o "$BIN/signrelay" .
go build -o "$BIN/signrelay-bench" ./cmd/signrelay-bench

# The bench configuration: rate limits off, an API key set, quiet logs.
# Load runs keep the default ping interval (the holders answer pings); the
# idle run's connections are read only by a sweep every 5 s, and its relay
# pings every 10 minutes so that the measurement does not depend on it.
# The generator connects its holders from few addresses, faster than one
# public client would: the per-IP cap on connections not yet introduced is
# raised, and the idle run may hold 19,000 connections from 8 addresses
# under an open-file limit of 20,000 (the default caps keep a tenth of it
# back, and 1024 per address).
cat >"$OUT/bench.yaml" <<EOF
listen: 127.0.0.1:$PORT
api_keys: [$KEY]
rate_limits:
  enabled: false
log_level: warn
shutdown_grace: 2s
EOF
cat "$OUT/bench.yaml" - >"$OUT/bench-idle.yaml" <<EOF
http:
  max_connections: 19500
  max_connections_per_ip: 0
websocket:
  ping_interval: 10m
  max_unintroduced_per_ip: 4096
EOF
printf 'websocket:\n  max_unintroduced_per_ip: 4096\n' >>"$OUT/bench.yaml"

{
	echo "date:    $(date -u +%FT%TZ)"
	echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (work tree modified)')"
	echo "nproc:   $(nproc)"
	echo "cpu:     $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "memory:  $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
	echo "kernel:  $(uname -r)"
	echo "go:      $(go version)"
	echo "nofile:  $(ulimit -Sn) soft / $(ulimit -Hn) hard"
	echo "loadavg: $(cat /proc/loadavg)"
} | tee "$OUT/machine.txt"

RELAY_PID=
start_relay() { # start_relay BINARY-AND-ARGS...
	"$@" 2>>"$OUT/relay.log" &
	RELAY_PID=$!
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	echo "relay did not start; see $OUT/relay.log" >&2
	exit 1
}
stop_relay() {
	if [[ -n "$RELAY_PID" ]]; then
		kill -TERM "$RELAY_PID" 2>/dev/null || true
		wait "$RELAY_PID" 2>/dev/null || true
		RELAY_PID=
	fi
}
trap stop_relay EXIT
bench() { timeout 900 "$BIN/signrelay-bench" "$@"; }
step() { echo; echo "== $1 (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"; }

step "ed25519.Verify yardstick"
bench verify | tee "$OUT/verify.txt"

step "1. load: 100 holders, 64 backends, closed loop, $DURATION"
start_relay "$BIN/signrelay" -config "$OUT/bench.yaml"
bench load -url "$URL" -api-key "$KEY" -pid "$RELAY_PID" -holders 100 -backends 64 -duration "$DURATION" | tee "$OUT/load.txt" || echo "!! this run reported errors"
stop_relay

step "1b. the same with net/http as the generator's client, 10 s (client cost comparison)"
start_relay "$BIN/signrelay" -config "$OUT/bench.yaml"
bench load -url "$URL" -api-key "$KEY" -pid "$RELAY_PID" -duration 10s -client nethttp | tee "$OUT/load-nethttp.txt" || echo "!! this run reported errors"
stop_relay

step "2. latency at 1,000 req/s for $RATE_DURATION (open loop)"
start_relay "$BIN/signrelay" -config "$OUT/bench.yaml"
bench load -url "$URL" -api-key "$KEY" -pid "$RELAY_PID" -rate 1000 -duration "$RATE_DURATION" | tee "$OUT/rate1000.txt" || echo "!! this run reported errors"
stop_relay

step "3. $IDLE_N idle introduced connections, then the load run on top of them"
start_relay "$BIN/signrelay" -config "$OUT/bench-idle.yaml"
bench load -url "$URL" -api-key "$KEY" -pid "$RELAY_PID" -idle "$IDLE_N" -sources 8 -duration "$DURATION" | tee "$OUT/idle-load.txt" || echo "!! this run reported errors"
stop_relay

step "4. testing.B benchmarks (-benchmem)"
go test -run '^$' -bench . -benchmem -benchtime "$BENCHTIME" ./protocol ./registry ./signing ./httpapi | tee "$OUT/gobench.txt"

step "5a. CPU profile of the relay under the load run (signrelay-bench relay: the relay's own wiring, profiled)"
start_relay "$BIN/signrelay-bench" relay -config "$OUT/bench.yaml" -cpuprofile "$OUT/relay-cpu.pprof"
bench load -url "$URL" -api-key "$KEY" -pid "$RELAY_PID" -duration "$PROFILE_DURATION" -warmup 1s | tee "$OUT/profile-load.txt" || echo "!! this run reported errors"
stop_relay
go tool pprof -top -nodecount=40 "$BIN/signrelay-bench" "$OUT/relay-cpu.pprof" 2>/dev/null | tee "$OUT/relay-cpu-top.txt"
go tool pprof -top -cum -nodecount=60 "$BIN/signrelay-bench" "$OUT/relay-cpu.pprof" 2>/dev/null >"$OUT/relay-cpu-cum.txt"
{
	echo "share of the relay's CPU profile by what a sample's stack contains (overlapping):"
	for f in 'ed25519.Verify' 'syscall.write' 'syscall.read' 'encoding/json' 'validator' 'DecodeHolderFrame' \
		'DecodeSignBody' 'EncodeSignRequest' 'Ctx\).JSON' 'watchDisconnect' 'log/slog' 'runtime.mallocgc' \
		'gcBgMarkWorker|gcAssist|bgsweep' 'runtime.schedule|runtime.findRunnable' 'SetReadDeadline|SetWriteDeadline'; do
		printf '%-45s %s\n' "$f" "$(go tool pprof -top -focus="$f" "$BIN/signrelay-bench" "$OUT/relay-cpu.pprof" 2>/dev/null |
			grep -o 'accounting for [0-9.]*m\?s, [0-9.]*%' | head -1)"
	done
} | tee "$OUT/relay-cpu-groups.txt"

step "5b. CPU profile of the in-process loopback round trip (go test -cpuprofile; includes the client side)"
go test -run '^$' -bench 'RoundTripLoopback$' -benchmem -benchtime 3s -cpuprofile "$OUT/roundtrip-cpu.pprof" -o "$BIN/httpapi.test" ./httpapi | tee "$OUT/roundtrip-bench.txt"
go tool pprof -top -nodecount=30 "$BIN/httpapi.test" "$OUT/roundtrip-cpu.pprof" 2>/dev/null | tee "$OUT/roundtrip-cpu-top.txt"

step "5c. heap profile of the relay holding $IDLE_N idle connections"
start_relay "$BIN/signrelay-bench" relay -config "$OUT/bench-idle.yaml" -memprofile "$OUT/relay-idle.heap" -memprofilerate 8192
bench idle -url "$URL" -pid "$RELAY_PID" -n "$IDLE_N" -hold 10s >"$OUT/idle-heap.txt" 2>&1 &
IDLE_PID=$!
for _ in $(seq 600); do
	grep -q 'generator RSS per conn' "$OUT/idle-heap.txt" && break
	sleep 0.2
done
kill -USR1 "$RELAY_PID"
wait "$IDLE_PID" || true
cat "$OUT/idle-heap.txt"
stop_relay
grep memstats "$OUT/relay.log" | tail -2
go tool pprof -sample_index=inuse_space -top -nodecount=25 "$BIN/signrelay-bench" "$OUT/relay-idle.heap" 2>/dev/null | tee "$OUT/relay-idle-heap-top.txt"

echo
echo "== done: results in $OUT"
