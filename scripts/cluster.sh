#!/usr/bin/env bash
# A signrelay cluster of three nodes on loopback, for trying it out (make
# cluster): three relays, each running an embedded NATS server, the three
# servers routed to each other. Nothing else is needed. A key holder on any
# node answers requests made on any other.
#
#   scripts/cluster.sh                    # start; Ctrl-C (or SIGTERM) stops all three
#   scripts/cluster.sh --print-config N   # print node N's configuration (N = 1, 2, 3)
#
# Every node's configuration comes from deploy/node.yaml, the template
# compose.yaml's relays run, filled in by deploy/render.sh with loopback
# values (tests/cluster runs this script; tests/deploy runs the same
# template behind nginx). Configurations, logs, pid files and the embedded
# servers' JetStream directories go to CLUSTER_DIR.
#
# Environment, all optional:
#   CLUSTER_HTTP_PORTS     HTTP ports of node1..3      (default "8081 8082 8083")
#   CLUSTER_NATS_PORTS     embedded NATS client ports  (default "4231 4232 4233")
#   CLUSTER_ROUTE_PORTS    embedded NATS route ports   (default "6231 6232 6233")
#   CLUSTER_API_KEY        the API key for POST /sign  (default: generated, printed once)
#   CLUSTER_NATS_PASSWORD  what the embedded NATS servers require of clients
#                          and routes                  (default: generated)
#   CLUSTER_DIR            configs, logs, pid files    (default: a new directory under /tmp)
#   CLUSTER_BIN            the relay binary to run     (default: go build into CLUSTER_DIR)
#   CLUSTER_TEMPLATE       the node template           (default: deploy/node.yaml)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TEMPLATE=${CLUSTER_TEMPLATE:-$ROOT/deploy/node.yaml}
read -r -a HTTP_PORTS <<<"${CLUSTER_HTTP_PORTS:-8081 8082 8083}"
read -r -a NATS_PORTS <<<"${CLUSTER_NATS_PORTS:-4231 4232 4233}"
read -r -a ROUTE_PORTS <<<"${CLUSTER_ROUTE_PORTS:-6231 6232 6233}"

die() { echo "cluster.sh: $*" >&2; exit 1; }

