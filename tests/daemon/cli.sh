#!/bin/sh
# iommuctl as a person or a script uses it, against the real daemon: each subcommand's output,
# --json that parses, sessions that end with iommuctl unless leased, and the documented exit
# statuses (0 done, 1 refused, 2 usage, 3 unreachable, 4 local failure).
# usage: cli.sh IOMMUD IOMMUCTL
set -u
iommud=$1
iommuctl=$2
# shellcheck source=tests/daemon/common.sh
. "$(dirname "$0")/common.sh"
begin iommuctl
start_emulated_daemon

expect 0 '*backend*emulated*write*' hello
expect 0 '*nothing remapped*yes*' hello
expect 0 '*capabilities*replace*' device emu0
expect 0 '*emu0*yes*emu1*no*' devices
expect 0 '{"devices":[{"name":"emu0"*' --json devices
# --json also where people write it, after the command
expect 0 '{"devices":[{"name":"emu0"*' devices --json
if command -v python3 >/dev/null; then
	printf '%s' "$last" | python3 -m json.tool >/dev/null || fail "devices --json is not JSON"
fi
expect 0 '*"reserved":[{"start":4276092928,*' --json device emu0

# Anonymous: gone when iommuctl exits. Leased: kept until released.
expect 0 '[0-9]*' domain alloc emu0
expect 0 '*' --json domains
case $last in *'"domains":[]'*) ;; *) fail "an anonymous domain outlived iommuctl: $last" ;; esac
expect 0 '[0-9]*' --lease t1 domain alloc emu0
dom=$last
expect 0 '0x*' --lease t1 map "$dom" --memfd 64K --iova 0x100000
expect 0 '0x*' --lease t1 map "$dom" --memfd 8K --prot r
expect 0 '*0x100000*64K*rw*' --lease t1 mappings "$dom"
expect 0 '*"iova":1048576,"length":65536*' --lease t1 --json mappings "$dom"
expect 0 '*0x0*' --lease t1 ranges "$dom"
expect 0 '*' --lease t1 attach emu0 "$dom"
expect 0 "*$dom*paging*emu0*2*emu0*" --lease t1 domains
expect 0 '*mappings*2*' --lease t1 stats
expect 0 '*emu0*attached*emu1*free*' --lease t1 stats
expect 0 '*probe tier*' --lease t1 stats
# --latency draws each method's histogram as bpftrace's hist() does: ranges, counts, @ bars.
expect 0 '*@rpc\[map\]: 2 calls, mean *
\[*K, *K)* |@*|*' --lease t1 stats --latency
expect 0 '*"method":"map",*"codes":\[{"code":"OK","calls":2}],"latency":{"count":2,"sum_ns":*,"buckets":\[{"low_ns":*' \
	--lease t1 --json stats --latency
if command -v python3 >/dev/null; then
	printf '%s' "$last" | python3 -m json.tool >/dev/null || fail "stats --json --latency is not JSON"
fi
expect 0 '*1 mapping*64K*' --lease t1 unmap "$dom" --iova 0x100000 --length 64K
expect 0 '*' --lease t1 detach emu0
expect 0 '*' --lease t1 unmap "$dom" --all

# Refusals by the daemon: status 1, with the code and the daemon's message.
expect 1 '*PERMISSION_DENIED*emu1*' domain alloc emu1
expect 1 '*NOT_FOUND*no domain 999*' --lease t1 unmap 999 --all
expect 1 '*NOT_FOUND*' --lease t1 unmap "$dom" --iova 0x100000 --length 64K
expect 1 '*UNIMPLEMENTED*' --lease t1 dirty "$dom" --enable
expect 0 '*' --lease t1 lease release
expect 0 '*' --lease t1 --json domains
case $last in *'"domains":[]'*) ;; *) fail "a released lease kept its domain: $last" ;; esac

# Usage errors: status 2, with a hint.
expect 2 '*--help*' frobnicate
# The probes switch: its words parsed, and on this host (tier off) refused with what to do; a
# host whose kernel loads the probes switches them off and on again.
expect 2 '*--help*' probes
expect 2 '*--help*' probes frobnicate
expect 2 '*' probes detach now
expect 0 '*probe tier*attached*' probes status
expect 0 '{"probes":{"probe_tier":"*","attached":*' --json probes status
case $last in
*'"probe_tier":"off"'*)
	expect 1 '*FAILED_PRECONDITION*tier off*' probes detach
	expect 1 '*FAILED_PRECONDITION*tier off*' probes attach
	;;
*)
	expect 0 '{"probes":{"probe_tier":"*","attached":false}}' --json probes detach
	expect 0 '*"attached":false*' --json probes status
	expect 0 '*probe tier*attached*yes*' probes attach
	;;
esac
expect 2 '*' map
expect 2 '*' map 1 --memfd 1M --file /dev/null
expect 2 '*' map 1 --memfd lots
expect 0 '*Usage: iommuctl*map DOMAIN*Exit status*' map --help

# Local failures: status 4.
expect 4 '*no/such/file*' --lease t2 map 1 --file /no/such/file

# The daemon unreachable: status 3, and a hint.
kill "$pid"
wait "$pid"
pid=
expect 3 '*cannot connect*running*' hello

finish
