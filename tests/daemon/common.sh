# shellcheck shell=sh
# What the daemon's shell tests share: a scratch directory ($dir) removed at exit with the daemon
# the test started ($pid) stopped, failures counted, and checks of a command's exit status and
# output. A test sources it, then calls begin with its name.

cleanup() {
	[ -z "$pid" ] || kill "$pid" 2>/dev/null
	rm -rf "$dir"
}

begin() {
	test_name=$1
	dir=$(mktemp -d "/tmp/$test_name.XXXXXX")
	pid=
	failures=0
	last=
	trap cleanup EXIT
}

fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

# check STATUS PATTERN COMMAND...: runs the command, checks its exit status and that its output
# (stdout and stderr) matches the shell pattern; leaves the output in $last.
check() {
	want=$1
	pattern=$2
	shift 2
	last=$("$@" 2>&1)
	got=$?
	echo "\$ $* -> $got"
	[ "$got" -eq "$want" ] || fail "$*: exit status $got, expected $want: $last"
	# shellcheck disable=SC2254 # the pattern is meant to be one
	case $last in $pattern) ;; *) fail "$*: output does not match '$pattern': $last" ;; esac
}

# Waits up to a minute (a sanitizer build starts slowly) for the daemon's socket at $1.
wait_for_socket() {
	for _ in $(seq 600); do
		[ -S "$1" ] && return
		sleep 0.1
	done
}

# Starts $iommud on the emulated backend with devices emu0 and emu1, root allowed to write and
# to take emu0 (and the lines in $1, if given, added to its section), listening on
# $dir/iommud.sock; its pid in $pid.
start_emulated_daemon() {
	printf '[iommu]\ndevices = emu0 emu1\n' >"$dir/topology.ini"
	printf '[uid 0]\naccess = write\ndevices = emu0\n%b' "${1-}" >"$dir/iommud.conf"
	"$iommud" --backend emulated --topology "$dir/topology.ini" --config "$dir/iommud.conf" \
		--socket "$dir/iommud.sock" --log-level warning &
	pid=$!
	wait_for_socket "$dir/iommud.sock"
}

# expect STATUS PATTERN ARGS...: $iommuctl with ARGS against that daemon, checked as check does.
expect() {
	want=$1 pattern=$2
	shift 2
	check "$want" "$pattern" "$iommuctl" --socket "$dir/iommud.sock" "$@"
}

# Ends the test with its verdict.
finish() {
	[ "$failures" -eq 0 ] || { echo "$failures failures"; exit 1; }
	echo "$test_name: all checks passed"
}
