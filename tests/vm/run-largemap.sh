#!/bin/bash
# Runs iommud-largemap-bench in the VM tier with guest time counted in instructions
# (-icount shift=0), so that runs on a loaded host compare: one boot on VT-d, the given daemon,
# the bench's own options passed through; prints the bench's output (docs/architecture.md,
# "Large maps on a real kernel").
#   run-largemap.sh BZIMAGE IOMMUD BENCH RESULTS [BENCH-OPTION]...
# BZIMAGE: ../shared/vm/bzImage (6.12) or bzImage-7.3; IOMMUD: the daemon to measure (a file
# named iommud); BENCH: iommud-largemap-bench, the same binary for every daemon compared;
# RESULTS: a folder for the run's logs.
set -euo pipefail

if [ $# -lt 4 ] || [ "${2##*/}" != iommud ]; then
	sed -n '6,9p' "$0" >&2
	exit 2
fi
kernel=$1 daemon=$2 bench=$3 results=$4
shift 4

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/iommud-largemap.XXXXXX")
trap 'rm -rf "$work"' EXIT
sed 's/-accel tcg,thread=single /&-icount shift=0 /' "$here/run-vm.sh" >"$work/run-vm.sh"
grep -q -- '-icount shift=0' "$work/run-vm.sh" || { echo "run-largemap.sh: run-vm.sh's qemu line changed" >&2; exit 1; }
# run-vm.sh runs each test binary without arguments: a script in its place passes them.
{
	echo '#!/bin/sh'
	printf 'exec /tests/iommud-largemap-bench'
	# printf repeats its format for each argument, and runs it once with none: an empty
	# argument the bench would refuse.
	[ $# -eq 0 ] || printf ' %q' "$@"
	echo
} >"$work/largemap"
chmod +x "$work/largemap"
mkdir -p "$results"
bash "$work/run-vm.sh" --kernel "$kernel" --iommu intel --memory 3G --timeout 1800 \
	--results "$results" --support "$daemon" --support "$bench" "$work/largemap" || true
cat "$results/largemap.log"
