#!/bin/bash
# Runs test binaries inside a real Linux kernel under qemu (TCG) with an emulated IOMMU, one boot
# for all of them, and leaves one result per test in a results folder for vm-result.sh.
# See tests/vm/README.md for the guest's layout and how ctest uses the results.
set -euo pipefail

prog=run-vm.sh

usage() {
	cat >&2 <<EOF
usage: $prog [--kernel BZIMAGE] [--modules DIR] --iommu intel|amd|virtio --results DIR
              [--timeout SECS] [--memory SIZE] [--support PROGRAM]... TESTBIN...
       $prog [--kernel BZIMAGE] --disk IMAGE --iommu intel|amd|virtio --results DIR
              [--timeout SECS] [--memory SIZE] STEP...
  --kernel BZIMAGE  guest kernel (default: \$IOMMUD_VM_KERNEL)
  --modules DIR     the kernel's VFIO modules (*.ko), loaded before the devices are bound
                    (default: the folder 'modules' beside the kernel, if there is one)
  --support PROG    a program the tests use but that is no test itself (the daemon): copied
                    into /tests with its libraries, not run; iommud is named in \$IOMMUD_DAEMON
  --iommu MODEL     emulated IOMMU: intel (VT-d), amd (AMD-Vi) or virtio (virtio-iommu)
  --results DIR     receives NAME.result, NAME.log per test and console.log
  --timeout SECS    limit for each test inside the guest (default 60)
  --memory SIZE     the guest's RAM, as qemu's -m takes it (default 1G; benchmarks of large
                    maps want 4G)
  --disk IMAGE      boot this ext4 root with systemd as PID 1 instead of an initramfs (a copy:
                    the image is left as it is); its guest runs the STEPs, named here only to
                    collect their results (tests/vm/README.md, "systemd as PID 1")
EOF
	exit 2
}

die() {
	echo "$prog: $*" >&2
	exit 1
}

kernel=${IOMMUD_VM_KERNEL:-}
modules_dir=
disk=
iommu=
results=
per_test=60
memory=1G
support=()
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) [ $# -ge 2 ] || usage; kernel=$2; shift 2 ;;
	--modules) [ $# -ge 2 ] || usage; modules_dir=$2; shift 2 ;;
	--disk) [ $# -ge 2 ] || usage; disk=$2; shift 2 ;;
	--iommu) [ $# -ge 2 ] || usage; iommu=$2; shift 2 ;;
	--results) [ $# -ge 2 ] || usage; results=$2; shift 2 ;;
	--timeout) [ $# -ge 2 ] || usage; per_test=$2; shift 2 ;;
	--memory) [ $# -ge 2 ] || usage; memory=$2; shift 2 ;;
	--support) [ $# -ge 2 ] || usage; support+=("$2"); shift 2 ;;
	--) shift; break ;;
	-*) echo "$prog: unknown option $1" >&2; usage ;;
	*) break ;;
	esac
done
if [ -z "$iommu" ] || [ -z "$results" ] || [ $# -eq 0 ]; then
	usage
fi
case $per_test in '' | *[!0-9]* | 0) die "--timeout wants a positive number of seconds, not '$per_test'" ;; esac
case ${memory%[MG]} in '' | *[!0-9]* | 0*) die "--memory wants a size such as 1G or 3072M, not '$memory'" ;; esac
[ "${memory%[MG]}" != "$memory" ] || die "--memory wants a size such as 1G or 3072M, not '$memory'"

if [ -z "$kernel" ]; then
	die "no kernel: pass --kernel BZIMAGE or set IOMMUD_VM_KERNEL. It needs iommufd, the VFIO" \
		"device cdev, vfio-pci and the Intel, AMD and virtio IOMMU drivers built in, or" \
		"VFIO as modules in a folder beside it (Debian 12's kernel);" \
		"tests/vm/README.md says how to build one"
fi
[ -f "$kernel" ] || die "kernel $kernel does not exist (tests/vm/README.md says how to build one)"
[ -z "$disk" ] || [ -f "$disk" ] || die "disk image $disk does not exist"

