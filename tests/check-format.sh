#!/bin/sh
# Fails when a C file of the project differs from what .clang-format makes of it, and names each
# such file with the command that fixes it. Run by ctest (format_check) and so by CI.
# Usage: check-format.sh SOURCE_DIR
set -eu

top=${1:?usage: check-format.sh SOURCE_DIR}
cd "$top"
if ! command -v clang-format >/dev/null 2>&1; then
	echo "check-format.sh: clang-format not found; install it (./install-deps.sh)" >&2
	exit 1
fi
# The file list comes from git where the tree is a checkout, so untracked scratch files do not
# count; a source tarball without .git is walked instead.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	files=$(git ls-files '*.c' '*.h')
else
	files=$(find . -name '*.[ch]' -not -path './build*' | sed 's|^\./||')
fi
bad=0
for f in $files; do
	[ -f "$f" ] || continue
	if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
		echo "not formatted: $f (fix: clang-format -i $f)"
		bad=$((bad + 1))
	fi
done
if [ "$bad" -ne 0 ]; then
	echo "check-format.sh: $bad file(s) differ from .clang-format" >&2
	exit 1
fi
echo "check-format.sh: every C file matches .clang-format"
