#!/bin/sh
# Makes, once, the Debian 12 root that the systemd VM tier boots (tests/vm/README.md, "systemd
# as PID 1"), and prints the folder that holds it. The root is debootstrap's minbase with
# systemd as PID 1, udev (without it every boot waits 90 s for device units) and the packages
# named on the command line (the daemon's runtime libraries). It is cached in CACHE_DIR under a
# name made from the package list, so a rerun with the same list reuses it and a changed list
# builds a new one beside it.
#
# usage: debian-root.sh CACHE_DIR PACKAGE...
# Must run as root: debootstrap makes device nodes and files owned by the guest's users.
set -eu

prog=debian-root.sh
[ $# -ge 1 ] || { echo "usage: $prog CACHE_DIR PACKAGE..." >&2; exit 2; }
cache=$1
shift
mirror=${IOMMUD_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ "$(id -u)" -ne 0 ]; then
	echo "$prog: must run as root (debootstrap makes device nodes and owned files)" >&2
	exit 1
fi
command -v debootstrap >/dev/null || {
	echo "$prog: debootstrap is not installed (install-deps.sh at the repository root installs it)" >&2
	exit 1
}

include="systemd-sysv,udev"
for p in "$@"; do include="$include,$p"; done
key=$(printf '%s\n' bookworm minbase "$include" | sha256sum | cut -c1-16)
root=$cache/debian-bookworm-$key
if [ -f "$root/.complete" ]; then
	echo "$root"
	exit 0
fi

mkdir -p "$cache"
# Another run may be making the same root in the same cache: each makes its own, the last
# rename wins, and both are the same recipe.
tmp=$root.tmp.$$
rm -rf "$tmp"
# debootstrap's own log says what failed; keep it where the caller can find it.
if ! debootstrap --variant=minbase --include="$include" bookworm "$tmp" "$mirror" \
	>"$tmp.log" 2>&1; then
	echo "$prog: debootstrap failed; the end of $tmp.log:" >&2
	tail -n 20 "$tmp.log" >&2
	rm -rf "$tmp"
	exit 1
fi
# What a booted guest does not need and a disk image should not carry.
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
# The guest's console is the serial line, which the host reads; no login prompt on it.
ln -sf /dev/null "$tmp/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$tmp/etc/systemd/system/getty@tty1.service"
echo iommud-vm >"$tmp/etc/hostname"
printf '/dev/vda / ext4 rw 0 1\n' >"$tmp/etc/fstab"
touch "$tmp/.complete"
rm -f "$tmp.log"
if [ -f "$root/.complete" ]; then
	rm -rf "$tmp" # another run finished the same root first, and may be reading it
else
	rm -rf "$root"
	mv "$tmp" "$root"
fi
echo "$root"
