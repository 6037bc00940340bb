#!/bin/sh
# The whole test suite, as CI runs it: a plain build and a build under AddressSanitizer and
# UndefinedBehaviorSanitizer (LeakSanitizer included), each configured, built and tested with
# ctest; then a clang build with libFuzzer that runs only the fuzz tests (a bounded fuzzing run
# from the seed corpus, and the regression inputs). Build trees: build/, build-sanitize/ and
# build-fuzz/ at the top of the source tree.
#
# The VM tier (tests/vm/README.md) boots the kernels named in IOMMUD_VM_KERNEL (paths separated
# by ':'). Unset, it takes the test kernels of a workplace that keeps them in ../shared/vm beside
# the source tree, if there are any; set to an empty string, the tier is skipped.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc)

if [ -z "${IOMMUD_VM_KERNEL+set}" ]; then
	IOMMUD_VM_KERNEL=
	for kernel in "$top/../shared/vm/bzImage" "$top/../shared/vm/bzImage-7.3" \
		"$top/../shared/vm/debian-6.1/vmlinuz"; do
		[ -f "$kernel" ] || continue
		kernel=$(cd "$(dirname "$kernel")" && pwd)/$(basename "$kernel")
		IOMMUD_VM_KERNEL=${IOMMUD_VM_KERNEL:+$IOMMUD_VM_KERNEL:}$kernel
	done
fi
echo "run-all.sh: VM tier kernels: ${IOMMUD_VM_KERNEL:-none (the tier will be skipped)}"

run_suite() {
	dir=$1
	shift
	cmake -S "$top" -B "$top/$dir" -DIOMMUD_VM_KERNEL="$IOMMUD_VM_KERNEL" "$@"
	cmake --build "$top/$dir" -j"$jobs"
	ctest --test-dir "$top/$dir" --output-on-failure -j"$jobs"
}

run_suite build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIOMMUD_SANITIZE=OFF
run_suite build-sanitize -DCMAKE_BUILD_TYPE=Debug -DIOMMUD_SANITIZE=ON

# Only the fuzz tests here, with no VM tier: the suites above ran everything else, and the
# fuzzing run is bounded in time (tests/fuzz/CMakeLists.txt).
CC=clang cmake -S "$top" -B "$top/build-fuzz" -DIOMMUD_VM_KERNEL= -DCMAKE_BUILD_TYPE=Debug \
	-DIOMMUD_SANITIZE=ON -DIOMMUD_FUZZ=ON
cmake --build "$top/build-fuzz" -j"$jobs"
ctest --test-dir "$top/build-fuzz" --output-on-failure -j"$jobs" -R '^fuzz_'