# A distribution's kernel (Debian 12's) builds VFIO as modules; its package, unpacked, keeps them
# in a folder beside the image. A kernel with everything built in has none and loads nothing.
[ -n "$modules_dir" ] || [ ! -d "$(dirname "$kernel")/modules" ] ||
	modules_dir=$(dirname "$kernel")/modules
modules=()
if [ -n "$modules_dir" ]; then
	[ -d "$modules_dir" ] || die "--modules $modules_dir is not a folder"
	# Names with '_' for '-', as the kernel spells them in depends= and /sys/module.
	declare -A module_file=() module_deps=()
	for ko in "$modules_dir"/*.ko; do
		[ -f "$ko" ] || die "$modules_dir holds no *.ko: --modules names the folder of the kernel's VFIO modules"
		name=${ko##*/}
		name=${name%.ko}
		name=${name//-/_}
		deps=$(tr '\0' '\n' <"$ko" | sed -n 's/^depends=//p' | head -n 1)
		deps=${deps//,/ }
		module_file[$name]=$ko
		module_deps[$name]=${deps//-/_}
	done
	# Each module after those its depends= field names (the package ships no modules.dep), else
	# by name: for Debian 12's six that is irqbypass, vfio, vfio_iommu_type1, vfio_virqfd,
	# vfio_pci_core, vfio_pci. A dependency not in the folder must be built in.
	while [ ${#modules[@]} -lt ${#module_file[@]} ]; do
		next=
		for name in $(printf '%s\n' "${!module_file[@]}" | LC_ALL=C sort); do
			case " ${modules[*]} " in *" $name "*) continue ;; esac
			ready=1
			for dep in ${module_deps[$name]}; do
				[ -n "${module_file[$dep]:-}" ] || continue
				case " ${modules[*]} " in *" $dep "*) ;; *) ready=0 ;; esac
			done
			if [ $ready = 1 ]; then
				next=$name
				break
			fi
		done
		[ -n "$next" ] || die "the modules in $modules_dir depend on each other in a circle"
		modules+=("$next")
	done
fi

# Each model's kernel arguments: VT-d stays off unless asked for, and virtio-iommu offers no
# interrupt isolation on x86, without which iommufd refuses to bind a device (EPERM).
# Two edu behind a PCIe-to-PCI bridge share a group: the IOMMU sees them by the bridge's ID.
shared_group=(-device 'pcie-pci-bridge,id=br0'
	-device 'edu,bus=br0,addr=1.0' -device 'edu,bus=br0,addr=2.0')
case $iommu in
intel)
	iommu_dev=intel-iommu,intremap=on,caching-mode=on
	iommu_args=intel_iommu=on
	;;
amd)
	iommu_dev=amd-iommu
	# qemu's AMD-Vi has no IVRS entry for the IOAPIC, so Linux 7.x turns interrupt remapping
	# off and, like virtio-iommu, it offers no isolation iommufd would accept.
	iommu_args=iommufd.allow_unsafe_interrupts=1
	# With the bridge present, qemu 7.2's AMD-Vi stops translating DMA of the edu at 00:04.0
	# under Linux 6.12 (nothing lands, nothing is logged), so groups are tested on VT-d.
	shared_group=()
	;;
virtio)
	iommu_dev=virtio-iommu-pci
	iommu_args=iommufd.allow_unsafe_interrupts=1
	# qemu 7.2's virtio-iommu leaves devices behind the bridge without an IOMMU (no group, so
	# no vfio-pci), and with the bridge there Linux 7.3 keeps no group for any device at all.
	shared_group=()
	;;
*) die "--iommu must be intel, amd or virtio, not '$iommu'" ;;
esac

for tool in qemu-system-x86_64 busybox cpio gzip ldd timeout; do
	command -v "$tool" >/dev/null || die "$tool is not installed (install-deps.sh at the repository root installs it)"
