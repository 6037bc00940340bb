#!/bin/sh
# Runs inside the L1 guest (Linux 7.3, VT-d, two edu devices), from the share disk mounted at
# /mnt/host: iommud on the iommufd backend, then an unmodified QEMU 10 as uid 65534 given its fds
# by iommud both ways (iommuctl delegate exec, and QMP hotplug, which boots the one L2 guest).
# Prints "nested: START", then "nested: PASS|FAIL what" per check and "nested: DONE n failures"
# at the end.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
share=/mnt/host
export LD_LIBRARY_PATH=$share/lib
iommuctl="$share/bin/iommuctl --socket /run/iommud.sock"
log=/tmp/iommud.log
failures=0
# L1 booted: from here on a panic is the tests' (run-nested.sh boots again only before this).
echo "nested: START"

check() { # check WHAT COMMAND...: passes when the command succeeds
	what=$1
	shift
	if "$@"; then echo "nested: PASS $what"; else echo "nested: FAIL $what"; failures=$((failures + 1)); fi
}

# Waits up to $2 seconds for the command line in $1 (run in this shell, so it may call the
# functions here) to succeed.
wait_for() {
	for _ in $(seq "$2"); do
		eval "$1" >/dev/null 2>&1 && return 0
		sleep 1
	done
	return 1
}

# The pinned bytes iommud reports for the VMM of pid $1 (0 when it lists none).
pinned_of() {
	$iommuctl --json delegations | tr '{' '\n' | grep "\"vmm_pid\":$1," |
		sed 's/.*"pinned_bytes":\([0-9]*\).*/\1/'
}

# The exporter's scrape, and the sum of one family's samples in it (empty when it has none).
metrics() {
	busybox wget -qO- http://127.0.0.1:9863/metrics
}
metric_sum() {
	metrics | awk -v family="$1" 'index($0, family "{") == 1 { sum += $NF; n++ }
		END { if (n) printf "%.0f\n", sum }'
}
# The state iommud gives device $1 in its device list.
state_of() {
	$iommuctl --json devices | tr '{' '\n' | grep "\"name\":\"$1\"" |
		sed 's/.*"state":"\([a-z]*\)".*/\1/'
}

