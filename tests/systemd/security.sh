#!/bin/sh
# The exposure systemd-analyze security gives the installed units, printed for the CI log, and
# a failure above the limit (docs/operations.md, "Hardening"). The units are the ones
# 'cmake --install' writes, installed here into a scratch DESTDIR.
# usage: security.sh BUILD_DIR UNIT_DIR LIMIT UNIT...
#   UNIT_DIR: where the units land under the prefix (/usr/local/lib/systemd/system)
set -eu
[ $# -ge 4 ] || { echo "usage: security.sh BUILD_DIR UNIT_DIR LIMIT UNIT..." >&2; exit 2; }
build=$1 unit_dir=$2 limit=$3
shift 3
if ! systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
	echo "systemd-analyze has no 'security --offline' (systemd 250 or later): skipped"
	exit 77
fi
dest=$(mktemp -d /tmp/iommud-security.XXXXXX)
trap 'rm -rf "$dest"' EXIT
DESTDIR=$dest cmake --install "$build" >/dev/null
failed=0
for unit in "$@"; do
	path=$dest$unit_dir/$unit
	[ -f "$path" ] || { echo "FAIL: cmake --install wrote no $unit_dir/$unit"; exit 1; }
	out=$(systemd-analyze security --offline=true --no-pager "$path" 2>&1) || true
	# Only the checks that cost something, then the total.
	printf '%s\n' "$out" | grep '✗' || true
	score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
	if [ -z "$score" ]; then
		printf '%s\n' "$out"
		echo "FAIL: systemd-analyze printed no exposure level for $unit"
		exit 1
	fi
	if awk -v s="$score" -v l="$limit" 'BEGIN { exit !(s > l) }'; then
		echo "FAIL: $unit: exposure $score, above $limit"
		failed=1
	else
		echo "$unit: exposure $score (limit $limit)"
	fi
done
exit $failed
