// SPDX-License-Identifier: MIT
/*
 * The loader of iommud.bpf.c (through the skeleton bpftool made at build time) and the
 * in-process histograms. Each tier is tried from the highest allowed down: its programs are
 * loaded (a program whose kernel function is missing is left out first), then attached in
 * entry/exit pairs; the first tier with one pair attached is kept. Every pair or tier that did
 * not make it leaves a line in detached.
 */
#define _GNU_SOURCE /* vasprintf */
#include "probes.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <names.h>

#include "histogram.h"
#include "iommud.skel.h"
#include "iommud_plain.skel.h"
#include "log.h"

#define TIER(t) IOMMUD__V1__PROBE_TIER__PROBE_TIER_##t

/* In-process histograms, indexed as the kernel side's keys are. */
#define IN_PROCESS_SLOTS (IOMMUD_OP_COUNT * IOMMUD_SIZE_COUNT * IOMMUD_TENANT_SLOTS)

enum attach_kind {
	ATTACH_TRACE,	 /* fentry and fexit */
	ATTACH_KPROBE,	 /* kprobe and kretprobe */
	ATTACH_KSYSCALL, /* the same on a system call, through its arch wrapper */
	ATTACH_RAW_TP,	 /* raw tracepoints, by name: no tracefs needed */
};

/* Which setting of probes_options.driver_latency a spec serves: the driver layer timed from
 * its functions' entries to their tracepoints, or counted at the tracepoints alone. */
enum driver_timing {
	DRIVER_ANY,
	DRIVER_TIMED,
	DRIVER_COUNTED,
};

/* One thing measured at one tier: an entry program on the first of targets the kernel has,
 * and the program that ends what it starts (or nothing: one event), either on the same target
 * or, for the driver layer, on the kernel's own tracepoint inside it (exit_tp). */
struct probe_spec {
	const char *what;
	Iommud__V1__ProbeTier tier;
	bool fault; /* counts faults: kept at every tier from its own up */
	enum attach_kind kind;
	const char *entry, *exit;
	const char *targets[2];
	/* The raw tracepoint exit attaches to, or NULL: the entry's target. Without exit, the
	 * tracepoint whose program another spec of the tier attaches. */
	const char *exit_tp;
	/* The system call hook: measures, less precisely, the commands whose handler did not
	 * attach (a kernel without that function, or with it in a module). */
	bool fallback;
	/* An ioctl handler's commands (IOMMUD_HANDLES_*), left to it while it is attached. */
	__u32 handles;
	enum driver_timing timing;
};

/* An entry/exit pair on the map path, and one event counting faults. */
#define PAIR(tier, kind, what, entry, exit, target, alt_target)                                    \
	{                                                                                          \
		what, TIER(tier), false, kind, entry, exit, {target, alt_target}, NULL, false, 0,  \
			DRIVER_ANY                                                                 \
	}
/* An ioctl handler's pair at the fentry tier, and the system call's for what no handler takes. */
#define HANDLER(what, prog, target, handles)                                                       \
	{                                                                                          \
		what, TIER(FENTRY), false, ATTACH_TRACE, #prog "_fentry", #prog "_fexit",          \
			{target, NULL}, NULL, false, handles, DRIVER_ANY                           \
	}
#define SYSCALL_FALLBACK                                                                           \
	{                                                                                          \
		"map/unmap ioctl", TIER(FENTRY), false, ATTACH_TRACE, "ioctl_fentry",              \
			"ioctl_fexit", {"__x64_sys_ioctl"}, NULL, true, 0, DRIVER_ANY              \
	}
#define FAULT(tier, kind, what, prog, target)                                                      \
	{                                                                                          \
		what, TIER(tier), true, kind, prog, NULL, {target}, NULL, false, 0, DRIVER_ANY     \
	}
/* A driver function, timed at the fentry and the kprobe tier from its entry (the programs
 * prog_fentry and prog_kprobe) to its tracepoint (end_prog on raw tracepoint tp). */
#define DRIVER_PAIR(tier, kind, suffix, what, prog, target, alt_target, end_prog, tp)              \
	{                                                                                          \
		what, TIER(tier), false, kind, #prog suffix, end_prog, {target, alt_target}, tp,   \
			false, 0, DRIVER_TIMED                                                     \
	}
#define DRIVER_PAIRS(what, prog, target, alt_target, end_prog, tp)                                 \
	DRIVER_PAIR(FENTRY, ATTACH_TRACE, "_fentry", what, prog, target, alt_target, end_prog,     \
		    tp),                                                                           \
		DRIVER_PAIR(KPROBE, ATTACH_KPROBE, "_kprobe", what, prog, target, alt_target,      \
			    end_prog, tp)
/* A driver tracepoint counting the calls of the ioctls the fentry or the kprobe tier tracks. */
#define DRIVER_COUNT(tier, what, prog, tp)                                                         \
	{                                                                                          \
		what, TIER(tier), false, ATTACH_RAW_TP, prog, NULL, {tp}, NULL, false, 0,          \
			DRIVER_COUNTED                                                             \
	}
#define DRIVER_COUNTS(what, prog, tp)                                                              \
	DRIVER_COUNT(FENTRY, what, prog, tp), DRIVER_COUNT(KPROBE, what, prog, tp)

/* iommu_unmap_fast ends at the iommu:unmap that iommu_unmap's pair attaches (both reach it
 * through __iommu_unmap): attached twice, its program would run twice per event. So its spec
 * names that tracepoint without a program of its own, and stays off when the spec with the
 * program did not attach. */