done
busybox_bin=$(command -v busybox)
# A dynamically linked busybox would need its own libraries in the guest; Debian's
# busybox-static is the one that is not.
ldd "$busybox_bin" >/dev/null 2>&1 && die "$busybox_bin is dynamically linked; install busybox-static"

for bin in "${support[@]}"; do
	[ -f "$bin" ] && [ -x "$bin" ] || die "support program $bin is not an executable file"
done
names=()
for bin in "$@"; do
	if [ -z "$disk" ] && { [ ! -f "$bin" ] || [ ! -x "$bin" ]; }; then
		die "test binary $bin is not an executable file"
	fi
	name=${bin##*/}
	# The name becomes a file name on the host and a word in the guest's shell script.
	case $name in *[!A-Za-z0-9_.+-]*) die "test name '$name' may only hold letters, digits and _.+-" ;; esac
	for seen in "${names[@]}"; do
		[ "$seen" != "$name" ] || die "two test binaries are named $name"
	done
	names+=("$name")
done

work=$(mktemp -d "${TMPDIR:-/tmp}/iommud-vm.XXXXXX")
qemu_pid=
cleanup() {
	[ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
# Without this a ctest timeout or ^C would leave qemu running after the script is gone.
trap 'exit 130' INT
trap 'exit 143' TERM

# The initramfs: busybox, the test binaries (the arguments) with their libraries, and /init.
make_initrd() {
	root=$work/root
	mkdir -p "$root"/{bin,dev,modules,proc,sys,tests,tmp}
	cp "$busybox_bin" "$root/bin/busybox"
	for name in "${modules[@]}"; do cp "${module_file[$name]}" "$root/modules/$name.ko"; done

	# Copies each library at the path the host loader found it, so a RUNPATH baked into a binary
	# still points at it; the guest has no ld.so.cache, hence LD_LIBRARY_PATH for the rest.
	lib_dirs=
	for bin in "$@" "${support[@]}"; do
		cp "$bin" "$root/tests/"
		ldd_out=$(ldd "$bin" 2>&1) || true
		case $ldd_out in *"not a dynamic executable"* | *"statically linked"*) continue ;; esac
		missing=$(awk '$2 == "=>" && $3 == "not" { print $1 }' <<<"$ldd_out")
		[ -z "$missing" ] || die "$bin needs libraries the host lacks: ${missing//$'\n'/ }"
		while read -r lib; do
			[ ! -e "$root$lib" ] || continue
			mkdir -p "$root${lib%/*}"
			cp -L "$lib" "$root$lib"
			case ":$lib_dirs:" in *":${lib%/*}:"*) ;; *) lib_dirs=${lib_dirs:+$lib_dirs:}${lib%/*} ;; esac
		done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$ldd_out")
	done

	# The guest's PID 1: the settings of this run, then a fixed script. Its markers are what the host
	# parses; everything between a test's BEGIN and RESULT lines, kernel messages included, becomes
	# that test's log.
	{
		echo '#!/bin/busybox sh'
		echo "iommu=$iommu per_test=$per_test tests='${names[*]}' lib_path='$lib_dirs'"
		echo "modules='${modules[*]}'"
		cat <<'EOF'
/bin/busybox --install -s /bin
export PATH=/bin IOMMUD_VM_IOMMU=$iommu IOMMUD_VM_MODULES="$modules"
[ -z "$lib_path" ] || export LD_LIBRARY_PATH=$lib_path
[ ! -x /tests/iommud ] || export IOMMUD_DAEMON=/tests/iommud
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "IOMMUD-VM-BOOTED $(uname -r) iommu=$iommu"

for module in $modules; do
	if insmod "/modules/$module.ko"; then
		echo "iommud-vm: loaded $module"
	else
		echo "iommud-vm: insmod $module failed"
	fi
done

# Where no interrupt is remapped (no IR- chip in /proc/interrupts: qemu's AMD-Vi under Linux 7.x,
# virtio-iommu) type1 refuses to attach a group (EPERM), as iommufd refuses to bind without its
# own knob on the kernel command line. The knob is this test bed's only: the daemon never sets
# it. Built in or loaded, type1 takes it at run time; where interrupts are remapped it stays off.
unsafe=/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts
if [ -w "$unsafe" ] && ! grep -q 'IR-' /proc/interrupts; then
	echo 1 >"$unsafe"
	echo "iommud-vm: no interrupt remapping: vfio_iommu_type1.allow_unsafe_interrupts=1"
fi

# e1000e has a kernel driver that holds the device until it is unbound; edu has none.
to_vfio() {
	dev=/sys/bus/pci/devices/$1
	[ ! -e "$dev/driver" ] || echo "$1" >"$dev/driver/unbind"
	echo vfio-pci >"$dev/driver_override"
	echo "$1" >/sys/bus/pci/drivers_probe
	# Behind an IOMMU that is itself a PCI device (virtio-iommu) a device may get its group only
	# as a driver binds (Linux 6.12), and its probe waits (deferred) while that IOMMU is still
	# probing: so wait for the driver, not for the group.
	waited=0
	while [ ! -e "$dev/driver" ] && [ "$waited" -lt 100 ]; do
		sleep 0.1
		waited=$((waited + 1))
	done
	driver=$(readlink "$dev/driver")
	group=$(readlink "$dev/iommu_group")
	echo "iommud-vm: $1 $2 driver ${driver##*/} iommu group ${group##*/}"
}
for dev in /sys/bus/pci/devices/*; do
	id=$(cat "$dev/vendor"):$(cat "$dev/device")
	case $id in 0x1234:0x11e8 | 0x8086:0x10d3) to_vfio "${dev##*/}" "$id" ;; esac
