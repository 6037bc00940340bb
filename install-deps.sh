#!/bin/sh
# Installs every package iommud needs to build, run and test, from Debian 12's own suites.
# Idempotent: safe to run again; it only installs what is missing. Must run as root.
set -eu

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps.sh: must run as root (it calls apt-get install)" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# The iommufd uAPI headers first appear in Linux 6.2; Debian 12's linux-libc-dev is 6.1, so the
# headers come from the newest linux-headers-6.12.*-common the archive offers.
newest_headers() {
	apt-cache search --names-only '^linux-headers-6\.12\.[0-9.]*\+deb12-common$' |
		cut -d' ' -f1 | sort -V | tail -n 1
}

headers=$(newest_headers)
if [ -z "$headers" ]; then
	apt-get update -qq
	headers=$(newest_headers)
fi
if [ -z "$headers" ]; then
	echo "install-deps.sh: no linux-headers-6.12.*-common package found; check the apt sources" >&2
	exit 1
fi

# debootstrap and e2fsprogs (mkfs.ext4 -d) make the systemd VM tier's Debian root and disk;
# dpkg-dev's dpkg-shlibdeps gives the Debian package (cpack -G DEB) its Depends.
# prometheus: its promtool and server are what the exporter's tests check the metrics with.
# On a machine that boots systemd the package also enables its own server on :9090; stop it
# with 'systemctl disable --now prometheus' where that is not wanted.
packages="build-essential cmake pkg-config clang libclang-rt-14-dev clang-format
	libevent-dev libprotobuf-c-dev protobuf-c-compiler libsystemd-dev libbpf-dev bpftool
	systemtap-sdt-dev
	libbsd-dev libinih-dev
	busybox-static qemu-system-x86 cpio gzip systemd prometheus
	debootstrap e2fsprogs dpkg-dev
	$headers"

missing=""
for p in $packages; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing
fi
