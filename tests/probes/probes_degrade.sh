#!/bin/sh
# The daemon on a kernel that refuses some probe tiers (this host refuses fentry and kprobes)
# starts anyway, logs the tier it reached and one line for each thing it could not attach, and
# serves; forced off, it says so in one line; a wrong tier name is a usage error, and a wrong
# probe-driver-latency value a configuration error.
# Usage: probes_degrade.sh IOMMUD IOMMUCTL
set -eu

iommud=${1:?usage: probes_degrade.sh IOMMUD IOMMUCTL}
iommuctl=${2:?usage: probes_degrade.sh IOMMUD IOMMUCTL}
if [ "$(id -u)" -ne 0 ]; then
	echo "SKIP: loading BPF programs needs root"
	exit 77
fi
dir=$(mktemp -d)
pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT

fail() {
	echo "FAIL: $*"
	echo "--- daemon log:"
	cat "$dir/log"
	exit 1
}

# Starts the daemon with extra options, waits for it to be ready, lists its devices, stops it.
run_daemon() {
	: >"$dir/log"
	"$iommud" --config /dev/null --socket "$dir/sock" --backend emulated "$@" 2>"$dir/log" &
	pid=$!
	i=0
	until grep -q "ready" "$dir/log"; do
		i=$((i + 1))
		[ "$i" -lt 100 ] || fail "the daemon did not get ready in 10 s"
		kill -0 "$pid" 2>/dev/null || fail "the daemon exited"
		sleep 0.1
	done
	"$iommuctl" --socket "$dir/sock" devices >"$dir/devices" || fail "iommuctl devices failed"
	grep -q emu0 "$dir/devices" || fail "the daemon did not list its device"
	kill "$pid"
	wait "$pid" || fail "the daemon did not stop cleanly"
	pid=
}

run_daemon
grep -q "map path probes: tier [a-z]*, in-process timing" "$dir/log" ||
	fail "no line says the probes' tier"
tier=$(sed -n 's/.*map path probes: tier \([a-z]*\).*/\1/p' "$dir/log")
echo "reached tier $tier"
if [ "$tier" != fentry ]; then
	grep -q "probe not attached: fentry tier: " "$dir/log" ||
		fail "below fentry, but nothing says why fentry did not attach"
fi
grep "probe not attached" "$dir/log" || true

run_daemon --probe-tier off
[ "$(grep -c "probe not attached" "$dir/log")" -eq 1 ] ||
	fail "forced off, the daemon should say so in one line"
grep -q "map path probes: tier off" "$dir/log" || fail "forced off, the tier is not off"

if "$iommud" --probe-tier fast --socket "$dir/sock2" 2>"$dir/log"; then
	fail "--probe-tier fast was accepted"
fi
grep -q "probe-tier must be off, tracepoint, kprobe or fentry, not 'fast'" "$dir/log" ||
	fail "--probe-tier fast: the message does not list the choices"
# probe-driver-latency: yes or no; anything else names the key and its choices.
printf '[daemon]\nprobe-driver-latency = sometimes\n' >"$dir/bad.conf"
if "$iommud" --config "$dir/bad.conf" --socket "$dir/sock2" 2>"$dir/log"; then
	fail "probe-driver-latency = sometimes was accepted"
fi
grep -q "probe-driver-latency must be yes or no, not 'sometimes'" "$dir/log" ||
	fail "probe-driver-latency = sometimes: the message does not say what is wrong"
echo PASS
