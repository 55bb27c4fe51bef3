#!/bin/sh
# Render deploy/node.yaml for each node: render.sh TEMPLATE OUTDIR NODE...
# writes OUTDIR/NODE.yaml, the template with every ${FIELD} replaced by the
# environment variable of that name and node_id set to NODE. POSIX sh and
# sed only, so that it runs in busybox (compose.yaml's relay-config
# service) and in tests/deploy alike.
#
# Fields (all required, non-empty): HTTP_LISTEN API_KEY PUBLIC_ORIGIN
# TRUSTED_PROXIES NATS_LISTEN ROUTE_LISTEN ROUTES NATS_PASSWORD STORE_DIR;
# NODE_ID comes from the arguments. Values may hold letters, digits,
# spaces and . _ : / , @ + = ~ - (nothing that needs YAML or sed quoting).
# OWNER=uid:gid, if set, is given the files (mode 0600).
set -eu
[ $# -ge 3 ] || { echo "usage: render.sh TEMPLATE OUTDIR NODE..." >&2; exit 2; }
template=$1
out=$2
shift 2
[ -r "$template" ] || { echo "render.sh: cannot read $template" >&2; exit 1; }

fields="HTTP_LISTEN API_KEY PUBLIC_ORIGIN TRUSTED_PROXIES NATS_LISTEN ROUTE_LISTEN ROUTES NATS_PASSWORD STORE_DIR"

# check NAME VALUE: fail unless VALUE is non-empty and of the safe characters.
check() {
	[ -n "$2" ] || { echo "render.sh: $1 is not set" >&2; exit 1; }
	rest=$(printf '%s' "$2" | tr -d 'A-Za-z0-9 ._:/,@+=~-')
	[ -z "$rest" ] || { echo "render.sh: $1 has characters render.sh does not allow: $rest" >&2; exit 1; }
}

script=
for f in $fields; do
	eval "v=\${$f-}"
	check "$f" "$v"
	script="$script
s|\\\${$f}|$v|g"
done

umask 077
mkdir -p "$out"
for node in "$@"; do
	check NODE_ID "$node"
	text=$(sed -e "$script
s|\\\${NODE_ID}|$node|g" "$template")
	case $text in
	*'${'*)
		echo "render.sh: $template has a field render.sh does not fill:" >&2
		printf '%s\n' "$text" | grep -F '${' >&2
		exit 1
		;;
	esac
	printf '%s\n' "$text" >"$out/$node.yaml"
	if [ -n "${OWNER-}" ]; then
		chown "$OWNER" "$out/$node.yaml"
	fi
	echo "render.sh: wrote $out/$node.yaml"
done