static const struct probe_spec specs[] = {
	HANDLER("IOAS map ioctl", ioas_map, "iommufd_ioas_map", IOMMUD_HANDLES_IOAS_MAP),
	HANDLER("IOAS map-file ioctl", ioas_map_file, "iommufd_ioas_map_file",
		IOMMUD_HANDLES_IOAS_MAP_FILE),
	HANDLER("IOAS unmap ioctl", ioas_unmap, "iommufd_ioas_unmap", IOMMUD_HANDLES_IOAS_UNMAP),
	HANDLER("VFIO type1 map/unmap ioctl", type1, "vfio_iommu_type1_ioctl",
		IOMMUD_HANDLES_TYPE1),
	SYSCALL_FALLBACK,
	PAIR(KPROBE, ATTACH_KSYSCALL, "map/unmap ioctl", "ioctl_kprobe", "ioctl_kretprobe", "ioctl",
	     NULL),
	DRIVER_PAIRS("iommu_map", map, "iommu_map_nosync", "iommu_map", "map_end", "map"),
	DRIVER_PAIRS("iommu_unmap", unmap, "iommu_unmap", NULL, "unmap_end", "unmap"),
	DRIVER_PAIRS("iommu_unmap_fast", unmap_fast, "iommu_unmap_fast", NULL, NULL, "unmap"),
	DRIVER_COUNTS("iommu:map", "map_count", "map"),
	DRIVER_COUNTS("iommu:unmap", "unmap_count", "unmap"),
	PAIR(TRACEPOINT, ATTACH_RAW_TP, "iommu:map", "map_tp", NULL, "map", NULL),
	PAIR(TRACEPOINT, ATTACH_RAW_TP, "iommu:unmap", "unmap_tp", NULL, "unmap", NULL),
	FAULT(KPROBE, ATTACH_KPROBE, "VT-d faults", "fault_vtd", "dmar_fault"),
	FAULT(KPROBE, ATTACH_KPROBE, "virtio-iommu faults", "fault_virtio", "viommu_event_handler"),
	FAULT(TRACEPOINT, ATTACH_RAW_TP, "iommu:io_page_fault", "fault_reported", "io_page_fault"),
};

#define N_SPECS (sizeof(specs) / sizeof(specs[0]))

/* A cgroup registered to a tenant slot: by a tenant (one per cgroup, the latest), or lent to a
 * delegation's VMM (as many as there are delegations). */
struct cgroup_reg {
	uint64_t id;
	unsigned slot;
	uint64_t lent; /* the lending's token (probes_lend_cgroup), 0: a tenant's */
};

/* Where cgroup v2 paths (/proc/PID/cgroup's) are rooted. */
#define CGROUP_ROOT "/sys/fs/cgroup"

struct probes {
	Iommud__V1__ProbeTier tier;
	bool in_process;
	bool driver_latency;   /* asked for (probes_options); probes_driver_latency: and done */
	unsigned tenant_slots; /* the kernel side's histograms hold this many */
	__u64 attribution_gen; /* the last written to the object's attribution map */
	__u32 kernel_tgid;     /* this process as the programs see it (learn_daemon) */
	__u32 handled;	       /* IOMMUD_HANDLES_* of the handlers attached */
	char **detached;       /* owned lines: the start's, then the last re-attach's refusals */
	size_t n_detached;
	size_t n_start_detached; /* the lines probes_start left */
	struct iommud_bpf *skel; /* NULL at tier OFF */
	bool plain; /* skel is the object built without per-CPU kernel variables (open_object) */
	struct bpf_link *links[2 * N_SPECS]; /* entry and exit of each spec */
	bool attached[N_SPECS];		     /* what the tier attached at start, kept while off */
	const char *target[N_SPECS];	     /* the target chosen for each spec, or NULL */
	bool said_missing[N_SPECS];	     /* a spec of several tiers says so once */
	bool switched_off;	   /* probes_set_attached(false): no links, no in-process records */
	struct iommud_hist *local; /* IN_PROCESS_SLOTS of them when in_process, else NULL */
	/* The cgroups registered for attribution (tenant_cgroups' entries are what they make). */
	struct cgroup_reg *cgroups;
	size_t n_cgroups;
	uint64_t lendings; /* tokens given so far */
	/* One histogram per possible CPU: what a per-CPU map lookup writes, allocated with the
	 * skeleton and reused by every read. */
	__u64 *percpu_values;
	size_t n_cpus;
};

static void say(struct probes *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(struct probes *p, const char *fmt, ...)
{
	char **lines = realloc(p->detached, (p->n_detached + 1) * sizeof(*lines));
	va_list ap;
	char *line;
	int n;

	if (!lines)
		return;
	p->detached = lines;
	va_start(ap, fmt);
	n = vasprintf(&line, fmt, ap);
	va_end(ap);
	if (n >= 0)
		p->detached[p->n_detached++] = line;
}

static int libbpf_to_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	char line[512];

	if (level == LIBBPF_DEBUG)
		return 0;
	(void)vsnprintf(line, sizeof(line), fmt, ap);
	line[strcspn(line, "\n")] = 0;
	log_debug("%s", line);
	return 0;
}

static bool spec_in_tier(const struct probe_spec *s, Iommud__V1__ProbeTier tier)
{
	return s->fault ? tier >= s->tier : tier == s->tier;
}

/* A spec of the tier that also serves the driver layer's setting. */
static bool spec_wanted(const struct probes *p, const struct probe_spec *s,
			Iommud__V1__ProbeTier tier)
{
	if (s->timing != DRIVER_ANY && (s->timing == DRIVER_TIMED) != p->driver_latency)
		return false;
	return spec_in_tier(s, tier);
}

