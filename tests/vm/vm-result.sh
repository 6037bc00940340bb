#!/bin/sh
# Turns one result left by run-vm.sh into an exit status for ctest: 0 PASS, 77 SKIP (for
# SKIP_RETURN_CODE 77), 1 FAIL. The test's console output goes to stdout, so ctest shows it.
set -eu

if [ $# -ne 2 ]; then
	echo "usage: vm-result.sh DIR NAME" >&2
	exit 2
fi
dir=$1
name=$2

[ ! -f "$dir/$name.log" ] || cat "$dir/$name.log"
if [ ! -f "$dir/$name.result" ]; then
	echo "vm-result.sh: no result for $name in $dir: run-vm.sh did not run it (is $name among" \
		"its TESTBINs, and did the boot test of this kernel and IOMMU run first?)" >&2
	exit 1
fi
result=$(cat "$dir/$name.result")
case $result in
PASS) exit 0 ;;
SKIP) exit 77 ;;
FAIL) exit 1 ;;
*)
	echo "vm-result.sh: $dir/$name.result holds '$result', not PASS, FAIL or SKIP" >&2
	exit 1
	;;
esac
