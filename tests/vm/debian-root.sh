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
rm -rf "$root.tmp"
# debootstrap's own log says what failed; keep it where the caller can find it.
if ! debootstrap --variant=minbase --include="$include" bookworm "$root.tmp" "$mirror" \
	>"$cache/debootstrap.log" 2>&1; then
	echo "$prog: debootstrap failed; the end of $cache/debootstrap.log:" >&2
	tail -n 20 "$cache/debootstrap.log" >&2
	rm -rf "$root.tmp"
	exit 1
fi
# What a booted guest does not need and a disk image should not carry.
rm -rf "$root.tmp"/var/cache/apt/archives/*.deb "$root.tmp"/var/lib/apt/lists/*
# The guest's console is the serial line, which the host reads; no login prompt on it.
ln -sf /dev/null "$root.tmp/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$root.tmp/etc/systemd/system/getty@tty1.service"
echo iommud-vm >"$root.tmp/etc/hostname"
printf '/dev/vda / ext4 rw 0 1\n' >"$root.tmp/etc/fstab"
touch "$root.tmp/.complete"
rm -rf "$root"
mv "$root.tmp" "$root"
echo "$root"