/* The first target the kernel's BTF has as a function; the last one when none is (a raw
 * tracepoint or a function BTF does not list: the attach says whether it exists). */
static const char *choose_target(const struct probe_spec *s, const struct btf *vmlinux)
{
	size_t n = s->targets[1] ? 2 : 1;

	if (s->kind == ATTACH_RAW_TP || s->kind == ATTACH_KSYSCALL || !vmlinux)
		return s->targets[0];
	for (size_t i = 0; i < n; i++)
		if (btf__find_by_name_kind(vmlinux, s->targets[i], BTF_KIND_FUNC) >= 0)
			return s->targets[i];
	return NULL;
}

static struct bpf_program *program(struct probes *p, const char *name)
{
	return name ? bpf_object__find_program_by_name(p->skel->obj, name) : NULL;
}

/* Leaves out every program not of this tier, and those whose function the kernel lacks; a
 * tracepoint program ending the driver layer serves one spec at each latency tier. A missing
 * ioctl handler goes unsaid here: the system call hook measures its commands (try_tier says
 * when neither does). */
static void choose_programs(struct probes *p, Iommud__V1__ProbeTier tier, const struct btf *btf)
{
	struct bpf_program *prog;

	bpf_object__for_each_program(prog, p->skel->obj)(void)
		bpf_program__set_autoload(prog, false);
	(void)bpf_program__set_autoload(p->skel->progs.learn_daemon, true);
	for (size_t i = 0; i < N_SPECS; i++) {
		const struct probe_spec *s = &specs[i];
		struct bpf_program *entry = program(p, s->entry), *exit = program(p, s->exit);
		bool keep = spec_wanted(p, s, tier);

		p->target[i] = keep ? choose_target(s, btf) : NULL;
		if (keep && !p->target[i] && !s->handles && !p->said_missing[i]) {
			say(p, "%s: this kernel has no function %s", s->what, s->targets[0]);
			p->said_missing[i] = true;
		}
		keep = keep && p->target[i];
		if (!keep)
			continue;
		if (s->kind == ATTACH_TRACE) {
			(void)bpf_program__set_attach_target(entry, 0, p->target[i]);
			if (!s->exit_tp && exit)
				(void)bpf_program__set_attach_target(exit, 0, p->target[i]);
		}
		(void)bpf_program__set_autoload(entry, true);
		if (exit)
			(void)bpf_program__set_autoload(exit, true);
	}
}

static struct bpf_link *attach_one(struct bpf_program *prog, enum attach_kind kind,
				   const char *target, bool is_exit)
{
	switch (kind) {
	case ATTACH_TRACE:
		return bpf_program__attach_trace(prog);
	case ATTACH_KPROBE:
		return bpf_program__attach_kprobe(prog, is_exit, target);
	case ATTACH_KSYSCALL: {
		LIBBPF_OPTS(bpf_ksyscall_opts, opts, .retprobe = is_exit);

		return bpf_program__attach_ksyscall(prog, target, &opts);
	}
	case ATTACH_RAW_TP:
		return bpf_program__attach_raw_tracepoint(prog, target);
	}
	return NULL;
}

/* Attaches entry and exit together, or neither: an entry alone would only fill the maps. */
static bool attach_spec(struct probes *p, size_t i)
{
	const struct probe_spec *s = &specs[i];
	struct bpf_link **links = &p->links[2 * i];
	int err;

	links[0] = attach_one(program(p, s->entry), s->kind, p->target[i], false);
	err = links[0] ? 0 : -errno;
	if (!err && s->exit) {
		links[1] =
			s->exit_tp
				? attach_one(program(p, s->exit), ATTACH_RAW_TP, s->exit_tp, false)
				: attach_one(program(p, s->exit), s->kind, p->target[i], true);
		err = links[1] ? 0 : -errno;
	}
	if (!err)
		return true;
	say(p, "%s on %s: the kernel refused to attach (%s)", s->what, p->target[i],
	    strerror(-err));
	(void)bpf_link__destroy(links[0]);
	links[0] = NULL;
	return false;
}

static void destroy_links(struct probes *p)
{
	for (size_t i = 0; i < 2 * N_SPECS; i++) {
		(void)bpf_link__destroy(p->links[i]);
		p->links[i] = NULL;
	}
}

static void detach_all(struct probes *p)
{
	destroy_links(p);
	iommud_bpf__destroy(p->skel);
	p->skel = NULL;
}

/* The spec of the tier that attaches the end spec i borrows (its exit_tp, without an exit
 * program of its own); NULL when i has its own end or none. */
static const struct probe_spec *end_owner(size_t i, size_t *ret_owner)
{
	const struct probe_spec *s = &specs[i];

	if (s->exit || !s->exit_tp)
		return NULL;
	for (size_t j = 0; j < N_SPECS; j++)
		if (specs[j].tier == s->tier && specs[j].exit && specs[j].exit_tp &&
		    strcmp(specs[j].exit_tp, s->exit_tp) == 0) {
			*ret_owner = j;
			return &specs[j];
		}
	return NULL;
}

static bool linked(const struct probes *p, size_t i)
{
	return p->links[2 * i];
}

/* Detaches spec i when the spec attaching its end is not attached: nothing would end what its
 * entry starts. */
