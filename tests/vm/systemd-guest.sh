#!/bin/bash
# The systemd VM tier's guest side (tests/vm/README.md, "systemd as PID 1"): run by
# iommud-vm-test.service on a Debian 12 root booted with systemd as PID 1. It installs the
# project's Debian package as an administrator would, then runs each step below, each between
# the IOMMUD-VM-BEGIN and IOMMUD-VM-RESULT markers that run-vm.sh's console parser reads, and
# powers the machine off.
#
# A step is a function "step_NAME() {" at the start of a line; it fails when a command in it
# fails (set -e) and is skipped when it returns 77. Steps run in the order they are written here
# and share the daemon's state, each leaving it as the next expects. tests/CMakeLists.txt reads
# the same names from this file, so adding a step (the daemon's survival of kill, restart and
# re-exec, say) is adding its function.
set -u

exec </dev/null >/dev/ttyS0 2>&1

steps=$(sed -n 's/^step_\([a-z0-9_]*\)() {$/\1/p' "$0")

lease=vm-systemd
edu_id=1234:11e8

fail() {
	echo "FAIL: $*"
	return 1
}

# Waits up to 60 s (a guard against a hang, not a measure) for a command to succeed.
wait_for() {
	for _ in $(seq 600); do
		"$@" && return 0
		sleep 0.1
	done
	fail "still not true after 60 s: $*"
}

service_property() {
	systemctl show --value -p "$1" iommud.service
}

# Every edu to vfio-pci, as an administrator would before the daemon starts (section 1 of
# docs/operations.md); its nodes appear while the package's udev rules are not there yet.
bind_edus() {
	for dev in /sys/bus/pci/devices/*; do
		[ "$(cat "$dev/vendor"):$(cat "$dev/device")" = 0x1234:0x11e8 ] || continue
		echo vfio-pci >"$dev/driver_override"
		echo "${dev##*/}" >/sys/bus/pci/drivers_probe
		wait_for test -e "$dev/driver"
	done
}

