#!/bin/sh
# iommud as an administrator runs it: the exit statuses its --help gives (2 for a bad option or
# option value, 1 for a bad configuration file or a backend the machine cannot serve, with the
# refusal's reason), and a warning about GetStats logged when the
# number of entries it leaves out changes, not at every call.
# usage: iommud_admin.sh IOMMUD IOMMUCTL
set -u
iommud=$1
iommuctl=$2
# shellcheck source=tests/daemon/common.sh
. "$(dirname "$0")/common.sh"
begin iommud

printf '[uid 0]\naccess = write\n' >"$dir/good.conf"
printf '[daemon]\nbackend = floppy\n' >"$dir/bad.conf"
good="$dir/good.conf"
check 0 '*' "$iommud" --check-config --config "$good" --backend emulated
check 2 "*--backend must be*not 'floppy'*--help*" "$iommud" --config "$good" --backend floppy
check 2 "*--log-level must be*not 'loud'*--help*" "$iommud" --config "$good" --log-level loud
check 2 "*--probe-tier must be*not 'uprobe'*--help*" "$iommud" --config "$good" \
	--probe-tier uprobe
check 2 '*--help*' "$iommud" --config "$good" --no-such-option
check 2 '*--help*' "$iommud" --config "$good" unexpected-operand
check 1 "*bad.conf:2: backend must be*not 'floppy'*" "$iommud" --config "$dir/bad.conf"

# A backend the machine cannot serve refuses to start, saying why and what to do; on a machine
# with an IOMMU, auto never falls back to the emulation. The machine is a fake one
# (IOMMUD_TEST_ROOT, for tests only): an IOMMU and neither /dev/iommu nor VFIO.
mkdir -p "$dir/machine/sys/class/iommu/dmar0" "$dir/machine/dev"
check 1 "*cannot open the vfio-type1 backend*no /dev/vfio/vfio*modprobe vfio-pci*" \
	env IOMMUD_TEST_ROOT="$dir/machine" "$iommud" --config "$good" --backend vfio-type1 \
	--socket "$dir/refused.sock"
check 1 "*cannot open the iommufd backend*CONFIG_IOMMUFD*vfio-type1*" \
	env IOMMUD_TEST_ROOT="$dir/machine" "$iommud" --config "$good" --backend iommufd \
	--socket "$dir/refused.sock"
check 1 "*cannot open the auto backend*would remap nothing*" \
	env IOMMUD_TEST_ROOT="$dir/machine" "$iommud" --config "$good" --socket "$dir/refused.sock"

# Devices enough that GetStats cannot list them all in one packet: long names, so that a few
# hundred do (a line holds three; inih reads up to 200 bytes of one).
long=abcdefghijklmnopqrstuvwxyzabcdefghijklmn
{
	echo '[iommu]'
	for i in $(seq 1000 1399); do
		echo "devices = a-$long-$i b-$long-$i c-$long-$i"
	done
} >"$dir/topology.ini"
"$iommud" --backend emulated --topology "$dir/topology.ini" --config "$dir/good.conf" \
	--socket "$dir/iommud.sock" --log-level notice 2>"$dir/log" &
pid=$!
wait_for_socket "$dir/iommud.sock"
# The reply's own figures grow over the first calls (GetStats counts itself), which may move
# the number left out a few times; after that the warning must stay quiet.
calls=10
for _ in $(seq $calls); do
	"$iommuctl" --socket "$dir/iommud.sock" stats >/dev/null ||
		fail "iommuctl stats failed"
done
kill "$pid"
wait "$pid"
pid=
warnings=$(grep -c 'entries left out' "$dir/log")
if [ "$warnings" -lt 1 ] || [ "$warnings" -gt $((calls / 2)) ]; then
	fail "the left-out warning came $warnings times for $calls GetStats: $(cat "$dir/log")"
fi

finish