for var in HTTP_PORTS NATS_PORTS ROUTE_PORTS; do
	declare -n ports=$var
	((${#ports[@]} == 3)) || die "CLUSTER_$var: want three ports, got '${ports[*]}'"
	for p in "${ports[@]}"; do
		[[ $p =~ ^[0-9]+$ ]] && ((p > 0 && p < 65536)) || die "CLUSTER_$var: '$p' is not a port"
	done
	unset -n ports
done
[[ -r $TEMPLATE ]] || die "no template at $TEMPLATE"

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

API_KEY=${CLUSTER_API_KEY:-}
GENERATED_KEY=
if [[ -z $API_KEY ]]; then
	API_KEY=sr_$(random_hex 24)
	GENERATED_KEY=1
fi
# The key goes into YAML between double quotes: keep to characters that
# need no escaping there.
[[ $API_KEY =~ ^[A-Za-z0-9._~+/=-]{16,256}$ ]] ||
	die "CLUSTER_API_KEY: 16 to 256 characters of letters, digits and ._~+/=-"
NATS_PASSWORD=${CLUSTER_NATS_PASSWORD:-$(random_hex 24)}
[[ $NATS_PASSWORD =~ ^[A-Za-z0-9._~+/=-]{16,256}$ ]] ||
	die "CLUSTER_NATS_PASSWORD: 16 to 256 characters of letters, digits and ._~+/=-"

# render N: node N's configuration, deploy/render.sh's output for the
# template with loopback values: each node's page is its own origin, and
# nothing but the local machine is a trusted proxy.
render() {
	local i=$1 routes="" p tmp
	for p in "${ROUTE_PORTS[@]}"; do
		routes+="${routes:+, }nats://127.0.0.1:$p"
	done
	tmp=$(mktemp -d)
	HTTP_LISTEN=127.0.0.1:${HTTP_PORTS[i - 1]} API_KEY=$API_KEY \
		PUBLIC_ORIGIN=http://127.0.0.1:${HTTP_PORTS[i - 1]} TRUSTED_PROXIES=127.0.0.1 \
		NATS_LISTEN=127.0.0.1:${NATS_PORTS[i - 1]} ROUTE_LISTEN=127.0.0.1:${ROUTE_PORTS[i - 1]} \
		ROUTES=$routes NATS_PASSWORD=$NATS_PASSWORD STORE_DIR=${DIR:-${CLUSTER_DIR:-/tmp/signrelay-cluster}}/js-node$i \
		sh "$ROOT/deploy/render.sh" "$TEMPLATE" "$tmp" "node$i" >/dev/null || { rm -rf "$tmp"; die "cannot render node$i"; }
	cat "$tmp/node$i.yaml"
	rm -rf "$tmp"
}

if [[ ${1:-} == --print-config ]]; then
	[[ ${2:-} =~ ^[123]$ ]] || die "usage: $0 --print-config 1|2|3"
	render "$2"
	exit 0
fi
[[ $# -eq 0 ]] || die "usage: $0 [--print-config 1|2|3]"

in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for var in HTTP_PORTS NATS_PORTS ROUTE_PORTS; do
	declare -n ports=$var
	for p in "${ports[@]}"; do
		! in_use "$p" || die "port $p is in use (set CLUSTER_$var)"
	done
	unset -n ports
done

DIR=${CLUSTER_DIR:-}
if [[ -z $DIR ]]; then
	DIR=$(mktemp -d /tmp/signrelay-cluster.XXXXXX)
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

BIN=${CLUSTER_BIN:-}
if [[ -z $BIN ]]; then
	echo "building the relay into $DIR/signrelay"
	(cd "$ROOT" && go build -o "$DIR/signrelay" .)
	BIN=$DIR/signrelay
fi
[[ -x $BIN ]] || die "CLUSTER_BIN: $BIN is not an executable"

for i in 1 2 3; do
	(umask 077 && render "$i" >"$DIR/node$i.yaml")
done

# http_status PORT PATH prints the status code of GET PATH, or nothing.
http_status() {
	(
		exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
		printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
		IFS=' ' read -r -t 2 _ code _ <&3 || true
		printf '%s' "${code:-}"
	) 2>/dev/null
}

PIDS=()
STOPPING=
# stop_all: SIGTERM to every node still running, SIGKILL to any that has
# not stopped 20 s later. Once.
stop_all() {
	[[ -z $STOPPING ]] || return 0
	STOPPING=1
	((${#PIDS[@]} > 0)) || return 0
	echo
	echo "stopping the three nodes (logs stay in $DIR)"
	kill -TERM "${PIDS[@]}" 2>/dev/null || true
	# A watchdog, in its own process group (set -m), for nodes that hang.
	(
		sleep 20
		echo "a node did not stop within 20 s; killing it" >&2
		kill -KILL "${PIDS[@]}" 2>/dev/null
	) &
	local watchdog=$!
	wait "${PIDS[@]}" 2>/dev/null || true
	kill -TERM -- "-$watchdog" 2>/dev/null || true
	wait "$watchdog" 2>/dev/null || true
	rm -f "$DIR"/node[123].pid
	echo "stopped"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

# Job control puts every node in a process group of its own, so that the
# terminal's Ctrl-C reaches this script alone, which stops each node once
# (a relay that gets a second signal exits at once, without its grace).
set -m
for i in 1 2 3; do
	env -u SIGNRELAY_LISTEN -u SIGNRELAY_API_KEYS "$BIN" -config "$DIR/node$i.yaml" >"$DIR/node$i.log" 2>&1 &
	PIDS+=($!)
	echo "$!" >"$DIR/node$i.pid"
done

# show_exit I: a node exited; say so with the end of its log, and fail.
show_exit() {
	echo "node$1 exited; the end of $DIR/node$1.log:" >&2
	tail -n 20 "$DIR/node$1.log" >&2
	exit 1
}

deadline=$((SECONDS + 30))
for i in 1 2 3; do
	until [[ $(http_status "${HTTP_PORTS[i - 1]}" /readyz) == 200 ]]; do
		kill -0 "${PIDS[i - 1]}" 2>/dev/null || show_exit "$i"
		((SECONDS < deadline)) || { echo "node$i: GET /readyz is not 200 after 30 s" >&2; show_exit "$i"; }
		sleep 0.1
	done
done

H1=${HTTP_PORTS[0]} H2=${HTTP_PORTS[1]} H3=${HTTP_PORTS[2]}
cat <<EOF

signrelay: three nodes on loopback, joined by their embedded NATS servers
  node1  http://127.0.0.1:$H1/  nats 127.0.0.1:${NATS_PORTS[0]}  routes 127.0.0.1:${ROUTE_PORTS[0]}  (pid ${PIDS[0]})
  node2  http://127.0.0.1:$H2/  nats 127.0.0.1:${NATS_PORTS[1]}  routes 127.0.0.1:${ROUTE_PORTS[1]}  (pid ${PIDS[1]})
  node3  http://127.0.0.1:$H3/  nats 127.0.0.1:${NATS_PORTS[2]}  routes 127.0.0.1:${ROUTE_PORTS[2]}  (pid ${PIDS[2]})
  configurations and logs: $DIR (nodeN.yaml, nodeN.log)

API key$([[ -n $GENERATED_KEY ]] && echo " (made for this run)"): $API_KEY

Try it:
  1. Open http://127.0.0.1:$H2/ in a browser: the key holder page, on node2.
     Copy the public key it shows under "Your key".
  2. Ask node1 for a signature; it reaches the page through NATS:

       KEY=$API_KEY
       PUB=...   # the key from the page
       curl -s -X POST http://127.0.0.1:$H1/sign -H "Authorization: Bearer \$KEY" \\
         -H 'Content-Type: application/json' \\
         -d "{\"public_key\":\"\$PUB\",\"message\":\"\$(printf 'hello from node1' | base64)\"}"

  3. Press "Approve and sign" on the page: curl prints the signature.
     Open the page on http://127.0.0.1:$H3/ as well (same browser, same key):
     both show the request, the first answer wins, the other page is told.

Ctrl-C stops all three nodes.
EOF

# Until a signal, or a node that exits by itself.
while :; do
	wait -n "${PIDS[@]}" 2>/dev/null || true
	[[ -z $STOPPING ]] || exit 0
	for i in 1 2 3; do
		kill -0 "${PIDS[i - 1]}" 2>/dev/null || show_exit "$i"
	done
done
