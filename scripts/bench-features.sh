#!/usr/bin/env bash
# The figures of "Request resources, metrics and the audit log" in
# docs/benchmarks.md: the synchronous single-node round trip of an older
# relay (BASE, default 5bf6d2f: before request resources, metrics and the
# audit log) against this tree's, alternated three times, then this tree's
# with the audit log under each fsync policy and with log_level info. On
# 127.0.0.1 only; about 3 minutes.
#
#   scripts/bench-features.sh          # D=12s windows; BASE=<commit> to compare another
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/signrelay-bench-features.XXXXXX)
BASE=${BASE:-5bf6d2f}
git -C "$ROOT" worktree add -q "$W/base" "$BASE"
trap 'git -C "$ROOT" worktree remove --force "$W/base" 2>/dev/null || true' EXIT
(cd "$W/base" && go build -o "$W/relay-base" .)
(cd "$ROOT" && go build -o "$W/relay-head" . && go build -o "$W/bench" ./cmd/signrelay-bench)
cd "$W"
echo "results in $W"
PORT=19580; KEY=bench-api-key-0123456789abcdef; URL=http://127.0.0.1:$PORT
D=${D:-12s}
base() { cat <<EOC
listen: 127.0.0.1:$PORT
api_keys: [$KEY]
rate_limits: {enabled: false}
log_level: ${LEVEL:-warn}
shutdown_grace: 2s
websocket: {max_unintroduced_per_ip: 4096}
EOC
}
run() { # name binary extra-yaml
	local name=$1 bin=$2 extra=${3:-}
	{ base; printf '%b' "$extra"; } > cfg-$name.yaml
	$bin -config cfg-$name.yaml 2>relay-$name.log & local pid=$!
	for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
	timeout 300 ./bench load -url $URL -api-key $KEY -pid $pid -holders 100 -backends 64 -duration $D > out-$name.txt 2>&1 || echo "!! $name errors"
	kill -TERM $pid; wait $pid 2>/dev/null || true
	printf '%-22s %s | %s | %s\n' "$name" "$(grep '^throughput' out-$name.txt | sed 's/ *throughput: *//')" "$(grep '^relay CPU:' out-$name.txt | sed 's/relay CPU: *//; s/;.*//')" "$(grep '^relay CPU / Verify' out-$name.txt | sed 's/.*: *//; s/ (.*//')"
}
echo "loadavg $(cat /proc/loadavg)"
for round in 1 2 3; do
	run base-$round ./relay-base
	run head-$round ./relay-head
done
run head-audit-always ./relay-head "audit: {path: $W/audit-always.log, fsync: always}\n"
run head-audit-interval ./relay-head "audit: {path: $W/audit-interval.log, fsync: interval}\n"
run head-audit-never ./relay-head "audit: {path: $W/audit-never.log, fsync: never}\n"
LEVEL=info run head-log-info ./relay-head
rm -f "$W"/audit-*.log
echo "loadavg $(cat /proc/loadavg)"