static void drop_without_end(struct probes *p, size_t i)
{
	const struct probe_spec *owner;
	size_t j = 0;

	if (!linked(p, i) || !(owner = end_owner(i, &j)) || linked(p, j))
		return;
	say(p, "%s on %s: nothing would end its timing (the raw tracepoint %s, attached with %s)",
	    specs[i].what, p->target[i], specs[i].exit_tp, owner->what);
	(void)bpf_link__destroy(p->links[2 * i]);
	p->links[2 * i] = NULL;
}

/* This process's id as the programs see it: the initial pid namespace's, where the daemon's
 * getpid() is its own namespace's (a container's). Learned by running a program in this
 * process once; a kernel that will not run it leaves getpid(), right outside a namespace. */
static void learn_daemon(struct probes *p)
{
	LIBBPF_OPTS(bpf_test_run_opts, opts);
	struct iommud_attribution value = {0};
	__u32 zero = 0;

	p->kernel_tgid = (__u32)getpid();
	if (bpf_prog_test_run_opts(bpf_program__fd(p->skel->progs.learn_daemon), &opts) < 0 ||
	    bpf_map__lookup_elem(p->skel->maps.attribution, &zero, sizeof(zero), &value,
				 sizeof(value), 0) < 0 ||
	    !value.tgid) {
		log_warning("probes: cannot learn this process's pid as the kernel sees it (%s); "
			    "in a pid namespace, sessions' maps would count to no tenant",
			    strerror(errno));
		return;
	}
	p->kernel_tgid = value.tgid;
}

static void attribution_changed(struct probes *p);

/* Whether spec i is wanted after the specs before it attached: the system call hook only while
 * the iommufd or the type1 handlers have none attached (a module, or a kernel without that
 * backend), as it would otherwise cost every ioctl of the machine a program run for nothing.
 * A handler missing beside others of its backend that attached is a command the kernel does not
 * have (IOMMU_IOAS_MAP_FILE before 6.13), which nothing needs to measure. */
static bool fallback_needed(const struct probes *p, size_t i)
{
	bool iommufd = false, type1 = false;

	if (!specs[i].fallback)
		return true;
	for (size_t j = 0; j < i; j++) {
		if (!p->attached[j] || !specs[j].handles)
			continue;
		if (specs[j].handles & IOMMUD_HANDLES_TYPE1)
			type1 = true;
		else
			iommufd = true;
	}
	return !iommufd || !type1;
}

/* Tells the programs which handlers attached, so that the system call hook leaves their
 * commands to them; says once which commands neither measures. */
static void share_handled(struct probes *p, Iommud__V1__ProbeTier tier)
{
	char unmeasured[256] = "";
	bool hooked = false;
	size_t len = 0;

	p->handled = 0;
	for (size_t i = 0; i < N_SPECS; i++) {
		/* Left off where it is not needed: then nothing is left unmeasured either. */
		hooked =
			hooked || (specs[i].fallback && (p->attached[i] || !fallback_needed(p, i)));
		if (p->attached[i])
			p->handled |= specs[i].handles;
	}
	for (size_t i = 0; i < N_SPECS && !hooked; i++)
		if (specs[i].handles && spec_in_tier(&specs[i], tier) && !p->attached[i] &&
		    len < sizeof(unmeasured))
			len += (size_t)snprintf(unmeasured + len, sizeof(unmeasured) - len, "%s%s",
						len ? ", " : "", specs[i].what);
	if (len)
		say(p,
		    "%s: not measured, neither its kernel function nor the system call hook "
		    "attached",
		    unmeasured);
	attribution_changed(p);
}

/* The BPF object as built, or (plain) as built without the per-CPU kernel variables it reads
 * the preempt count through (iommud.bpf.c, in_interrupt): the two have the same programs and
 * maps, so the first's skeleton serves either. NULL and errno when it cannot be opened. */
static struct iommud_bpf *open_object(bool plain)
{
	struct iommud_bpf *obj = calloc(1, sizeof(*obj));
	int err;

	if (!obj) {
		errno = ENOMEM;
		return NULL;
	}
	err = iommud_bpf__create_skeleton(obj);
	if (!err && plain)
		obj->skeleton->data = iommud_plain_bpf__elf_bytes(&obj->skeleton->data_sz);
	if (!err)
		err = bpf_object__open_skeleton(obj->skeleton, NULL);
	if (err) {
		iommud_bpf__destroy(obj);
		errno = -err;
		return NULL;
	}
	return obj;
}

/* Opens the object (p->plain says which) with the tier's programs and loads it; a negative
 * errno and in *ret_failure what failed when it cannot, with nothing left open. */
static int load_tier(struct probes *p, Iommud__V1__ProbeTier tier, const struct btf *btf,
		     const char **ret_failure)
{
	int err;

	p->skel = open_object(p->plain);
	if (!p->skel) {
		*ret_failure = "cannot open the BPF object";
		return -errno;
	}
	choose_programs(p, tier, btf);
	(void)bpf_map__set_max_entries(p->skel->maps.hists,
				       p->tenant_slots * IOMMUD_HISTS_PER_TENANT);
	err = iommud_bpf__load(p->skel);
	if (err) {
		*ret_failure = "the kernel refused to load its programs";
		detach_all(p);
	}
	return err;
}

