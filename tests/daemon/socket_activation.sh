#!/bin/sh
# Socket activation as systemd does it (iommud.socket): the listening socket is passed in, the
# daemon serves it, and stops cleanly on SIGTERM. systemd-socket-activate stands in for systemd.
# usage: socket_activation.sh IOMMUD IOMMUCTL
set -eu
iommud=$1
iommuctl=$2
if ! command -v systemd-socket-activate >/dev/null; then
	echo "systemd-socket-activate not found (package systemd): skipped"
	exit 77
fi
dir=$(mktemp -d /tmp/iommud-activation.XXXXXX)
pid=
cleanup() {
	[ -z "$pid" ] || kill "$pid" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
printf '[iommu]\ndevices = emu0 emu1\n' >"$dir/topology.ini"
printf '[uid 0]\naccess = write\n' >"$dir/iommud.conf"
systemd-socket-activate --seqpacket -l "$dir/iommud.sock" "$iommud" --backend emulated \
	--topology "$dir/topology.ini" --config "$dir/iommud.conf" 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do
	[ -S "$dir/iommud.sock" ] && break
	sleep 0.1
done
# The first connection starts the daemon on the passed socket.
out=$("$iommuctl" --socket "$dir/iommud.sock" --json devices)
echo "$out"
case $out in *'"emu1"'*) ;; *) echo "FAIL: devices did not list emu1"; exit 1 ;; esac
grep -q 'listening on the socket systemd passed' "$dir/log" || {
	echo "FAIL: the daemon did not take the passed socket:"
	cat "$dir/log"
	exit 1
}
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
cat "$dir/log"
[ "$rc" -eq 0 ] || { echo "FAIL: the daemon exited with $rc after SIGTERM"; exit 1; }
echo "socket activation: ok"
