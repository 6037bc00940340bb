#!/bin/sh
# Makes the disk image of the systemd VM tier (tests/vm/README.md, "systemd as PID 1"): the
# project's Debian package (cpack in BUILD_DIR), a Debian 12 root with its runtime
# dependencies (debian-root.sh, cached in $IOMMUD_VM_CACHE, else OUT_DIR/cache), the guest's
# test script, its DMA client (systemd-dma-loop, built in BUILD_DIR) and the unit that runs it,
# packed by mkfs.ext4 -d into OUT_DIR/disk.img without mounting anything.
# usage: systemd-image.sh BUILD_DIR OUT_DIR
# Exit status 77 (skipped) when not root: debootstrap needs it.
set -eu

prog=systemd-image.sh
[ $# -eq 2 ] || { echo "usage: $prog BUILD_DIR OUT_DIR" >&2; exit 2; }
build=$1
out=$(mkdir -p "$2" && cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)

if [ "$(id -u)" -ne 0 ]; then
	echo "$prog: not root: debootstrap cannot make the guest's root; skipped"
	exit 77
fi
for tool in cpack dpkg-deb mkfs.ext4; do
	command -v "$tool" >/dev/null || {
		echo "$prog: $tool is not installed (install-deps.sh at the repository root installs it)" >&2
		exit 1
	}
done

mkdir -p "$out/package"
rm -f "$out"/package/*.deb
(cd "$build" && cpack -G DEB -B "$out/package" >"$out/cpack.log" 2>&1) || {
	echo "$prog: cpack failed:" >&2
	cat "$out/cpack.log" >&2
	exit 1
}
deb=$(ls "$out"/package/*.deb)
echo "$prog: package $deb"
dpkg-deb -f "$deb" Depends Recommends

# The package's dependencies and recommendations (first of each set of alternatives), without
# their versions, as apt installs them: the root is made with them so that dpkg -i in the
# guest needs no network.
depends=$(dpkg-deb -f "$deb" Depends Recommends | sed 's/^[A-Za-z]*: //' | tr ',' '\n' |
	sed 's/(.*)//; s/|.*//' | tr -d ' ')
# shellcheck disable=SC2086
root=$("$here/debian-root.sh" "${IOMMUD_VM_CACHE:-$out/cache}" $depends)

stage=$out/stage
rm -rf "$stage"
cp -a "$root" "$stage"
cp "$deb" "$stage/root/iommud.deb"
cp "$here/systemd-guest.sh" "$stage/root/systemd-guest.sh"
# The survival steps' DMA client, linked against the package's libiommuctl.
cp "$build/tests/systemd-dma-loop" "$stage/root/systemd-dma-loop"
cp "$here/iommud-vm-test.service" "$stage/etc/systemd/system/"
ln -sf ../iommud-vm-test.service "$stage/etc/systemd/system/multi-user.target.wants/"
rm -f "$out/disk.img"
mkfs.ext4 -q -d "$stage" "$out/disk.img" 1G
rm -rf "$stage"
echo "$prog: $out/disk.img ($(du -h "$out/disk.img" | cut -f1) used)"
