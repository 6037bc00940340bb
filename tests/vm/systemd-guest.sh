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
# the same names from this file, so adding a step is adding its function.
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
# the watchdog step takes seconds, not so much that a start or a re-execution under TCG (the
# probes' programs loaded, a lease taken over) misses its first ping; it is there before the
# daemon first starts.
step_systemd_install() {
	mkdir -p /etc/systemd/system/iommud.service.d /etc/iommud
	printf '[Service]\nWatchdogSec=20s\nTimeoutAbortSec=2s\n' \
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
	# The lease's memory file is in systemd's store beside the record, and stats count both.
	iommuctl stats | grep '^store ' | tee /tmp/store
	in_use=$(awk '$1 == "store" && $2 == "in" { print $4 }' /tmp/store)
	[ "${in_use:-0}" -ge 2 ] || fail "iommuctl stats counts no record and file in the store"
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

# ---- survival: a lease's mappings and its device's DMA across the daemon's restarts ----------
# systemd-dma-loop holds the lease, maps two pages of a memfd into the edu's domain and keeps the
# edu copying through them; it writes its counters to dma_status (see its header).
dma_status=/run/systemd-dma-loop.status
dma_pid=/run/systemd-dma-loop.pid

dma_field() {
	tr ' ' '\n' <"$dma_status" | sed -n "s/^$1=//p"
}

dma_landed_past() {
	[ -e "$dma_status" ] && [ "$(dma_field landed)" -ge "$1" ]
}

dma_start() {
	rm -f "$dma_status"
	/root/systemd-dma-loop "$lease" "$(edu_name)" "$dma_status" >>/tmp/systemd-dma-loop.log 2>&1 &
	echo $! >"$dma_pid"
	wait_for dma_landed_past 32
	cat "$dma_status"
}

lease_domain() {
	iommuctl --lease "$lease" domains | awk 'NR > 1 { print $1; exit }'
}

# The message names the lease by its field, as every line about an object does.
adoptions() {
	journalctl --sync 2>/dev/null || true
	journalctl -u iommud -o cat IOMMUD_LEASE="$lease" |
		grep -c "lease '{IOMMUD_LEASE}' adopted from the state record" || true
}

# Whether the client runs on a connection made after generation $1, or was told its lease is
# gone; a client that gave up otherwise fails the step at once.
dma_moved_on() {
	case $(dma_field state) in
	lost) return 0 ;;
	running) [ "$(dma_field generation)" -gt "$1" ] ;;
	*) cat "$dma_status" /tmp/systemd-dma-loop.log; exit 1 ;;
	esac
}

# What the client, the unit and the daemon's journal say, for a step that failed.
diagnose() {
	cat "$dma_status" /tmp/systemd-dma-loop.log 2>/dev/null || true
	systemctl status --no-pager iommud.service | head -n 5 || true
	journalctl -u iommud -o short-monotonic --no-pager | tail -n 40
}

# What survive_check compares with: the lease's mappings and the client's counters.
survive_note() {
	domain=$(lease_domain)
	before=$(iommuctl --lease "$lease" mappings "$domain")
	generation=$(dma_field generation)
	adopted=$(adoptions)
	window=$(dma_field window)
	window_faults=$(dma_field window_faults)
	opened=$(dma_field opened)
	died_at=$(cut -d' ' -f1 /proc/uptime)
}

# The lease must be back as it was (ListMappings the same, the journal saying it adopted the
# lease) and every byte of DMA issued since the client reconnected land. With "keep" (a death:
# the next daemon takes the lease's kernel objects over) the client kept its edu's descriptor
# and went on copying while no daemon ran: no round in the restart window may fault, and some
# must have run in it. After a stop (the daemon tore the objects down, the client let the
# descriptor go) the window's rounds are printed.
survive_check() {
	wait_for dma_moved_on "$generation" || { diagnose; return 1; }
	[ "$(dma_field state)" = running ] || fail "the client lost its lease: $(cat "$dma_status")"
	wait_for dma_landed_past $(($(dma_field landed) + 32))
	after=$(iommuctl --lease "$lease" mappings "$domain")
	echo "$after"
	[ "$before" = "$after" ] || fail "ListMappings differs; before the restart: $before"
	[ "$(adoptions)" -gt "$adopted" ] || {
		diagnose
		fail "the journal does not say lease $lease was adopted"
	}
	cat "$dma_status"
	[ "$(dma_field faults_after)" -eq 0 ] || fail "DMA issued while the daemon was up faulted"
	# systemd answers the daemon's BARRIER=1 after each removal of kernel descriptors from
	# the store (a stop's, a lease's end).
	! journalctl -u iommud -o cat | grep 'did not answer BARRIER=1' ||
		fail "systemd did not answer the daemon's BARRIER=1"
	in_window=$(($(dma_field window) - window))
	faulted=$(($(dma_field window_faults) - window_faults))
	echo "iommud-vm: restart window: $in_window DMA rounds ran in it, $faulted faulted;" \
		"$(ready_after "$died_at") with $(echo "$after" | grep -c '^0x') mappings"
	[ "${1:-keep}" = keep ] || return 0
	[ "$(dma_field opened)" -eq "$opened" ] || fail "the client opened its edu again"
	[ "$in_window" -gt 0 ] || fail "no DMA round ran while the daemon was away"
	[ "$faulted" -eq 0 ] || fail "$faulted DMA rounds faulted while the daemon was away"
}