edus=$(for d in /sys/bus/pci/devices/*; do
	[ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] && basename "$d"
done)
edu1=$(echo "$edus" | sed -n 1p)
edu2=$(echo "$edus" | sed -n 2p)
for bdf in $edu1 $edu2; do
	echo vfio-pci >"/sys/bus/pci/devices/$bdf/driver_override"
	echo "$bdf" >/sys/bus/pci/drivers_probe
done
printf '[uid 0]\naccess = write\ndevices = *\ndelegate = yes\n%b' \
	'[uid 1000]\naccess = write\ndevices = *\n' >/tmp/iommud.conf
"$share/bin/iommud" --backend iommufd --config /tmp/iommud.conf --socket /run/iommud.sock \
	--probe-tier off >"$log" 2>&1 &
wait_for "test -S /run/iommud.sock" 20
check "iommud offers delegation" sh -c "$iommuctl hello | grep -q delegate"
busybox ip link set lo up
"$share/bin/iommud-exporter" --listen 127.0.0.1:9863 \
	--socket /run/iommud.sock >/tmp/exporter.log 2>&1 &
exporter=$!
check "the exporter serves iommud's metrics" wait_for "metrics | grep -q '^iommud_up 1\$'" 20

qemu_base="qemu-system-x86_64 -M q35 -accel tcg,tb-size=256 -m 128M -nodefaults -display none \
 -monitor none -no-reboot"

# The command-line path, and per-process accounting: two VMMs of one uid, each within its own
# 200 MiB, which per-user accounting (both counted against uid 65534) would refuse the second.
start_exec_vmm() { # LEASE DEVICE: a paused QEMU holding DEVICE, its pid in $vmm
	$iommuctl --lease "$1" delegate exec --user 65534 --memlock 200M "$2" -- $qemu_base -S \
		-serial none -object iommufd,id=i0,fd={iommufd} \
		-device vfio-pci,iommufd=i0,fd={device0} >"/tmp/$1.log" 2>&1 &
	vmm=$!
}
start_exec_vmm vmA "$edu1"
vmm_a=$vmm
check "exec path: QEMU as uid 65534 mapped its 128M through its own iommufd" \
	wait_for "test \"\$(pinned_of $vmm_a)\" -ge 134217728" 60
start_exec_vmm vmB "$edu2"
vmm_b=$vmm
check "a second VMM of the same uid starts (per-process accounting)" \
	wait_for "test \"\$(pinned_of $vmm_b)\" -ge 134217728" 60
check "delegations list both VMMs" sh -c "$iommuctl delegations | grep -q 'vmA' &&
	$iommuctl delegations | grep -q 'vmB'"
check "while the VMMs run, their devices show as delegated (devices, stats)" \
	wait_for "test \"\$(state_of $edu1)\" = delegated && test \"\$(state_of $edu2)\" = delegated &&
		$iommuctl --json stats | grep -q '\"device\":\"$edu1\",\"state\":\"delegated\"'" 1
check "the metrics count both devices as delegated" \
	wait_for "metrics | grep -q '^iommud_devices{state=\"delegated\"} 2\$' &&
		test \"\$(metric_sum iommud_delegated_devices)\" -eq 2" 10
check "the delegated pinned bytes metric is at least both guests' RAM" \
	wait_for "test \"\$(metric_sum iommud_delegated_pinned_bytes)\" -ge 268435456" 10
check "the delegated pinned bytes limit metric is both VMMs' memlock (2 x 200M)" \
	wait_for "test \"\$(metric_sum iommud_delegated_pinned_bytes_limit)\" -eq 419430400" 10
metrics | grep '^iommud_delegat'
check "the device out is refused to another tenant" sh -c "setpriv --reuid=1000 --regid=1000 \
	--clear-groups $iommuctl domain alloc $edu1 2>&1 | grep -q 'handed to another process'"
$iommuctl --lease vmB lease release
check "lease release frees the device, and iommud says so" \
	wait_for "grep -q '$edu2.*no longer reserved.*its lease was released' $log" 10
kill "$vmm_a" "$vmm_b"
wait "$vmm_a" "$vmm_b"
check "the VMM's exit frees the device, and iommud says so" \
	wait_for "grep -q '$edu1.*free again: the VMM exited' $log" 10
check "after the VMMs exit, the devices are free and the delegated figures are gone" \
	wait_for "test \"\$(state_of $edu1)\" = free && test \"\$(state_of $edu2)\" = free &&
		metrics | grep -q '^iommud_devices{state=\"delegated\"} 0\$' &&
		test -z \"\$(metric_sum iommud_delegated_pinned_bytes)\"" 10
check "the device is usable again after the VMM exited" $iommuctl domain alloc "$edu1"

# Memlock below the guest's RAM: QEMU's own error, and nothing left behind.
$iommuctl --lease vmC delegate exec --user 65534 --memlock 64M "$edu1" -- $qemu_base -S \
	-serial none -object iommufd,id=i0,fd={iommufd} -device vfio-pci,iommufd=i0,fd={device0} \
	>/tmp/vmC.log 2>&1
check "memlock below RAM: QEMU fails with its own error" \
	grep -q 'vfio_container_dma_map.*Cannot allocate memory' /tmp/vmC.log
check "memlock below RAM: iommud freed the device" \
	wait_for "test \$(grep -c '$edu1.*free again: the VMM exited' $log) -ge 2" 10
check "memlock below RAM: iommud lists no delegation left" \
	sh -c "test -z \"\$($iommuctl delegations | sed 1d)\""
sed -n '1,5p' /tmp/vmC.log

# The QMP path, with the one L2 boot: hotplug into a paused QEMU, then DMA from L2.
mkdir -p /run/vmQ
chown 65534:65534 /run/vmQ
# The limit first: raising it takes the privilege setpriv then drops.
prlimit --memlock=209715200 setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
	--bounding-set=-all --no-new-privs $qemu_base -S \
	-qmp unix:/run/vmQ/qmp.sock,server=on,wait=off \
	-device pcie-root-port,id=rp1,chassis=1,slot=1 -serial file:/tmp/l2.log \
	-kernel "$share/l2/bzImage" -initrd "$share/l2/initrd.gz" \
	-append "console=ttyS0 quiet panic=-1 no_timer_check edufault=0xc000000" >/tmp/vmQ.log 2>&1 &
vmm_q=$!
wait_for "test -S /run/vmQ/qmp.sock" 30
check "QMP path: getfd, object-add and device_add into QEMU as uid 65534" \
	$iommuctl --lease vmQ delegate qmp --id vmq --bus rp1 --cont /run/vmQ/qmp.sock "$edu1"
check "QMP path: iommud follows QEMU's pid" sh -c "$iommuctl delegations | grep -q ' $vmm_q '"
# L2's console on L1's as it comes, and a bound on the boot so the log above is always printed.
tail -f /tmp/l2.log &
tail_pid=$!
for _ in $(seq 1200); do
	kill -0 "$vmm_q" 2>/dev/null || break
	sleep 1
done
kill "$vmm_q" "$tail_pid" 2>/dev/null
wait "$vmm_q"
cat /tmp/vmQ.log
check "L2: DMA lands" grep -q 'l2: PASS DMA lands' /tmp/l2.log
check "L2: DMA after the blocked one lands" grep -q 'l2: PASS DMA after the blocked' /tmp/l2.log
check "L2: DMA beyond L2's RAM faults in L1's VT-d" sh -c \
	"dmesg | grep -q 'DMAR: \[DMA Write NO_PASID\].*fault addr 0xc000000'"
check "L2's exit frees the device, and iommud says so" \
	wait_for "test \$(grep -c '$edu1.*free again: the VMM exited' $log) -ge 3" 10
kill "$exporter"
echo "--- iommud's log"
cat "$log"
echo "nested: DONE $failures failures"
