#!/bin/sh
# One part of the nested proof as its own ctest result: the checks whose names start with WHAT
# in the console log that run-nested.sh left. 0 when each passed, 1 when one failed or none ran
# (the proof stopped before them), 77 when the proof was skipped (no test bed here).
# usage: nested-result.sh CONSOLE_LOG WHAT
set -eu
[ $# -eq 2 ] || { echo "usage: $0 CONSOLE_LOG WHAT" >&2; exit 2; }
log=$1 what=$2

if [ ! -f "$log" ]; then
	echo "nested-result.sh: no $log: vm_nested_qemu did not boot L1 (skipped or failed; its output says why)"
	exit 77
fi
lines=$(grep -E "^nested: (PASS|FAIL) $what" "$log" || true)
if [ -z "$lines" ]; then
	echo "nested-result.sh: no check named '$what...' ran in $log: the proof stopped before it" >&2
	exit 1
fi
echo "$lines"
! echo "$lines" | grep -q '^nested: FAIL'