# The package's postinst makes the user, applies the udev rules and enables the socket; the
# daemon itself starts only at the first connection. The drop-in shortens the watchdog so that
# the watchdog step takes seconds; it is there before the daemon first starts.
step_systemd_install() {
	mkdir -p /etc/systemd/system/iommud.service.d /etc/iommud
	printf '[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n' \
		>/etc/systemd/system/iommud.service.d/vm-test.conf
	# debug: the journal step looks for the map lines.
	printf '[daemon]\nlog-level = debug\n' >/etc/iommud/iommud.conf
	bind_edus
	dpkg -i /root/iommud.deb
	id iommud
	systemctl is-enabled iommud.socket
	systemctl is-active iommud.socket
	[ "$(service_property ActiveState)" = inactive ] ||
		fail "iommud.service runs before any client connected"
	ls -l /dev/iommu /dev/vfio /dev/vfio/devices 2>/dev/null || true
	for node in /dev/vfio/devices/* /dev/iommu; do
		[ -e "$node" ] || continue
		[ "$(stat -c %G "$node")" = iommud ] || fail "$node is not in group iommud"
	done
}

# The first connection starts the daemon (socket activation); Type=notify makes the unit
# active only once it said READY=1, with its status line.
step_systemd_activation() {
	iommuctl hello
	[ "$(service_property ActiveState)" = active ] || fail "iommud.service is not active"
	status=$(service_property StatusText)
	echo "status: $status"
	case $status in "serving on the "*) ;; *) fail "no READY status line from the daemon" ;; esac
	pid=$(service_property MainPID)
	uid=$(awk '/^Uid:/ { print $3 }' "/proc/$pid/status")
	[ "$uid" = "$(id -u iommud)" ] || fail "the daemon runs as uid $uid, not as iommud"
	# The unit's capabilities and syscall filter leave the probes their best tier: these
	# kernels have BTF and fentry.
	log=$(journalctl -u iommud -o cat)
	probes=$(echo "$log" | grep 'map path probes: tier' | tail -n 1)
	echo "$probes"
	case $probes in
	*"tier fentry"*) ;;
	*)
		echo "$log" | grep -iE 'probe|libbpf'
		fail "the probes did not attach at fentry"
		;;
	esac
}

edu_name() {
	iommuctl devices | awk -v id="$edu_id" '$3 == id { print $1; exit }'
}

# The hardened daemon (its own user, a private /dev, a syscall filter) binds the edu, attaches
# it to a domain and maps memory for it.
step_systemd_map() {
	iommuctl devices
	edu=$(edu_name)
	[ -n "$edu" ] || fail "the daemon offers no edu ($edu_id)"
	domain=$(iommuctl --lease "$lease" domain alloc "$edu")
	iommuctl --lease "$lease" attach "$edu" "$domain"
	iommuctl --lease "$lease" map "$domain" --memfd 2M
	iommuctl --lease "$lease" mappings "$domain" | tee /tmp/mappings
	[ "$(grep -c '^0x' /tmp/mappings)" -eq 1 ] || fail "the map is not listed"
}

# Journal lines about objects carry the fields that find them.
step_systemd_journal() {
	edu=$(edu_name)
	domain=$(iommuctl --lease "$lease" domains | awk 'NR > 1 { print $1; exit }')
	journalctl --sync 2>/dev/null || true
	took=$(journalctl -u iommud -o cat IOMMUD_LEASE="$lease" IOMMUD_DEVICE="$edu")
	echo "device line: $took"
	[ -n "$took" ] || fail "no line with IOMMUD_LEASE=$lease and IOMMUD_DEVICE=$edu"
	mapped=$(journalctl -u iommud -o cat IOMMUD_LEASE="$lease" IOMMUD_DOMAIN="$domain")
	echo "domain lines: $mapped"
	case $mapped in *mapped*) ;; *) fail "no map line with IOMMUD_DOMAIN=$domain" ;; esac
	tenant=$(journalctl -u iommud -o export IOMMUD_LEASE="$lease" | sed -n 's/^IOMMUD_TENANT=//p' |
		sort -u)
	echo "tenant: $tenant"
	# This script is the client: root, in the cgroup of the service that runs it.
	[ "$tenant" = "0:$(cut -d: -f3 /proc/self/cgroup)" ] || fail "IOMMUD_TENANT is '$tenant'"
}

step_systemd_security() {
	out=$(systemd-analyze security --no-pager iommud.service)
	echo "$out" | grep -E '✗|Overall'
	score=$(echo "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
	awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure $score is above 2.0"
}

# A daemon whose loop stops pinging is killed by systemd and, as a failure, restarted.
step_systemd_watchdog() {
	old=$(service_property MainPID)
	restarts=$(service_property NRestarts)
	kill -STOP "$old"
	echo "stopped the daemon (pid $old); waiting for the watchdog"
	wait_for sh -c "[ \"\$(systemctl show --value -p NRestarts iommud.service)\" -gt $restarts ]"
	wait_for systemctl is-active --quiet iommud.service
	journalctl -u iommud -o cat | grep -i 'watchdog timeout' || fail "no watchdog timeout logged"
	[ "$(service_property MainPID)" != "$old" ] || fail "the same daemon runs on"
	iommuctl hello >/dev/null
}

echo "IOMMUD-VM-BOOTED $(uname -r) systemd $(systemctl --version | awk 'NR == 1 { print $2 }')"
systemd-analyze time || true
for step in $steps; do
	echo "IOMMUD-VM-BEGIN $step"
	echo "iommud-vm: guest uptime $(cut -d' ' -f1 /proc/uptime) s"
	(set -e; "step_$step")
	rc=$?
	case $rc in 0) status=PASS ;; 77) status=SKIP ;; *) status=FAIL ;; esac
	echo "IOMMUD-VM-RESULT $step $status $rc"
done
echo "IOMMUD-VM-DONE"
# Where the boot's time went, for a run that took long: each journal line that came more than
# 5 s after the one before it, with that one.
journalctl -b -o short-monotonic --no-pager | awk '
	{ t = substr($1, 2) + 0 }
	t - last > 5 { print "iommud-vm: slow boot: " prev; print "iommud-vm: slow boot: " $0 }
	{ last = t; prev = $0 }'
# What 'systemctl poweroff' does, without asking logind over D-Bus, which minbase lacks.
systemctl start --no-block --job-mode=replace-irreversibly poweroff.target
