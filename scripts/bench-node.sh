#!/usr/bin/env bash
# Issue 11's target 3 in docs/benchmarks.md: this tree's relay against the
# Node.js `ws` relay of scripts/node-relay.mjs, the same load generator
# against each (100 holders, 64 backends, closed loop, 32-byte messages,
# rate limits off), alternated ROUNDS times (default 3) on fresh processes.
# On 127.0.0.1 only; about 2 minutes with D=10s. Needs `npm ci` (for ws).
#
#   scripts/bench-node.sh          # D=10s windows, ROUNDS=3
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/signrelay-bench-node.XXXXXX)
(cd "$ROOT" && go build -o "$W/relay" . && go build -o "$W/bench" ./cmd/signrelay-bench)
[ -d "$ROOT/node_modules/ws" ] || (cd "$ROOT" && npm ci --silent)
echo "results in $W"
PORT=19590; KEY=bench-api-key-0123456789abcdef; URL=http://127.0.0.1:$PORT
D=${D:-10s}; ROUNDS=${ROUNDS:-3}
cat >"$W/relay.yaml" <<EOC
listen: 127.0.0.1:$PORT
api_keys: [$KEY]
rate_limits: {enabled: false}
log_level: warn
shutdown_grace: 2s
websocket: {max_unintroduced_per_ip: 4096}
EOC

run() { # name, command...
	local name=$1; shift
	"$@" >"$W/$name.log" 2>&1 &
	local pid=$!
	for _ in $(seq 100); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.1; done
	"$W/bench" load -url "$URL" -api-key "$KEY" -pid "$pid" -holders 100 -backends 64 -duration "$D" >"$W/$name.txt" 2>&1 || echo "!! $name reported errors"
	kill "$pid"; wait "$pid" 2>/dev/null || true
	printf '%-8s %s | %s\n' "$name" "$(grep '^throughput' "$W/$name.txt")" "$(grep '^relay CPU:' "$W/$name.txt")"
}
for i in $(seq "$ROUNDS"); do
	run "go-$i" "$W/relay" -config "$W/relay.yaml"
	run "node-$i" node "$ROOT/scripts/node-relay.mjs" "127.0.0.1:$PORT" "$KEY"
done
awk '/^throughput/ { split(FILENAME, p, "/"); n = p[length(p)]; v = $2; if (n ~ /^go/) { g += v; gn++ } else { s += v; sn++ } }
	END { printf "throughput, mean: go %.1f req/s, node %.1f req/s: %.2f x (target >= 3)\n", g / gn, s / sn, (g / gn) / (s / sn) }' "$W"/*.txt