/* Loads and attaches one tier's programs; true when a latency or count pair attached. */
static bool try_tier(struct probes *p, Iommud__V1__ProbeTier tier, const struct btf *btf)
{
	const char *name = iommud_name(&iommud_probe_tier_names, tier), *failure = NULL;
	size_t measured = 0;
	int err = load_tier(p, tier, btf, &failure);

	/* A kernel that cannot give BPF the address of a per-CPU variable (its kallsyms leaves
	 * them out: CONFIG_KALLSYMS_ALL off) refuses every program naming one with ENOENT; the
	 * plain object names none. Tried once: where it is refused too, the cause is another. */
	if (err == -ENOENT && !p->plain) {
		p->plain = true;
		err = load_tier(p, tier, btf, &failure);
		if (err)
			p->plain = false;
		else
			say(p, "DMA mapping in interrupts not told apart: this kernel does not "
			       "give BPF programs the address of per-CPU variables (built "
			       "without CONFIG_KALLSYMS_ALL), so it is counted to the task "
			       "interrupted");
	}
	if (err) {
		say(p, "%s tier: %s (%s)", name, failure, strerror(-err));
		return false;
	}
	learn_daemon(p);
	for (size_t i = 0; i < N_SPECS; i++)
		p->attached[i] = p->target[i] && fallback_needed(p, i) && attach_spec(p, i);
	for (size_t i = 0; i < N_SPECS; i++) {
		drop_without_end(p, i);
		p->attached[i] = linked(p, i);
		measured += p->attached[i] && !specs[i].fault;
	}
	share_handled(p, tier);
	if (measured)
		return true;
	say(p, "%s tier: nothing on the map path attached", name);
	detach_all(p);
	return false;
}

static void attach_best(struct probes *p, Iommud__V1__ProbeTier max_tier)
{
	struct btf *btf = btf__load_vmlinux_btf();

	if (!btf)
		say(p, "the kernel has no BTF (%s): function probes choose no target",
		    strerror(errno));
	(void)libbpf_set_print(libbpf_to_log);
	p->tier = TIER(OFF);
	for (int tier = max_tier; tier >= TIER(TRACEPOINT); tier--)
		if (try_tier(p, (Iommud__V1__ProbeTier)tier, btf)) {
			p->tier = (Iommud__V1__ProbeTier)tier;
			break;
		}
	btf__free(btf);
	/* Parsing the kernel's BTF (here and in each tier's load) leaves about 11 MiB of freed
	 * heap behind, resident, and no later allocation of the event-loop threads (their own
	 * arenas) reuses it: give it back to the kernel. */
	(void)malloc_trim(0);
}

/* The buffer per-CPU lookups fill: the largest value read (a histogram) on each CPU. A kernel
 * that cannot say its CPU count leaves it out, and the per-CPU maps read as empty, as a
 * failed lookup does. */
static int alloc_percpu_values(struct probes *p)
{
	int cpus = libbpf_num_possible_cpus();

	if (cpus <= 0)
		return 0;
	p->percpu_values = calloc((size_t)cpus, sizeof(struct iommud_hist));
	if (!p->percpu_values)
		return -ENOMEM;
	p->n_cpus = (size_t)cpus;
	return 0;
}

int probes_start(const struct probes_options *opts, struct probes **ret_probes)
{
	struct probes *p = calloc(1, sizeof(*p));

	if (!p)
		return -ENOMEM;
	p->in_process = opts->in_process;
	p->driver_latency = opts->driver_latency;
	p->tenant_slots = opts->tenant_slots && opts->tenant_slots < IOMMUD_TENANT_SLOTS
				  ? opts->tenant_slots
				  : IOMMUD_TENANT_SLOTS;
	if (p->in_process && !(p->local = calloc(IN_PROCESS_SLOTS, sizeof(*p->local)))) {
		free(p);
		return -ENOMEM;
	}
	if (opts->max_tier >= TIER(TRACEPOINT))
		attach_best(p, opts->max_tier);
	else {
		p->tier = TIER(OFF);
		say(p, "kernel map path: probes are off by configuration (probe-tier off)");
	}
	p->n_start_detached = p->n_detached;
	if (p->skel && alloc_percpu_values(p) < 0) {
		probes_stop(p);
		return -ENOMEM;
	}
	*ret_probes = p;
	return 0;
}

void probes_stop(struct probes *p)
{
	if (!p)
		return;
	detach_all(p);
	for (size_t i = 0; i < p->n_detached; i++)
		free(p->detached[i]);
	free(p->detached);
	free(p->local);
	free(p->cgroups);
	free(p->percpu_values);
	free(p);
}

/* Forgets the refusals of the last re-attach, which the next one says again if they stand. */
static void forget_refusals(struct probes *p)
{
	while (p->n_detached > p->n_start_detached)
		free(p->detached[--p->n_detached]);
}

/* A thread inside a tracked ioctl when its exit program went away keeps its slot active, with
 * that ioctl's start: re-attached, its next exit would time the whole detached period and its
 * next entry would count a drop. Nothing runs the programs here, so nothing races the reset. */
static int reset_threads(struct probes *p)
{
	const struct bpf_map *threads = p->skel->maps.threads;
	size_t size = bpf_map__value_size(threads);
	void *idle = calloc(1, size);
	int err = idle ? 0 : -ENOMEM;

	for (__u32 slot = 0; !err && slot < bpf_map__max_entries(threads); slot++)
		err = bpf_map__update_elem(threads, &slot, sizeof(slot), idle, size, BPF_ANY);
	free(idle);
	if (err)
		say(p, "kernel map path: the programs' per-thread state could not be cleared (%s)",
		    strerror(-err));
	return err;
}

