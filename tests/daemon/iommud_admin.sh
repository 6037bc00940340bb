#!/bin/sh
# iommud as an administrator runs it: the exit statuses its --help gives (2 for a bad option or
# option value, 1 for a bad configuration file), and a warning about GetStats logged when the
# number of entries it leaves out changes, not at every call.
# usage: iommud_admin.sh IOMMUD IOMMUCTL
set -u
iommud=$1
iommuctl=$2
dir=$(mktemp -d /tmp/iommud-admin.XXXXXX)
pid=
failures=0
cleanup() {
	[ -z "$pid" ] || kill "$pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

# status WANT PATTERN ARGS...: runs iommud --check-config with ARGS, checks its exit status and
# that its standard error matches the shell pattern.
status() {
	want=$1
	pattern=$2
	shift 2
	err=$("$iommud" --check-config --config "$dir/good.conf" "$@" 2>&1 >/dev/null)
	got=$?
	echo "\$ iommud $* -> $got"
	[ "$got" -eq "$want" ] || fail "iommud $*: exit status $got, expected $want: $err"
	# shellcheck disable=SC2254 # the pattern is meant to be one
	case $err in $pattern) ;; *) fail "iommud $*: message does not match '$pattern': $err" ;; esac
}

printf '[uid 0]\naccess = write\n' >"$dir/good.conf"
printf '[daemon]\nbackend = floppy\n' >"$dir/bad.conf"
status 0 '' --backend emulated
status 2 "*--backend must be*not 'floppy'*--help*" --backend floppy
status 2 "*--log-level must be*not 'loud'*--help*" --log-level loud
status 2 "*--probe-tier must be*not 'uprobe'*--help*" --probe-tier uprobe
status 2 '*--help*' --no-such-option
status 2 '*--help*' unexpected-operand
status 1 "*bad.conf:2: backend must be*not 'floppy'*" --config "$dir/bad.conf"

# Devices enough that GetStats cannot list them all in one packet: long names, so that a few
# hundred do (a line holds three; inih reads up to 200 bytes of one).
long=abcdefghijklmnopqrstuvwxyzabcdefghijklmn
{
	echo '[iommu]'
	for i in $(seq 1000 1399); do
		echo "devices = a-$long-$i b-$long-$i c-$long-$i"
	done
} >"$dir/topology.ini"
"$iommud" --backend emulated --topology "$dir/topology.ini" --config "$dir/good.conf" \
	--socket "$dir/iommud.sock" --log-level notice 2>"$dir/log" &
pid=$!
for _ in $(seq 600); do
	[ -S "$dir/iommud.sock" ] && break
	sleep 0.1
done
# The reply's own figures grow over the first calls (GetStats counts itself), which may move
# the number left out a few times; after that the warning must stay quiet.
calls=10
for _ in $(seq $calls); do
	"$iommuctl" --socket "$dir/iommud.sock" stats >/dev/null ||
		fail "iommuctl stats failed"
done
kill "$pid"
wait "$pid"
pid=
warnings=$(grep -c 'entries left out' "$dir/log")
[ "$warnings" -ge 1 ] && [ "$warnings" -le $((calls / 2)) ] ||
	fail "the left-out warning came $warnings times for $calls GetStats: $(cat "$dir/log")"

[ "$failures" -eq 0 ] || { echo "$failures failures"; exit 1; }
echo "iommud: all checks passed"
