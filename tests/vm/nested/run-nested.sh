#!/bin/sh
# The nested VM proof (tests/vm/README.md, "Nested: QEMU 10 given its fds by iommud"): boots an
# L1 guest (Linux 7.3, VT-d, two edu devices) whose root is Debian trixie with QEMU 10, runs
# iommud in it, and has l1-run.sh start unprivileged QEMUs with iommud's fds and one L2 guest
# (Linux 6.12 with a static DMA probe) whose DMA must land. The L1 root is made once with
# debootstrap and kept in $IOMMUD_VM_CACHE (else in CACHE, the build tree's folder for this
# test); each run makes the share afresh in CACHE and boots the root with snapshot=on, so a kept
# root is never changed by a run. The share reaches L1 as a second, read-only disk made by
# mkfs.ext4 -d, as the systemd tier's root does: a 9p export of the build tree would depend on
# what file system the checkout sits on, which differs between machines.
# usage: run-nested.sh CACHE L1_KERNEL L2_KERNEL IOMMUD IOMMUCTL LIBIOMMUCTL L2_PROBE EXPORTER
# Exit status: 0 every check passed, 1 one failed, 77 the test bed cannot be built here.
set -eu
[ $# -eq 8 ] || { echo "usage: $0 CACHE L1_KERNEL L2_KERNEL IOMMUD IOMMUCTL LIBIOMMUCTL L2_PROBE EXPORTER" >&2; exit 2; }
cache=$1 l1_kernel=$2 l2_kernel=$3 iommud=$4 iommuctl=$5 libiommuctl=$6 probe=$7 exporter=$8
here=$(cd "$(dirname "$0")" && pwd)
mirror=${IOMMUD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Named after the recipe below, so a changed recipe makes a new image instead of using a stale one.
roots=${IOMMUD_VM_CACHE:-$cache}
image=$roots/l1-trixie-$(sed -n '/^build_image() {/,/^}/p' "$0" | sha256sum | cut -c1-12).img

# The parts' results (nested-result.sh) read this run's console log, never an older one.
rm -f "$cache/console.log"

skip() {
	echo "nested VM test skipped: $*"
	exit 77
}

for tool in debootstrap mkfs.ext4 qemu-system-x86_64 cpio busybox; do
	command -v "$tool" >/dev/null || skip "$tool is missing (install-deps.sh installs it)"
done
mkdir -p "$cache" "$roots"

# The L1 root: QEMU 10 and what iommud links against, PID 1 a script that runs the share's.
build_image() {
	# Another run may be making the same image: each its own, the last rename wins.
	root=$image.root.$$
	rm -rf "$root" "$image.tmp.$$"
	debootstrap --variant=minbase \
		--include=qemu-system-x86,busybox,util-linux,libprotobuf-c1,libevent-2.1-7t64,libevent-pthreads-2.1-7t64,libinih1,libbpf1,libsystemd0 \
		trixie "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
		{ rm -rf "$root"; skip "debootstrap of trixie from $mirror failed (see $cache/debootstrap.log)"; }
	cat >"$root/l1init" <<'INIT'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mount -t tmpfs run /run
mkdir -p /mnt/host
if mount -t ext4 -o ro /dev/vdb /mnt/host; then
	sh /mnt/host/run.sh
else
	echo "nested: FAIL L1 could not mount the share (/dev/vdb)"
fi
busybox poweroff -f
INIT
	chmod +x "$root/l1init"
	rm -rf "$root/var/cache/apt/archives"/*.deb
	mkfs.ext4 -q -F -d "$root" "$image.tmp.$$" 2G
	rm -rf "$root"
	mv "$image.tmp.$$" "$image"
}
# Not `[ -f ] || build_image`: in an || list set -e would not stop at a failed step, and a
# half-made image would be kept for every later run.
if [ ! -f "$image" ]; then
	build_image
fi

# The share: the programs under test, the L2 kernel and its initramfs, the L1 script.
share=$cache/share
rm -rf "$share"
mkdir -p "$share/bin" "$share/lib" "$share/l2" "$cache/initrd/bin"
cp "$iommud" "$iommuctl" "$exporter" "$share/bin/"
cp -L "$libiommuctl" "$share/lib/$(basename "$libiommuctl")"
cp "$l2_kernel" "$share/l2/bzImage"
cp "$here/l1-run.sh" "$share/run.sh"
initrd=$cache/initrd
cp "$(command -v busybox)" "$initrd/bin/busybox"
cp "$probe" "$initrd/bin/l2_dma_probe"
cat >"$initrd/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
/bin/l2_dma_probe
poweroff -f
INIT
chmod +x "$initrd/init"
(cd "$initrd" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$share/l2/initrd.gz"
rm -f "$cache/share.img"
mkfs.ext4 -q -d "$share" "$cache/share.img" "$(($(du -sm "$share" | cut -f1) + 32))M"

# One L1 boot does everything; an L2 boot under nested TCG takes 2-3 minutes. no_timer_check, as
# in run-vm.sh: on a busy host TCG can miss the first IO-APIC timer tick, and L1 would panic.
boot_l1() {
	timeout 1500 qemu-system-x86_64 -M q35,kernel-irqchip=split -accel tcg -m 3G -smp 2 \
		-display none -serial stdio -monitor none -no-reboot \
		-device intel-iommu,intremap=on,caching-mode=on -device edu -device edu \
		-kernel "$l1_kernel" -drive file="$image",if=virtio,format=raw,snapshot=on \
		-drive file="$cache/share.img",if=virtio,format=raw,readonly=on \
		-append "console=ttyS0 intel_iommu=on no_timer_check root=/dev/vda rw init=/l1init panic=-1 quiet" \
		>"$cache/console.log" 2>"$cache/qemu-stderr.log" || true
}
boot_l1
# L1's kernel has been seen to die while booting under TCG, before any of the tested programs
# ran (an int3 Oops in sched_clock_cpu on its second CPU, its code being patched): that says
# nothing of them, so L1 boots once more, saying so. A panic once L1's script has begun (it
# prints "nested: START" first) is a failure like any other.
if ! grep -q '^nested: ' "$cache/console.log" && grep -q 'Kernel panic' "$cache/console.log"; then
	echo "L1's kernel panicked while booting, before the test began; booting it once more." \
		"Its console:"
	grep -E 'Oops|RIP:|Kernel panic' "$cache/console.log" | head -n 5
	boot_l1
fi
grep -E '^(nested|l2): ' "$cache/console.log" || true
grep -q '^nested: DONE 0 failures' "$cache/console.log" && exit 0
# Say here why L1 stopped, for a reader who has only this test's output (a CI log).
echo "nested VM test failed; the end of L1's console ($cache/console.log):"
tail -n 30 "$cache/console.log"
echo "and of QEMU's own messages ($cache/qemu-stderr.log):"
tail -n 10 "$cache/qemu-stderr.log"
exit 1
