#!/usr/bin/env bash
# `make demo`: the whole pipeline on this machine, no cluster needed.
#
#   meshd      serves the embedded bookinfo mesh (cmd/meshd/demo: Istio's
#              bookinfo Services, DestinationRules and the reviews 80/20
#              VirtualService, with pods of node "demo" on loopback IPs)
#   mesh-agent for node "demo" subscribes over ADS and programs the eBPF maps,
#              attached to a demo cgroup (never the machine's root cgroup)
#   traffic    tiny HTTP servers stand in for the productpage and details
#              pods; curl, started inside the demo cgroup, dials the service
#              VIPs and the kernel balances it to them.
#
# Runs until Ctrl-C, or DEMO_SECONDS seconds when set. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
[ "$(id -u)" = 0 ] || { echo "make demo needs root: it loads eBPF programs and creates a cgroup" >&2; exit 1; }

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
cgroot=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
[ -n "$cgroot" ] || { echo "no cgroup v2 mount found" >&2; exit 1; }
cg=$cgroot/nodemesh-demo
pins=/sys/fs/bpf/nodemesh-demo
work=$(mktemp -d)
mkdir -p "$cg/clients"
pids=()

cleanup() {
	set +e
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	"$BIN/mesh-agent" --node demo --cgroup "$cg" --pin-dir "$pins" --uninstall >/dev/null 2>&1
	rmdir "$cg/clients" "$cg" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

wait_http() { # URL SECONDS
	for _ in $(seq $(($2 * 10))); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
	echo "timed out waiting for $1" >&2
	return 1
}

echo "== meshd on the embedded bookinfo mesh (logs: $work/meshd.log)"
# ADS over mTLS: meshd's CA issues the agent's certificate for node demo
# (production agents get theirs from SPIRE or a bootstrap token).
"$BIN/meshd" --config cmd/meshd/demo --ca-dir "$work/ca" --bootstrap-agents demo --agent-certs-dir "$work/agents" \
	--xds-addr 127.0.0.1:15010 --debug-addr 127.0.0.1:15014 >"$work/meshd.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:15014/readyz 30

echo "== mesh-agent for node demo (logs: $work/agent.log)"
"$BIN/mesh-agent" --node demo --control-plane 127.0.0.1:15010 --xds-cert-dir "$work/agents/demo" --cgroup "$cg" --pin-dir "$pins" \
	--node-ip 127.0.0.1 --status-addr 127.0.0.1:15020 >"$work/agent.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:15020/readyz 30

echo
echo "== sync status (meshctl proxy-status)"
"$BIN/meshctl" proxy-status --addr 127.0.0.1:15014
echo
echo "== diagnostics (meshctl analyze)"
"$BIN/meshctl" analyze cmd/meshd/demo

echo
echo "== traffic through the kernel's socket load balancer"
failed=0
if command -v python3 >/dev/null; then
	for ipport in 127.0.11.10:9080 127.0.11.11:9080; do
		dir=$work/www/${ipport%%:*}
		mkdir -p "$dir" && echo "hello from pod ${ipport%%:*}" >"$dir/index.html"
		python3 -m http.server --bind "${ipport%%:*}" --directory "$dir" "${ipport##*:}" >/dev/null 2>&1 &
		pids+=($!)
	done
	sleep 1
	for svc in productpage:10.96.0.13 details:10.96.0.10; do
		printf '%-12s VIP %s:9080 -> ' "${svc%%:*}" "${svc##*:}"
		# A shell moved into the demo cgroup execs curl: its socket is the
		# agent's to balance. Outside that cgroup the VIP does not exist.
		bash -c 'echo $$ >"$1/cgroup.procs" && exec curl -sf --max-time 3 "http://$2:9080/"' _ "$cg/clients" "${svc##*:}" ||
			{ echo "(failed)"; failed=1; }
	done
else
	echo "python3 not found: skipping the traffic part (apt-get install python3)"
fi
[ "$failed" = 0 ] || { echo "demo: traffic through the VIPs failed" >&2; exit 1; }

echo
echo "meshd debug: http://127.0.0.1:15014/debug/syncz  agent status: http://127.0.0.1:15020/status"
if [ -n "${DEMO_SECONDS:-}" ]; then
	sleep "$DEMO_SECONDS"
else
	echo "Running; Ctrl-C stops and uninstalls the demo."
	wait
fi