int probes_set_attached(struct probes *p, bool attached)
{
	p->switched_off = !attached;
	if (!p->skel)
		return 0;
	destroy_links(p);
	forget_refusals(p);
	if (!attached)
		return 0;
	if (reset_threads(p) < 0)
		return -EAGAIN;
	for (size_t i = 0; i < N_SPECS; i++)
		if (p->attached[i])
			(void)attach_spec(p, i);
	for (size_t i = 0; i < N_SPECS; i++)
		drop_without_end(p, i);
	return probes_attached(p) ? 0 : -EAGAIN;
}

Iommud__V1__ProbeTier probes_tier(const struct probes *p)
{
	return p->tier;
}

bool probes_attached(const struct probes *p)
{
	if (!p->skel || p->switched_off)
		return false;
	for (size_t i = 0; i < N_SPECS; i++)
		if (p->attached[i] && !linked(p, i))
			return false;
	return true;
}

bool probes_switched_off(const struct probes *p)
{
	return p->switched_off;
}

bool probes_in_process(const struct probes *p)
{
	return p->in_process;
}

bool probes_driver_latency(const struct probes *p)
{
	return p->driver_latency && (p->tier == TIER(FENTRY) || p->tier == TIER(KPROBE));
}

const char *probes_driver_note(const struct probes *p)
{
	if (p->tier != TIER(FENTRY) && p->tier != TIER(KPROBE))
		return "";
	return p->driver_latency ? ", driver layer timed (probe-driver-latency yes)"
				 : ", driver layer counted, not timed (probe-driver-latency no)";
}

size_t probes_detached(const struct probes *p, const char *const **ret_lines)
{
	*ret_lines = (const char *const *)p->detached;
	return p->n_detached;
}

/* A per-CPU map's value for key, summed over the CPUs, in 64-bit words: n of them, at most a
 * histogram's. */
static int percpu_sum(struct probes *p, const struct bpf_map *map, const void *key, size_t key_size,
		      __u64 *sum, size_t n)
{
	size_t value_size = n * sizeof(__u64);
	int rc;

	if (!p->percpu_values)
		return -ENODATA;
	rc = bpf_map__lookup_elem(map, key, key_size, p->percpu_values, p->n_cpus * value_size, 0);
	memset(sum, 0, value_size);
	for (size_t cpu = 0; rc == 0 && cpu < p->n_cpus; cpu++)
		for (size_t w = 0; w < n; w++)
			sum[w] += p->percpu_values[cpu * n + w];
	return rc;
}

uint64_t probes_dropped_events(struct probes *p)
{
	__u32 zero = 0;
	__u64 n;

	if (!p->skel || percpu_sum(p, p->skel->maps.dropped, &zero, sizeof(zero), &n, 1) < 0)
		return 0;
	return n;
}

/* Threads remember their last descriptor's tenant while the generation stays the same: a new
 * one after each change to the attribution maps (after it: a thread that reads the old
 * generation and then the new entry only looks it up again next time). */
static void attribution_changed(struct probes *p)
{
	__u32 zero = 0;
	struct iommud_attribution value = {
		.tgid = p->kernel_tgid, .handled = p->handled, .gen = ++p->attribution_gen};

	(void)bpf_map__update_elem(p->skel->maps.attribution, &zero, sizeof(zero), &value,
				   sizeof(value), BPF_ANY);
}

/* Attribution entries: ignored at tier OFF, where no program would read them. */
static int set_slot(struct probes *p, const struct bpf_map *map, const void *key, size_t key_size,
		    unsigned slot)
{
	__u32 value = slot;
	int rc = bpf_map__update_elem(map, key, key_size, &value, sizeof(value), BPF_ANY) ? -errno
											  : 0;

	attribution_changed(p);
	return rc;
}

static void unset_slot(struct probes *p, const struct bpf_map *map, const void *key,
		       size_t key_size)
{
	(void)bpf_map__delete_elem(map, key, key_size, 0);
	attribution_changed(p);
}

static struct iommud_fd_key own_fd(const struct probes *p, int fd)
{
	return (struct iommud_fd_key){.tgid = p->kernel_tgid, .fd = fd};
}

int probes_register_fd(struct probes *p, int fd, unsigned slot)
{
	struct iommud_fd_key key = own_fd(p, fd);

	return p->skel ? set_slot(p, p->skel->maps.session_fds, &key, sizeof(key), slot) : 0;
}

void probes_unregister_fd(struct probes *p, int fd)
{
	struct iommud_fd_key key = own_fd(p, fd);

	if (p->skel)
		unset_slot(p, p->skel->maps.session_fds, &key, sizeof(key));
}

/* Who a cgroup's work counts to: the latest delegation lent to a VMM in it, else the tenant
 * registered with it, else nobody (its entry deleted). */
static int write_cgroup(struct probes *p, uint64_t cgroup_id)
{
	const struct cgroup_reg *tenant = NULL, *lent = NULL;

	/* Lendings are kept in the order they were made: the last one found is the latest. */
	for (size_t i = 0; i < p->n_cgroups; i++)
		if (p->cgroups[i].id == cgroup_id) {
			if (p->cgroups[i].lent)
				lent = &p->cgroups[i];
			else
				tenant = &p->cgroups[i];
		}
	if (lent || tenant)
		return set_slot(p, p->skel->maps.tenant_cgroups, &cgroup_id, sizeof(cgroup_id),
				(lent ? lent : tenant)->slot);
	unset_slot(p, p->skel->maps.tenant_cgroups, &cgroup_id, sizeof(cgroup_id));
	return 0;
}

/* The index of the registration of cgroup_id with that lending token (0: the tenant's), or
 * n_cgroups. */