done

# Each test gets its own session, so that a timeout or its end also takes down whatever the test
# started; 124 marks a timeout, as GNU timeout does.
run() {
	echo "IOMMUD-VM-BEGIN $1"
	setsid "/tests/$1" </dev/null &
	pid=$!
	# A session of its own too, so that stopping it also stops its sleep.
	setsid sh -c "sleep $per_test; echo 'iommud-vm: $1 still running after ${per_test}s, killing it'
		kill -KILL -$pid" &
	watchdog=$!
	wait "$pid"
	rc=$?
	if kill -TERM "-$watchdog" 2>/dev/null; then
		kill -KILL "-$pid" 2>/dev/null
	else
		rc=124
	fi
	case $rc in 0) status=PASS ;; 77) status=SKIP ;; *) status=FAIL ;; esac
	echo "IOMMUD-VM-RESULT $1 $status $rc"
}
for t in $tests; do run "$t"; done
echo "IOMMUD-VM-DONE"
# Should this fail, init ends, the kernel panics and panic=-1 with -no-reboot stops qemu anyway.
poweroff -f
EOF
	} >"$root/init"
	chmod +x "$root/init"

	(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 -n >"$work/initrd.gz"
}
[ -n "$disk" ] || make_initrd "$@"

mkdir -p "$results"
rm -f "$results/console.log"
for name in "${names[@]}"; do rm -f "$results/$name.result" "$results/$name.log"; done

