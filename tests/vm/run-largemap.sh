#!/bin/bash
# Runs iommud-largemap-bench in the VM tier with guest time counted in instructions
# (-icount shift=0), so that runs on a loaded host compare: one boot, the given daemon, the
# bench's own options passed through. Prints the bench's output (docs/architecture.md,
# "Large maps on a real kernel").
set -euo pipefail

prog=run-largemap.sh

usage() {
	cat >&2 <<EOF
usage: $prog --kernel BZIMAGE --daemon IOMMUD --bench BENCH --results DIR [-- BENCH-OPTION...]
  --kernel BZIMAGE  guest kernel (../shared/vm/bzImage for 6.12, bzImage-7.3 for 7.3)
  --daemon IOMMUD   the daemon binary to measure (a file named iommud)
  --bench BENCH     iommud-largemap-bench, the same binary for every daemon compared
  --results DIR     receives the run's logs; the bench's output is printed as well
EOF
	exit 2
}

kernel= daemon= bench= results=
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) [ $# -ge 2 ] || usage; kernel=$2; shift 2 ;;
	--daemon) [ $# -ge 2 ] || usage; daemon=$2; shift 2 ;;
	--bench) [ $# -ge 2 ] || usage; bench=$2; shift 2 ;;
	--results) [ $# -ge 2 ] || usage; results=$2; shift 2 ;;
	--) shift; break ;;
	*) usage ;;
	esac
done
[ -n "$kernel" ] && [ -n "$daemon" ] && [ -n "$bench" ] && [ -n "$results" ] || usage
[ "${daemon##*/}" = iommud ] || { echo "$prog: the daemon must be a file named iommud" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/iommud-largemap.XXXXXX")
trap 'rm -rf "$work"' EXIT
sed 's/-accel tcg,thread=single /&-icount shift=0 /' "$here/run-vm.sh" >"$work/run-vm.sh"
grep -q -- '-icount shift=0' "$work/run-vm.sh" || { echo "$prog: run-vm.sh's qemu line changed" >&2; exit 1; }
# run-vm.sh runs each test binary without arguments: a script in its place passes them.
{
	echo '#!/bin/sh'
	printf 'exec /tests/iommud-largemap-bench'
	printf ' %q' "$@"
	echo
} >"$work/largemap"
chmod +x "$work/largemap"
mkdir -p "$results"
bash "$work/run-vm.sh" --kernel "$kernel" --iommu intel --memory 3G --timeout 1800 \
	--results "$results" --support "$daemon" --support "$bench" "$work/largemap" || true
cat "$results/largemap.log"