static size_t find_cgroup(const struct probes *p, uint64_t cgroup_id, uint64_t lent)
{
	for (size_t i = 0; i < p->n_cgroups; i++)
		if (p->cgroups[i].id == cgroup_id && p->cgroups[i].lent == lent)
			return i;
	return p->n_cgroups;
}

static void drop_cgroup(struct probes *p, size_t i)
{
	uint64_t cgroup_id = p->cgroups[i].id;

	memmove(&p->cgroups[i], &p->cgroups[i + 1], (p->n_cgroups - i - 1) * sizeof(p->cgroups[0]));
	p->n_cgroups--;
	(void)write_cgroup(p, cgroup_id);
}

/* A registration the map would not take is dropped: nobody would take it back. */
static int add_cgroup(struct probes *p, uint64_t cgroup_id, unsigned slot, uint64_t lent)
{
	size_t i = find_cgroup(p, cgroup_id, lent);
	struct cgroup_reg *regs;
	int rc;

	if (i == p->n_cgroups) {
		regs = realloc(p->cgroups, (p->n_cgroups + 1) * sizeof(*regs));
		if (!regs)
			return -ENOMEM;
		p->cgroups = regs;
		p->n_cgroups++;
	}
	p->cgroups[i] = (struct cgroup_reg){.id = cgroup_id, .slot = slot, .lent = lent};
	rc = write_cgroup(p, cgroup_id);
	if (rc < 0)
		drop_cgroup(p, i);
	return rc;
}

static void remove_cgroup(struct probes *p, uint64_t cgroup_id, uint64_t lent)
{
	size_t i = find_cgroup(p, cgroup_id, lent);

	if (i < p->n_cgroups)
		drop_cgroup(p, i);
}

int probes_register_cgroup(struct probes *p, uint64_t cgroup_id, unsigned slot)
{
	return p->skel ? add_cgroup(p, cgroup_id, slot, 0) : 0;
}

void probes_unregister_cgroup(struct probes *p, uint64_t cgroup_id)
{
	if (p->skel)
		remove_cgroup(p, cgroup_id, 0);
}

/* The cgroup v2 id (its directory's inode) of a path as /proc/PID/cgroup gives it. */
static int cgroup_id(const char *cgroup, uint64_t *ret_id)
{
	char path[sizeof(CGROUP_ROOT) + PATH_MAX];
	struct stat st;

	/* A path cut short could name another cgroup, whose work would count to this tenant. */
	if (snprintf(path, sizeof(path), CGROUP_ROOT "%s", cgroup) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	if (stat(path, &st) < 0)
		return -errno;
	*ret_id = st.st_ino;
	return 0;
}

/* The id of the cgroup this process runs in; -ENOENT where no cgroup v2 line says it. */
static int own_cgroup_id(uint64_t *ret_id)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	char *line = NULL;
	size_t size = 0;
	int rc = -ENOENT;

	if (!f)
		return -errno;
	while (rc == -ENOENT && getline(&line, &size, f) > 0)
		if (strncmp(line, "0::", 3) == 0) {
			line[strcspn(line, "\n")] = 0;
			rc = cgroup_id(line + 3, ret_id);
		}
	free(line);
	(void)fclose(f);
	return rc;
}

static bool has_parent_step(const char *cgroup)
{
	for (const char *at = strstr(cgroup, "/.."); at; at = strstr(at + 1, "/.."))
		if (at[3] == '/' || at[3] == 0)
			return true;
	return false;
}

/* Why the cgroup at path cgroup (id) is not a VMM's own, or NULL: lent, the work of everyone
 * else in it would count to the delegating tenant (slot). */
static const char *shared_cgroup(const struct probes *p, const char *cgroup, uint64_t id,
				 unsigned slot)
{
	uint64_t own;

	if (strcmp(cgroup, "/") == 0)
		return "the root cgroup";
	/* Outside the daemon's cgroup namespace: the path resolves to that namespace's root. */
	if (has_parent_step(cgroup))
		return "outside the daemon's cgroup namespace";
	if (own_cgroup_id(&own) == 0 && own == id)
		return "the daemon's own cgroup";
	for (size_t i = 0; i < p->n_cgroups; i++)
		if (p->cgroups[i].id == id && !p->cgroups[i].lent && p->cgroups[i].slot != slot)
			return "another tenant's cgroup";
	return NULL;
}

int probes_lend_cgroup(struct probes *p, const char *cgroup, unsigned slot, uint64_t *ret_token)
{
	const char *why;
	uint64_t id = 0;
	int rc;

	if (!p || !cgroup || !cgroup[0]) {
		*ret_token = 0;
		return 0;
	}
	rc = cgroup_id(cgroup, &id);
	if (rc == 0 && (why = shared_cgroup(p, cgroup, id, slot))) {
		log_struct(LOG_NOTICE, LOG_FIELDS({"IOMMUD_CGROUP", cgroup}),
			   "probes: a delegated VMM's maps count to no tenant: its cgroup "
			   "{IOMMUD_CGROUP} is %s; run the VMM in a cgroup of its own (a systemd "
			   "scope) to have them counted",
			   why);
		*ret_token = 0;
		return 0;
	}
	if (!p->skel) {
		*ret_token = 0;
		return 0;
	}
	if (rc == 0)
		rc = add_cgroup(p, id, slot, p->lendings + 1);
	if (rc < 0) {
		log_warning("probes: cannot count what cgroup %s maps to tenant slot %u: %s",
			    cgroup, slot, strerror(-rc));
		return rc;
	}
	*ret_token = ++p->lendings;
	return 0;
}

