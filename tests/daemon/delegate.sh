#!/bin/sh
# Delegation where no kernel iommufd stands behind the daemon (the emulated backend): a section
# without 'delegate = yes' may not delegate, whatever the machine; one with it is refused with
# what the kernel lacks, before anything else and without taking the device;
# iommuctl delegate exec refuses its mistakes before asking and runs nothing when refused; the
# listing is there and empty; a device's state (free, bound) shows in devices and stats, and
# stats carries the (empty) delegations.
# usage: delegate.sh IOMMUD IOMMUCTL
set -u
iommud=$1
iommuctl=$2
# shellcheck source=tests/daemon/common.sh
. "$(dirname "$0")/common.sh"
begin delegate
# Delegation is granted per section, never by default: root's section here does not say so.
start_emulated_daemon
expect 1 "*PERMISSION_DENIED*may not delegate*section (uid 0)*'delegate = yes'*" \
	--lease vm1 delegate exec --user 0 emu0 -- touch "$dir/ran"
[ ! -e "$dir/ran" ] || fail "delegate exec ran its command after a refusal"
kill "$pid" && wait "$pid"
start_emulated_daemon 'delegate = yes\n'

expect 0 '*' hello
case $last in *delegate*) fail "the emulated backend claims the delegate capability" ;; esac
# The kernel's lack comes first, whatever else is wrong with the request.
expect 1 '*UNIMPLEMENTED*cannot hand devices to another process*iommufd*' \
	--lease vm1 delegate exec --user root emu0 -- touch "$dir/ran"
[ ! -e "$dir/ran" ] || fail "delegate exec ran its command after a refusal"
# The device was not taken by the refused delegation.
expect 0 '*STATE*emu0*yes*free*emu1*free*' devices
expect 0 '*"device":"emu0","state":"free","dma_faults":0,"delegation_id":0}*' --json stats
expect 0 '[0-9]*' --lease vm1 domain alloc emu0
# The state is the daemon's, whatever session asks.
expect 0 '*emu0*yes*bound*emu1*free*' devices
expect 0 '*"name":"emu0",*"state":"bound",*' --json devices
expect 0 '*DEVICE*STATE*DMA_FAULTS*DELEGATION*emu0*bound*emu1*free*' stats
expect 0 '' --lease vm1 lease release
# iommuctl's own checks, before it asks iommud.
expect 2 '*--lease NAME*' delegate exec emu0 -- true
expect 2 "*'fd={device1}' names a placeholder*{device0}*" --lease vm1 delegate exec --user 0 \
	emu0 -- echo 'fd={device1}'
# Root names the user the VMM runs as; the user and group are resolved before iommud is asked
# (the emulated backend's refusal would come otherwise), and a uid with no passwd entry has no
# primary group to take.
expect 2 '*as root*--user*' --lease vm1 delegate exec emu0 -- true
expect 2 "*no user 'no-such-user-here'*" --lease vm1 delegate exec --user no-such-user-here \
	emu0 -- true
expect 2 "*no group 'no-such-group-here'*" --lease vm1 delegate exec --user 0 \
	--group no-such-group-here emu0 -- true
nameless=4000000
while getent passwd "$nameless" >/dev/null; do nameless=$((nameless + 1)); done
expect 2 "*uid $nameless has no passwd entry*--group*" --lease vm1 delegate exec \
	--user "$nameless" emu0 -- true
expect 1 '*UNIMPLEMENTED*' --lease vm1 delegate exec --user "$nameless" --group 65534 emu0 -- true
expect 2 '*--group goes with --user*' --lease vm1 delegate exec --group 0 emu0 -- true
expect 2 '*expects DEVICES COMMAND...*' --lease vm1 delegate exec emu0
expect 0 '*delegate exec*--user is required*--memlock SIZE*RLIMIT_MEMLOCK*{device0}*' \
	delegate exec --help
expect 2 '*--lease NAME*' delegate qmp "$dir/qmp.sock" emu0
expect 2 "*--id and --bus take letters*" --lease vm1 delegate qmp --id 'a"b' "$dir/qmp.sock" emu0
expect 2 "*--vmm-pid takes QEMU's process id, not '0'*" --lease vm1 delegate qmp --vmm-pid 0 \
	"$dir/qmp.sock" emu0
expect 0 '*--vmm-pid PID*listener*' delegate qmp --help
# No QEMU there: nothing is asked of iommud.
expect 4 "*cannot connect to QEMU's QMP socket*" --lease vm1 delegate qmp "$dir/qmp.sock" emu0
# The listing: none.
expect 0 'ID*DEVICES*PID*' delegations
expect 0 '{"delegations":\[\]}' --json delegations
expect 0 'ID*DEVICES*TENANT*PID*UID*LEASE*SINCE*PINNED*LIMIT*CGROUP' delegations
expect 0 '*"delegations":\[\]*' --json stats
finish
