#!/bin/sh
# 'iommud --fdstore-max': the descriptor store the configuration's quotas may need
# (docs/operations.md, "Sizing the descriptor store").
# usage: fdstore_max.sh IOMMUD OPEN_FILES
#   OPEN_FILES: the LimitNOFILE= of the installed unit (IOMMUD_OPEN_FILES)
set -eu
[ $# -eq 2 ] || { echo "usage: fdstore_max.sh IOMMUD OPEN_FILES" >&2; exit 2; }
iommud=$1 open_files=$2
work=$(mktemp -d /tmp/iommud-fdstore-max.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# A configuration on the emulated backend (no kernel descriptors stored, files mapped by the
# daemon): LEASES leases in all, each tenant's MAPPINGS mappings and MAPS maps.
config() { # LEASES MAPPINGS MAPS [MAPS_TOTAL]
	{
		printf '[daemon]\nbackend = emulated\nmax-leases-total = %s\n' "$1"
		[ $# -lt 4 ] || printf 'max-maps-total = %s\n' "$4"
		printf '[uid 0]\naccess = write\ndevices = emu*\nmax-mappings = %s\nmax-maps = %s\n' \
			"$2" "$3"
		printf '[uid 65534]\naccess = read\n'
	} >"$work/iommud.conf"
}
slots() { "$iommud" -c "$work/iommud.conf" --fdstore-max; }
expect() { # WHAT EXPECTED
	got=$(slots) || fail "$1: iommud --fdstore-max failed"
	[ "$got" = "$2" ] || fail "$1: iommud --fdstore-max printed '$got', not $2"
	echo "ok: $1: $got"
}

# The record and its next generation, and per lease the files its mappings may use, twice:
# as many again for files no mapping uses any more, until the next snapshot drops them.
config 8 100 7168
expect "max-mappings bounds each lease's files" $((2 + 2 * 8 * 100))
config 8 100 50
expect "max-maps bounds them where the daemon maps files" $((2 + 2 * 8 * 50))
config 8 100 50 300
expect "max-maps-total bounds all leases' files" $((2 + 2 * 300))
# Where no section may hold a lease, only the record is kept.
printf '[daemon]\nbackend = emulated\n[uid 0]\naccess = write\nmax-leases = 0\n' >"$work/iommud.conf"
expect "no lease allowed" 2
# Computed under the unit's open-file limit, whatever the limit of the shell that asks: a
# limit of 4000 would cap the store (each stored descriptor is also one of the daemon's) and
# lower the leases' ceiling.
config 64 100 100 20000
want=$((2 + 2 * 64 * 100))
[ "$want" -le "$open_files" ] || fail "the unit's open-file limit $open_files is below $want"
expect "under the unit's open-file limit" "$want"
got=$(sh -c 'ulimit -n 4000 && exec "$@"' sh "$iommud" -c "$work/iommud.conf" --fdstore-max)
[ "$got" = "$want" ] || fail "under a shell's open-file limit of 4000, --fdstore-max printed '$got', not $want"
echo "ok: not the asking shell's open-file limit: $got"