# The time from uptime $1 (the step about to act: kill, stop, SIGSTOP) to the READY=1 that made
# the unit active again, a watchdog step's wait for the timeout included; a re-execution in
# place leaves it active (RELOADING=1), which has no such time.
ready_after() {
	ready_us=$(service_property ActiveEnterTimestampMonotonic)
	awk -v from="$1" -v to="$ready_us" 'BEGIN {
		ms = to / 1000 - from * 1000
		if (ms >= 0) printf "ready %.0f ms after the step acted", ms; else printf "active throughout"
	}'
}

# Runs "$@", a way for the daemon to die or re-execute, with the DMA loop going.
survive() {
	survive_note
	"$@"
	survive_check keep
}

step_systemd_dma_start() {
	dma_start
}

# The main process alone: the daemon is one process, and systemd 252's walk of the unit's cgroup
# for others can fail with EIO on a multithreaded one that the SIGKILL is tearing down (the kill
# done all the same), which would fail the step for systemd's sake.
step_systemd_survive_kill() {
	survive systemctl kill -s KILL --kill-who=main iommud.service
}

# systemd's restart: the daemon asks systemd (over D-Bus) what its SIGTERM is for, and for a
# restart leaves the leases in the store as a kill would; systemd keeps the store across the
# restart job (252 included), so the next daemon takes the lease over and the client's DMA goes
# on through the restart, as through a kill.
step_systemd_survive_restart() {
	stopping=$(service_property MainPID)
	survive systemctl restart iommud.service
	journalctl --sync 2>/dev/null || true
	journalctl -o cat _SYSTEMD_UNIT=iommud.service _PID="$stopping" |
		grep "stopping for systemd's restart" ||
		fail "the stopping daemon (pid $stopping) did not take its SIGTERM for a restart"
}

# A stop, then a start: the lease survives it where the manager keeps the descriptor store
# across the stop (FileDescriptorStorePreserve=yes, systemd 254 and later); where it ends (252
# drops the store of a unit stopped with no job queued), what must hold is that the client is
# told so instead of being handed a new, empty lease. A stop tears the lease's kernel objects
# down (after it, no device may go on with DMA into memory no daemon accounts for): the client
# is told to let its edu go at the hang-up, and the rounds that ran in the window are printed,
# not asserted.
step_systemd_stop_start() {
	kill -USR1 "$(cat "$dma_pid")"
	wait_for sh -c "grep -q 'let_go=1' $dma_status"
	survive_note
	# The check below reads the stopping daemon's lines from this step on, and only those:
	# another daemon's wait (at its start, earlier or after the restart) must not pass for it.
	stopping=$(service_property MainPID)
	rm -f /tmp/iommud-restart.cursor
	journalctl -q -n 1 --cursor-file=/tmp/iommud-restart.cursor >/dev/null
	systemctl stop iommud.service
	systemctl start iommud.service
	wait_for dma_moved_on "$generation" || { diagnose; return 1; }
	if [ "$(dma_field state)" = lost ]; then
		grep "holds no lease '$lease'" /tmp/systemd-dma-loop.log ||
			fail "the client was not told that its lease is gone"
		echo "iommud-vm: systemd $(systemctl --version | awk 'NR == 1 { print $2 }')" \
			"dropped the store at the stop: the lease ended, and the client was told"
		dma_start
		return
	fi
	survive_check let_go
	# The stop took the lease's kernel descriptors out of the store and waited for systemd to
	# have read that (BARRIER=1) before tearing them down.
	journalctl -o cat --after-cursor="$(cat /tmp/iommud-restart.cursor)" \
		_SYSTEMD_UNIT=iommud.service _PID="$stopping" |
		grep 'has read every removal from its store' ||
		fail "the stopping daemon (pid $stopping) never saw systemd answer its BARRIER=1"
}

# ExecReload= sends SIGUSR2 with procps' /bin/kill, which the package depends on.
reload() {
	systemctl reload iommud.service || { diagnose; fail "systemctl reload iommud failed"; }
}

step_systemd_survive_reload() {
	pid=$(service_property MainPID)
	survive reload
	# Under the hardened unit the re-execution has been seen to end in a restart by systemd
	# (a new main pid), which the lease survives too: said, not asserted yet.
	[ "$(service_property MainPID)" = "$pid" ] || {
		echo "NOTE: the daemon did not re-execute in place: main pid $pid is now" \
			"$(service_property MainPID)"
		journalctl -u iommud -o cat --no-pager | grep -iE 'exec|signal' | tail -n 5 || true
	}
}

# A daemon whose loop stops pinging is killed by systemd and, as a failure, restarted; the
# lease survives it as a crash.
step_systemd_watchdog() {
	survive watchdog_fires
}

step_systemd_dma_stop() {
	kill -TERM "$(cat "$dma_pid")"
	wait_for sh -c "grep -q 'state=stopped' $dma_status"
	cat "$dma_status"
	[ "$(dma_field faults_after)" -eq 0 ] || fail "DMA issued while the daemon was up faulted"
}

watchdog_fires() {
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
