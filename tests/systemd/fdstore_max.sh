#!/bin/sh
# 'iommud --fdstore-max' and the generator that writes it into iommud.service
# (docs/operations.md, "Sizing the descriptor store").
# usage: fdstore_max.sh IOMMUD GENERATOR
#   GENERATOR: systemd/iommud-generator.in configured to run the iommud in its directory's
#   sibling fake-sbin/, which each case below writes
set -eu
[ $# -eq 2 ] || { echo "usage: fdstore_max.sh IOMMUD GENERATOR" >&2; exit 2; }
iommud=$1 generator=$2
sbin=$(dirname "$generator")/fake-sbin
work=$(mktemp -d /tmp/iommud-fdstore-max.XXXXXX)
trap 'rm -rf "$work" "$sbin"' EXIT
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

# The record and its next generation, and per lease the files its mappings may use.
config 8 100 7168
expect "max-mappings bounds each lease's files" $((2 + 8 * 100))
config 8 100 50
expect "max-maps bounds them where the daemon maps files" $((2 + 8 * 50))
config 8 100 50 300
expect "max-maps-total bounds all leases' files" $((2 + 300))
# Where no section may hold a lease, only the record is kept.
printf '[daemon]\nbackend = emulated\n[uid 0]\naccess = write\nmax-leases = 0\n' >"$work/iommud.conf"
expect "no lease allowed" 2
# Every stored descriptor is also one of the daemon's: the open-file limit bounds the store.
config 64 100000 100000 1000000
limit=$(ulimit -Hn)
[ "$limit" = unlimited ] || [ "$limit" -gt 4000 ] || fail "the open-file limit $limit is too low"
got=$(sh -c 'ulimit -n 4000 && exec "$@"' sh "$iommud" -c "$work/iommud.conf" --fdstore-max)
[ "$got" = 4000 ] || fail "under an open-file limit of 4000, --fdstore-max printed '$got'"
echo "ok: the open-file limit bounds it: $got"

# The generator: the daemon's number into a drop-in for iommud.service, and nothing at all,
# exit status 0 always, where that cannot be had.
mkdir -p "$sbin"
fake() { printf '#!/bin/sh\n%s\n' "$1" >"$sbin/iommud" && chmod +x "$sbin/iommud"; }
run() { # CASE
	rm -rf "$work/out" && mkdir "$work/out"
	"$generator" "$work/out" "$work/out.early" "$work/out.late" ||
		fail "$1: the generator exited with status $?"
}
dropin=$work/out/iommud.service.d/50-fdstore-max.conf

config 8 100 7168
fake "exec '$iommud' -c '$work/iommud.conf' \"\$@\""
run "the daemon's number"
want=$(slots)
grep -qx "FileDescriptorStoreMax=$want" "$dropin" || fail "no FileDescriptorStoreMax=$want in the drop-in"
grep -qx "Environment=IOMMUD_FDSTORE_MAX=$want" "$dropin" ||
	fail "no Environment=IOMMUD_FDSTORE_MAX=$want in the drop-in"
if command -v systemd-analyze >/dev/null; then
	printf '[Service]\nExecStart=/bin/true\n' >"$work/iommud.service"
	mkdir -p "$work/iommud.service.d" && cp "$dropin" "$work/iommud.service.d/"
	out=$(systemd-analyze verify "$work/iommud.service" 2>&1) || true
	case $out in *FileDescriptorStore* | *IOMMUD_FDSTORE_MAX*) fail "systemd-analyze verify: $out" ;; esac
fi
echo "ok: the generator writes $(tr '\n' ' ' <"$dropin")"

for case in "exit 1" "echo many" "echo" "kill -9 \$\$"; do
	fake "$case"
	run "iommud: $case"
	[ ! -e "$work/out/iommud.service.d" ] || fail "iommud '$case': the generator wrote $(ls -R "$work/out")"
	echo "ok: nothing written where iommud does '$case'"
done
fake "echo 100"
rm -rf "$work/out" && : >"$work/out"
"$generator" "$work/out" || fail "an unwritable directory: the generator exited with status $?"
[ ! -s "$work/out" ] || fail "an unwritable directory: the generator wrote into its place"
echo "ok: nothing written, and status 0, where the directory cannot be written"