void probes_return_cgroup(struct probes *p, uint64_t token)
{
	if (!p || !p->skel || !token)
		return;
	for (size_t i = 0; i < p->n_cgroups; i++)
		if (p->cgroups[i].lent == token) {
			drop_cgroup(p, i);
			return;
		}
}

static size_t local_index(enum iommud_map_op op, __u8 size_class, unsigned tenant)
{
	return ((size_t)tenant * IOMMUD_OP_COUNT + op) * IOMMUD_SIZE_COUNT + size_class;
}

void probes_record(struct probes *p, enum iommud_map_op op, uint64_t bytes, unsigned tenant,
		   uint64_t ns)
{
	probes_record_n(p, op, bytes, tenant, ns, 1);
}

void probes_record_n(struct probes *p, enum iommud_map_op op, uint64_t bytes, unsigned tenant,
		     uint64_t ns, uint64_t count)
{
	struct iommud_hist *h;

	if (!p->local || p->switched_off || op >= IOMMUD_OP_COUNT || tenant >= IOMMUD_TENANT_SLOTS)
		return;
	h = &p->local[local_index(op, iommud_size_class(bytes), tenant)];
	/* Tenants of one label may map on several loop threads at once; readers hold the daemon
	 * lock, under which no map path runs. */
	histogram_add_shared(h, ns, count);
	__atomic_fetch_add(&h->bytes, bytes * count, __ATOMIC_RELAXED);
}

typedef int hist_visit_fn(const struct iommud_hist_key *key, const struct iommud_hist *hist,
			  void *arg);

/* One tenant slot's kernel histograms, in the order iommud_hist_index lays them out. */
static int read_kernel_slot(struct probes *p, unsigned tenant, hist_visit_fn *visit, void *arg)
{
	const struct bpf_map *map = p->skel->maps.hists;
	struct iommud_hist sum;
	int rc;

	for (unsigned op = 0; op < IOMMUD_OP_COUNT; op++)
		for (unsigned layer = 0; layer < IOMMUD_KERNEL_LAYERS; layer++)
			for (unsigned size = 0; size < IOMMUD_SIZE_COUNT; size++) {
				__u32 index = iommud_hist_index(tenant, op, layer, size);
				struct iommud_hist_key key = {.tenant = tenant,
							      .op = (__u8)op,
							      .layer = (__u8)layer,
							      .size_class = (__u8)size};

				if (percpu_sum(p, map, &index, sizeof(index), (__u64 *)&sum,
					       sizeof(sum) / sizeof(__u64)) < 0 ||
				    !sum.count)
					continue;
				rc = visit(&key, &sum, arg);
				if (rc)
					return rc;
			}
	return 0;
}

static int read_kernel(struct probes *p, hist_visit_fn *visit, void *arg)
{
	int rc = 0;

	for (unsigned tenant = 0; rc == 0 && tenant < p->tenant_slots; tenant++)
		rc = read_kernel_slot(p, tenant, visit, arg);
	return rc;
}

static int read_local(struct probes *p, hist_visit_fn *visit, void *arg)
{
	for (unsigned tenant = 0; tenant < IOMMUD_TENANT_SLOTS; tenant++)
		for (unsigned op = 0; op < IOMMUD_OP_COUNT; op++)
			for (unsigned size = 0; size < IOMMUD_SIZE_COUNT; size++) {
				const struct iommud_hist *h =
					&p->local[local_index(op, size, tenant)];
				struct iommud_hist_key key = {.tenant = tenant,
							      .op = (__u8)op,
							      .layer = IOMMUD_LAYER_IN_PROCESS,
							      .size_class = (__u8)size};
				int rc;

				if (!h->count)
					continue;
				rc = visit(&key, h, arg);
				if (rc)
					return rc;
			}
	return 0;
}

int probes_read(struct probes *p, hist_visit_fn *visit, void *arg)
{
	int rc = p->skel ? read_kernel(p, visit, arg) : 0;

	if (rc == 0 && p->local)
		rc = read_local(p, visit, arg);
	return rc;
}

int probes_read_faults(struct probes *p,
		       int (*visit)(const char *device, uint64_t count, void *arg), void *arg)
{
	const struct bpf_map *map;
	struct iommud_fault_key key, *prev = NULL;
	char name[IOMMUD_DEVICE_NAME + 1];
	__u64 count;
	int rc;

	if (!p->skel)
		return 0;
	map = p->skel->maps.faults;
	while (bpf_map__get_next_key(map, prev, &key, sizeof(key)) == 0) {
		prev = &key;
		if (bpf_map__lookup_elem(map, &key, sizeof(key), &count, sizeof(count), 0) < 0)
			continue;
		(void)snprintf(name, sizeof(name), "%.*s", (int)sizeof(key.device), key.device);
		rc = visit(name, count, arg);
		if (rc)
			return rc;
	}
	return 0;
}

int probes_program_stats(struct probes *p,
			 int (*visit)(const char *program, uint64_t runs, uint64_t ns, void *arg),
			 void *arg)
{
	struct bpf_program *prog;
	int rc;

	if (!p->skel)
		return 0;
	bpf_object__for_each_program(prog, p->skel->obj)
	{
		struct bpf_prog_info info = {0};
		__u32 len = sizeof(info);
		int fd = bpf_program__fd(prog);

		if (fd < 0 || prog == p->skel->progs.learn_daemon ||
		    bpf_obj_get_info_by_fd(fd, &info, &len) < 0)
			continue;
		rc = visit(bpf_program__name(prog), info.run_cnt, info.run_time_ns, arg);
		if (rc)
			return rc;
	}
	return 0;
}