# Boot (~4 s under TCG) plus each test's own limit, plus slack for a slow or busy host.
# thread=single: under qemu 7.2's multi-threaded TCG about one boot in 25 died, either by an int3
# oops in code the kernel was live-patching (sched_clock_cpu) or by RCU stalls; one thread for
# both vCPUs passed 120 boots in a row, and was no slower.
# Devices: two edu, so that tests have two groups to move between domains, two more in a shared
# group (not under virtio, see above), and an e1000e, a device with a kernel driver of its own to
# unbind. q35 would add an e1000e of its own (-nic none), and one without a netdev makes qemu
# warn; restrict=on keeps it off the host net.
# no_timer_check: on a busy host TCG can miss the window in which Linux waits for the first
# IO-APIC timer tick, and with interrupt remapping on it then panics ("timer doesn't work
# through Interrupt-remapped IO-APIC"; 2 of 8 boots at a load of 10 on 2 cores). KVM guests
# skip that check the same way.
overall=$((60 + ${#names[@]} * (per_test + 10)))
# A disk boots systemd, which writes to it: snapshot=on keeps the writes in a scratch file.
if [ -n "$disk" ]; then
	boot=(-kernel "$kernel" -drive "file=$disk,if=virtio,format=raw,snapshot=on")
	boot_args="root=/dev/vda rw systemd.show_status=0"
else
	boot=(-kernel "$kernel" -initrd "$work/initrd.gz")
	boot_args=
fi
start=$EPOCHREALTIME
elapsed() { awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
timeout --kill-after=10 "$overall" qemu-system-x86_64 \
	-M q35,kernel-irqchip=split -accel tcg,thread=single -m "$memory" -smp 2 -nographic -no-reboot \
	-device "$iommu_dev" \
	-device edu -device edu \
	"${shared_group[@]}" \
	-nic none -netdev user,id=n0,restrict=on -device e1000e,netdev=n0 \
	"${boot[@]}" \
	-append "console=ttyS0 quiet panic=-1 no_timer_check $iommu_args${boot_args:+ $boot_args}" \
	</dev/null >"$work/console.raw" 2>"$work/qemu.err" &
qemu_pid=$!
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=

# qemu's VT-d and virtio-iommu report the DMA they block on qemu's stderr, and again when a burst
# of faults overflows the fault registers or the event queue. Tests provoke that on purpose and
# the guest kernel logs the fault into the test's log anyway.
noise='vtd_[a-z0-9_]+: detected |virtio_iommu_translate (no mapping|permission error) '
noise="$noise|New fault is not recorded|Next Fault Recording Reg is used"
noise="$noise|no buffer available in event queue to report event"
grep -Ev ": ($noise)" "$work/qemu.err" >&2 || true
tr -d '\r' <"$work/console.raw" >"$results/console.log"

awk -v dir="$results" '
	(i = index($0, "IOMMUD-VM-BEGIN ")) > 0 {
		split(substr($0, i), f, " ")
		name = f[2]
		log_file = dir "/" name ".log"
		printf "" >log_file
		next
	}
	name != "" && (i = index($0, "IOMMUD-VM-RESULT " name " ")) > 0 &&
	    substr($0, i) ~ /^IOMMUD-VM-RESULT [^ ]+ (PASS|FAIL|SKIP) [0-9]+$/ {
		# A test line without a final newline shares its line with the marker.
		if (i > 1) print substr($0, 1, i - 1) >log_file
		print substr($0, i) >log_file
		split(substr($0, i), f, " ")
		print f[3] >(dir "/" name ".result")
		close(log_file)
		close(dir "/" name ".result")
		name = ""
		next
	}
	name != "" { print >log_file }
' "$results/console.log"

grep -q 'IOMMUD-VM-BOOTED ' "$results/console.log" || {
	echo "$prog: the guest never reached /init (qemu exit $qemu_rc); last console lines:" >&2
	tail -n 20 "$results/console.log" >&2
}

if [ "$qemu_rc" -eq 124 ]; then
	why="the VM was killed after ${overall}s, the overall limit,"
else
	why="the VM stopped (qemu exit $qemu_rc)"
fi
unreported=0
for name in "${names[@]}"; do
	[ ! -f "$results/$name.result" ] || continue
	echo "$prog: $name: $why before it reported a result; see $results/console.log" |
		tee -a "$results/$name.log" >&2
	echo FAIL >"$results/$name.result"
	unreported=$((unreported + 1))
done
summary=$(for name in "${names[@]}"; do cat "$results/$name.result"; done |
	sort | uniq -c | awk '{ printf "%s%d %s", sep, $1, $2; sep = ", " }')
echo "$prog: $iommu on $kernel: $summary ($unreported unreported) in $(elapsed)s"
[ "$unreported" -eq 0 ] || exit 1
