// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
/*
 * The kernel half of iommud's map path probes: per-CPU log2 histograms of the IOMMU driver's
 * map/unmap (layer IOMMU) and of the whole map/unmap ioctl (layer IOCTL): iommufd's
 * IOMMU_IOAS_MAP/MAP_FILE/UNMAP and VFIO type1's VFIO_IOMMU_MAP_DMA/UNMAP_DMA on a container,
 * keyed by tenant slot, operation and size class, and a count of DMA faults per device.
 *
 * Every program exists in the form of each attach tier; the loader (probes.c) loads only those
 * of the tier it chose and whose kernel symbol exists, so a name missing on some kernel turns
 * that one program off. Nothing here sends events to user space: the daemon reads the maps.
 */
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "iommud_probes.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* _IO(';', 0x85), 0x86, 0x8f: unique to iommufd, whatever the fd is. */
#define IOMMU_IOAS_MAP_CMD	0x3b85
#define IOMMU_IOAS_UNMAP_CMD	0x3b86
#define IOMMU_IOAS_MAP_FILE_CMD 0x3b8f
/* _IO(';', 100 + 13), + 14: VFIO type1's, which only a container answers. */
#define VFIO_IOMMU_MAP_DMA_CMD	 0x3b71
#define VFIO_IOMMU_UNMAP_DMA_CMD 0x3b72
/* Where the uAPI structs (fixed layouts) keep length: iommu_ioas_map(_file) and _unmap, and
 * at the same offsets vfio_iommu_type1_dma_map's and _dma_unmap's size. */
#define MAP_LENGTH_OFFSET   24
#define UNMAP_LENGTH_OFFSET 16

/* One histogram per tenant slot, operation, layer and size class (iommud_hist_index): an array,
 * which a program indexes without hashing or allocating. The loader sizes it to the daemon's
 * tenant slots before loading (the few labels its configuration has), so it stays small. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, IOMMUD_TENANT_SLOTS *IOMMUD_HISTS_PER_TENANT);
	__type(key, __u32);
	__type(value, struct iommud_hist);
} hists SEC(".maps");

/* Events that found no room (a tenant slot past the array, a full fault map) or lost their
 * thread's slot to another (threads): the daemon reports them as dropped. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

/* Written by the daemon: its sessions' iommufd descriptors and its tenants' cgroups. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct iommud_fd_key);
	__type(value, __u32);
} session_fds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} tenant_cgroups SEC(".maps");

/* Written by the daemon: its process (only its descriptors are in session_fds), and a
 * generation it bumps after every change to session_fds or tenant_cgroups, so that a thread's
 * remembered attribution is good while the generation stays the same (0: never written, so a
 * thread slot that remembers nothing never matches). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct iommud_attribution);
} attribution SEC(".maps");

/* What a thread is inside: a tracked map/unmap ioctl (its start, size, operation and tenant,
 * which the driver calls nested in it take too) and those driver calls (a failed map unmaps
 * inside itself: one of each operation); and the tenant its last ioctl's descriptor had.
 *
 * Kept in an array indexed by the low bits of the thread id: found with one inlined lookup,
 * where task storage took a helper call and its recursion guard at each of the four events per
 * ioctl. Two threads whose ids share the low bits share an entry, on any two CPUs at once, so
 * the entry's tag (thread id, state, claim sequence) changes only by compare-and-swap:
 * - entering a tracked ioctl claims the entry (ENTERING) and alone writes the ioctl's fields
 *   until it publishes them (ACTIVE); a thread finding the entry ENTERING, or losing the swap,
 *   does not track its ioctl and counts it dropped;
 * - a claim that takes over an ACTIVE entry counts that ioctl dropped (its thread's exit and
 *   driver calls then find another tag and record nothing, nor count it again);
 * - the exit copies the fields, then releases the entry with a swap from the tag it read: the
 *   copy is the ioctl's own only if no claim came in between, and a taken entry stays taken;
 * - a driver call's start is one word carrying the claim sequence, so a write of a thread that
 *   has just lost the entry is told from the owner's own, and the owner counts that call
 *   dropped instead of timing it from another thread's start.
 * A dropped ioctl is one event, however many driver calls it made. */
#define THREAD_SLOTS 4096

enum thread_state_kind {
	THREAD_IDLE,
	THREAD_ENTERING,
	THREAD_ACTIVE,
};

/* tag: thread id in bits 0-31, enum thread_state_kind in 32-33, claim sequence from 34 up. */
#define TAG_STATE_SHIFT 32
#define TAG_SEQ_SHIFT	34
/* call_start: claim sequence (its low bits) from 41 up, a call started at 40, ns in 0-39 (the
 * low bits of the clock, 18 minutes of them: a call's duration is their difference). */
#define CALL_SEQ_SHIFT 41
#define CALL_STARTED   (1ULL << 40)
#define CALL_NS_MASK   (CALL_STARTED - 1)

struct thread_state {
	__u64 tag;
	__u32 tenant; /* the tracked ioctl's tenant slot */
	__u32 ioctl_op;
	__u64 ioctl_start;
	__u64 ioctl_bytes;
	__u64 call_start[IOMMUD_OP_COUNT];
	__u64 known_ctx; /* the context whose tenant is known_tenant (ioctl_tenant) */
	__u32 known_tenant;
	__u64 known_gen; /* attribution_gen when it was looked up; 0: none */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, THREAD_SLOTS);
	__type(key, __u32);
	__type(value, struct thread_state);
} threads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, IOMMUD_FAULT_SOURCES);
	__type(key, struct iommud_fault_key);
	__type(value, __u64);
} faults SEC(".maps");

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&dropped, &zero);

	if (n)
		(*n)++;
}

/* One event; timed is false where only the count is known (the tracepoint tier's driver
 * layer), so no bucket takes it. */
static __always_inline void record(__u32 tenant, __u32 op, __u32 layer, __u64 bytes, __u64 ns,
				   bool timed)
{
	__u32 index = iommud_hist_index(tenant, op, layer, iommud_size_class(bytes));
	struct iommud_hist *h = bpf_map_lookup_elem(&hists, &index);
	__u64 b;

	if (!h) {
		count_drop();
		return;
	}
	if (timed) {
		/* Checked in the register that indexes: Linux 6.1's verifier loses the bound of a
		 * 32-bit copy the compiler would compare instead. */
		b = iommud_hist_bucket(ns);
		barrier_var(b);
		if (b < IOMMUD_HIST_BUCKETS)
			h->buckets[b]++;
		h->sum_ns += ns;
	}
	h->count++;
	h->bytes += bytes;
}

static __always_inline __u32 cgroup_tenant(void)
{
	__u64 id = bpf_get_current_cgroup_id();
	__u32 *slot = bpf_map_lookup_elem(&tenant_cgroups, &id);

	return slot ? *slot : 0;
}

/* The descriptor the running ioctl system call was made on: its first argument, as the system
 * call's entry saved the user registers (x86-64, as the tier's system call hook is). Only the
 * handler programs need it, but the hooks that pass their fd inline the same code: on kernels
 * without bpf_task_pt_regs (before 5.15) the check is a constant false, the verifier drops the
 * call, and those programs still load. */
static __always_inline int syscall_fd(void)
{
	struct pt_regs *regs;

	if (!bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_task_pt_regs))
		return -1;
	regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());

	return regs ? (int)regs->di : -1;
}

/* The daemon's own descriptor says whose session it is; anyone else counts to their cgroup.
 * The daemon's thread remembers the tenant of the last context it mapped on (ctx: the kernel's
 * object of the descriptor where the hook sees it, else the descriptor) until the daemon
 * changes the attribution maps: a run of maps on one session looks nothing up. fd < 0: read
 * it from the system call, needed only when looking up. */
static __always_inline __u32 ioctl_tenant(struct thread_state *st, __u32 tgid, __u64 ctx, int fd)
{
	struct iommud_attribution *daemon;
	struct iommud_fd_key key;
	__u32 zero = 0, *slot;
	__u64 gen;

	daemon = bpf_map_lookup_elem(&attribution, &zero);
	if (!daemon || tgid != daemon->tgid)
		return cgroup_tenant();
	gen = daemon->gen;
	if (gen && st->known_gen == gen && st->known_ctx == ctx)
		return st->known_tenant;
	key.tgid = daemon->tgid;
	key.fd = fd < 0 ? syscall_fd() : fd;
	slot = bpf_map_lookup_elem(&session_fds, &key);
	st->known_tenant = slot ? *slot : cgroup_tenant();
	st->known_ctx = ctx;
	st->known_gen = gen;
	return st->known_tenant;
}

/* The CPU's preempt count, where x86 keeps it: the per-CPU __preempt_count (Linux 6.15 on), in
 * struct pcpu_hot before (6.2 to 6.14). Both weak: the loader resolves the one the kernel has,
 * the other's address is 0 and the verifier drops its branch. Elsewhere (other architectures)
 * the count reads 0: no interrupt is told apart. A kernel whose kallsyms leaves per-CPU
 * variables out (built without CONFIG_KALLSYMS_ALL) cannot give BPF their address and refuses
 * every program naming one, whatever branch it is on: for it the object is also built plain
 * (IOMMUD_NO_PERCPU_KSYMS), reading 0 too. */
#ifndef IOMMUD_NO_PERCPU_KSYMS
extern const int __preempt_count __ksym __weak;

struct pcpu_hot___iommud {
	int preempt_count;
} __attribute__((preserve_access_index));

extern const struct pcpu_hot___iommud pcpu_hot __ksym __weak;
#endif

#define IN_INTERRUPT_MASK 0x1fff00 /* SOFTIRQ_MASK | HARDIRQ_MASK | NMI_MASK */

/* Whether this event runs in interrupt context (or with bottom halves off), where current is
 * whichever task the interrupt came in on: DMA mapping of other devices (dma-iommu from softirq
 * and IRQ handlers) is no task's and no tenant's. */
static __always_inline bool in_interrupt(void)
{
	int count = 0;

#ifndef IOMMUD_NO_PERCPU_KSYMS
	if (&__preempt_count)
		count = *(const int *)bpf_this_cpu_ptr(&__preempt_count);
	else if (bpf_core_field_exists(pcpu_hot.preempt_count))
		count = ((const struct pcpu_hot___iommud *)bpf_this_cpu_ptr(&pcpu_hot))
				->preempt_count;
#endif
	return count & IN_INTERRUPT_MASK;
}

/* Run once by the loader in the daemon's own context (BPF_PROG_TEST_RUN), never attached: the
 * kernel's id of the daemon's process, which the programs see whatever pid namespace the daemon
 * runs in (its getpid() is its own namespace's). */
SEC("raw_tp")
int learn_daemon(void *ctx)
{
	struct iommud_attribution *daemon;
	__u32 zero = 0;

	daemon = bpf_map_lookup_elem(&attribution, &zero);
	if (daemon)
		daemon->tgid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	return 0;
}

/* ---- the ioctl layer -------------------------------------------------------------------- */

static __always_inline struct thread_state *thread_slot(__u32 tid)
{
	__u32 slot = tid & (THREAD_SLOTS - 1);

	return bpf_map_lookup_elem(&threads, &slot);
}

/* Read where it is in the code, not where the compiler would like: it validates what was read
 * before it. */
#define READ_TAG(st) (*(volatile __u64 *)&(st)->tag)

static __always_inline __u64 tag_state(__u64 tag)
{
	return (tag >> TAG_STATE_SHIFT) & 3;
}

static __always_inline __u64 with_state(__u64 tag, enum thread_state_kind state)
{
	return (tag & ~(3ULL << TAG_STATE_SHIFT)) | (__u64)state << TAG_STATE_SHIFT;
}

/* The call_start word of no call, for the claim of tag. */
static __always_inline __u64 no_call(__u64 tag)
{
	return (tag >> TAG_SEQ_SHIFT) << CALL_SEQ_SHIFT;
}

/* The running task, whose pid and tgid are the ids bpf_get_current_pid_tgid returns: a load
 * each, where that helper's call took twice the instructions at each of a map+unmap pair's
 * eight program runs. */
static __always_inline struct task_struct *current_task(void)
{
	return bpf_get_current_task_btf();
}

/* The calling thread's state and its tag while it is inside a tracked ioctl, else NULL. */
static __always_inline struct thread_state *tracked_thread(__u64 *ret_tag)
{
	__u32 tid = (__u32)current_task()->pid;
	struct thread_state *st = thread_slot(tid);
	__u64 tag;

	if (!st)
		return NULL;
	tag = READ_TAG(st);
	if ((__u32)tag != tid || tag_state(tag) != THREAD_ACTIVE)
		return NULL;
	*ret_tag = tag;
	return st;
}

/* The operation of a tracked ioctl command, and where its argument keeps the length. */
static __always_inline bool tracked_cmd(unsigned int cmd, __u32 *ret_op, __u32 *ret_offset)
{
	if (cmd == IOMMU_IOAS_UNMAP_CMD || cmd == VFIO_IOMMU_UNMAP_DMA_CMD) {
		*ret_op = IOMMUD_OP_UNMAP;
		*ret_offset = UNMAP_LENGTH_OFFSET;
		return true;
	}
	if (cmd == IOMMU_IOAS_MAP_CMD || cmd == IOMMU_IOAS_MAP_FILE_CMD ||
	    cmd == VFIO_IOMMU_MAP_DMA_CMD) {
		*ret_op = IOMMUD_OP_MAP;
		*ret_offset = MAP_LENGTH_OFFSET;
		return true;
	}
	return false;
}

/* The thread's slot, claimed ENTERING under a new sequence, or NULL (counted dropped) when
 * another thread is entering its own ioctl there or claims it at the same time. An ACTIVE
 * ioctl claimed over is dropped: another thread's, or this one's whose exit never came. */
static __always_inline struct thread_state *claim_thread(__u32 tid, __u64 *ret_tag)
{
	struct thread_state *st = thread_slot(tid);
	__u64 old, tag;

	if (!st)
		return NULL;
	old = READ_TAG(st);
	tag = ((old >> TAG_SEQ_SHIFT) + 1) << TAG_SEQ_SHIFT |
	      (__u64)THREAD_ENTERING << TAG_STATE_SHIFT | tid;
	if (tag_state(old) == THREAD_ENTERING ||
	    __sync_val_compare_and_swap(&st->tag, old, tag) != old) {
		count_drop();
		return NULL;
	}
	if (tag_state(old) == THREAD_ACTIVE)
		count_drop();
	if ((__u32)old != tid)
		st->known_gen = 0;
	*ret_tag = tag;
	return st;
}

/* Starts tracking the calling thread's map/unmap ioctl of op on ctx (ioctl_tenant): claims its
 * slot, fills what its exit and its driver calls read, and publishes it. Its length is bytes,
 * or where length_user points in the caller's memory when that is not NULL. */
static __always_inline void ioctl_begin(__u32 op, __u64 ctx, int fd, __u64 bytes,
					const void *length_user)
{
	struct task_struct *task = current_task();
	struct thread_state *st;
	__u64 tag = 0;

	st = claim_thread((__u32)task->pid, &tag);
	if (!st)
		return;
	if (length_user && bpf_probe_read_user(&bytes, sizeof(bytes), length_user) < 0)
		bytes = 0;
	st->ioctl_bytes = bytes;
	st->tenant = ioctl_tenant(st, (__u32)task->tgid, ctx, fd);
	st->ioctl_op = op;
	st->call_start[IOMMUD_OP_MAP] = no_call(tag);
	st->call_start[IOMMUD_OP_UNMAP] = no_call(tag);
	st->ioctl_start = bpf_ktime_get_ns();
	/* Only the ENTERING thread moves the tag on from ENTERING: a store publishes. */
	barrier();
	READ_TAG(st) = with_state(tag, THREAD_ACTIVE);
}

/* An ioctl whose command and user argument the hook sees (the system call, VFIO type1's). */
static __always_inline void ioctl_enter(__u64 ctx, int fd, unsigned int cmd, unsigned long arg)
{
	__u32 op, offset;

	if (tracked_cmd(cmd, &op, &offset))
		ioctl_begin(op, ctx, fd, 0, (const void *)(arg + offset));
}

static __always_inline void ioctl_exit(long ret)
{
	__u64 tag = 0, bytes, start;
	struct thread_state *st = tracked_thread(&tag);
	__u32 tenant, op;

	if (!st)
		return;
	tenant = st->tenant;
	op = st->ioctl_op;
	bytes = st->ioctl_bytes;
	start = st->ioctl_start;
	/* Failing, another thread claimed the slot since the tag was read, and counted this
	 * ioctl dropped: the copy may be its. */
	if (__sync_val_compare_and_swap(&st->tag, tag, with_state(tag, THREAD_IDLE)) != tag)
		return;
	if (ret == 0)
		record(tenant, op, IOMMUD_LAYER_IOCTL, bytes, bpf_ktime_get_ns() - start, true);
}

/* Whether a tracked command's handler program attached (the loader says so in attribution):
 * then that program measures it, not the system call hook. */
static __always_inline bool handled_elsewhere(unsigned int cmd)
{
	struct iommud_attribution *daemon;
	__u32 zero = 0, handler;

	if (cmd == IOMMU_IOAS_MAP_CMD)
		handler = IOMMUD_HANDLES_IOAS_MAP;
	else if (cmd == IOMMU_IOAS_MAP_FILE_CMD)
		handler = IOMMUD_HANDLES_IOAS_MAP_FILE;
	else if (cmd == IOMMU_IOAS_UNMAP_CMD)
		handler = IOMMUD_HANDLES_IOAS_UNMAP;
	else
		handler = IOMMUD_HANDLES_TYPE1;
	daemon = bpf_map_lookup_elem(&attribution, &zero);
	return daemon && (daemon->handled & handler);
}

/* The fentry tier's ioctl layer for the commands whose handler did not attach (a kernel without
 * it, or with it in a module): every ioctl on the machine enters here, and leaves at the
 * command before any lookup. The syscall's own registers, read in place: the trampoline hands
 * over a kernel pointer. */
SEC("fentry/__x64_sys_ioctl")
int BPF_PROG(ioctl_fentry, struct pt_regs *regs)
{
	unsigned int cmd = (unsigned int)regs->si;
	__u32 op, offset;

	if (tracked_cmd(cmd, &op, &offset) && !handled_elsewhere(cmd))
		ioctl_enter((int)regs->di, (int)regs->di, cmd, regs->dx);
	return 0;
}

SEC("fexit/__x64_sys_ioctl")
int BPF_PROG(ioctl_fexit, struct pt_regs *regs, long ret)
{
	unsigned int cmd = (unsigned int)regs->si;
	__u32 op, offset;

	if (tracked_cmd(cmd, &op, &offset) && !handled_elsewhere(cmd))
		ioctl_exit(ret);
	return 0;
}

/* iommufd's own handlers, where the fentry tier has them: only iommufd's ioctls enter (not every
 * ioctl on the machine), iommufd has copied the command into kernel memory (a load, not a user
 * copy), and its context is the key the daemon's thread remembers its tenant by. They run
 * after iommufd has copied the command and found its context, so the layer starts there. The
 * structs are named here and relocated against the running kernel's (CO-RE): the build host
 * may lack iommufd. */
struct iommufd_ucmd___iommud {
	void *ictx;
	void *cmd;
} __attribute__((preserve_access_index));

struct iommu_ioas_map___iommud {
	__u64 length;
} __attribute__((preserve_access_index));

struct iommu_ioas_map_file___iommud {
	__u64 length;
} __attribute__((preserve_access_index));

struct iommu_ioas_unmap___iommud {
	__u64 length;
} __attribute__((preserve_access_index));

/* A typed view of kernel memory whose loads fault safely (Linux 6.2 on, as iommufd's handlers
 * are): the verifier turns it into a plain register move. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

#define IOAS_HANDLER(prog, function, op, cmd_type)                                                 \
	SEC("fentry/" #function)                                                                   \
	int BPF_PROG(prog##_fentry, struct iommufd_ucmd___iommud *ucmd)                            \
	{                                                                                          \
		struct cmd_type *cmd =                                                             \
			bpf_rdonly_cast(ucmd->cmd, bpf_core_type_id_kernel(struct cmd_type));      \
                                                                                                   \
		ioctl_begin(op, (__u64)ucmd->ictx, -1, cmd->length, NULL);                         \
		return 0;                                                                          \
	}                                                                                          \
	SEC("fexit/" #function)                                                                    \
	int BPF_PROG(prog##_fexit, void *ucmd, int ret)                                            \
	{                                                                                          \
		ioctl_exit(ret);                                                                   \
		return 0;                                                                          \
	}

IOAS_HANDLER(ioas_map, iommufd_ioas_map, IOMMUD_OP_MAP, iommu_ioas_map___iommud)
IOAS_HANDLER(ioas_map_file, iommufd_ioas_map_file, IOMMUD_OP_MAP, iommu_ioas_map_file___iommud)
IOAS_HANDLER(ioas_unmap, iommufd_ioas_unmap, IOMMUD_OP_UNMAP, iommu_ioas_unmap___iommud)

/* VFIO type1's ioctl on a container: its own commands only; the container is the context. */
SEC("fentry/vfio_iommu_type1_ioctl")
int BPF_PROG(type1_fentry, void *iommu_data, unsigned int cmd, unsigned long arg)
{
	ioctl_enter((__u64)iommu_data, -1, cmd, arg);
	return 0;
}

SEC("fexit/vfio_iommu_type1_ioctl")
int BPF_PROG(type1_fexit, void *iommu_data, unsigned int cmd, unsigned long arg, long ret)
{
	__u32 op, offset;

	if (tracked_cmd(cmd, &op, &offset))
		ioctl_exit(ret);
	return 0;
}

SEC("ksyscall/ioctl")
int BPF_KSYSCALL(ioctl_kprobe, int fd, unsigned int cmd, unsigned long arg)
{
	ioctl_enter(fd, fd, cmd, arg);
	return 0;
}

/* A kretprobe sees no arguments: the thread's state says whether its ioctl was tracked. */
SEC("kretsyscall/ioctl")
int BPF_KRETPROBE(ioctl_kretprobe, long ret)
{
	ioctl_exit(ret);
	return 0;
}

/* ---- the IOMMU driver layer ------------------------------------------------------------- */

/* The driver layer counts only what a tracked map/unmap ioctl does on its own thread: every
 * other iommu_map on the machine (other devices' DMA mapping, from any context) leaves after
 * the preempt count, or at the latest at the thread's slot.
 *
 * A driver call starts at the function's entry (fentry, or kprobe) and ends at the kernel's
 * own tracepoint inside it, iommu:map or iommu:unmap (a raw tracepoint: a third of an exit
 * trampoline's cost). So the layer times the driver's page table work: a map up to its last
 * page written, before iommu_map's iotlb_sync_map; an unmap up to its last page cleared,
 * before the IOTLB flush (iommu_unmap's iotlb_sync, or the gathered flush its caller makes
 * after iommu_unmap_fast). A map that fails fires no tracepoint, an unmap that finds nothing
 * unmaps 0 bytes: neither counts. */
static __always_inline struct thread_state *driver_state(__u64 *ret_tag)
{
	return in_interrupt() ? NULL : tracked_thread(ret_tag);
}

static __always_inline void call_enter(__u32 op)
{
	__u64 tag = 0;
	struct thread_state *st = driver_state(&tag);

	if (st && op < IOMMUD_OP_COUNT)
		st->call_start[op] =
			no_call(tag) | CALL_STARTED | (bpf_ktime_get_ns() & CALL_NS_MASK);
}

static __always_inline void call_end(__u32 op, __u64 bytes)
{
	__u64 tag = 0, start;
	struct thread_state *st = driver_state(&tag);
	__u32 tenant;

	if (!st || op >= IOMMUD_OP_COUNT)
		return;
	start = st->call_start[op];
	tenant = st->tenant;
	barrier();
	/* Claimed over since: that claim counted this ioctl dropped. */
	if (READ_TAG(st) != tag)
		return;
	/* Another claim's sequence: a thread that had just lost the slot wrote over this call's
	 * start. */
	if ((start ^ no_call(tag)) >> CALL_SEQ_SHIFT)
		count_drop();
	else if ((start & CALL_STARTED) && bytes)
		record(tenant, op, IOMMUD_LAYER_IOMMU, bytes,
		       (bpf_ktime_get_ns() - start) & CALL_NS_MASK, true);
	st->call_start[op] = no_call(tag);
}

/* The programs on the driver's own tracepoints, iommu:map and iommu:unmap, that hand each
 * call's op and size (an unmap's: what it unmapped) to handler. */
#define DRIVER_TRACEPOINTS(map_prog, unmap_prog, handler)                                          \
	SEC("raw_tp/map")                                                                          \
	int BPF_PROG(map_prog, unsigned long iova, phys_addr_t paddr, size_t size)                 \
	{                                                                                          \
		handler(IOMMUD_OP_MAP, size);                                                      \
		return 0;                                                                          \
	}                                                                                          \
	SEC("raw_tp/unmap")                                                                        \
	int BPF_PROG(unmap_prog, unsigned long iova, size_t size, size_t unmapped)                 \
	{                                                                                          \
		handler(IOMMUD_OP_UNMAP, unmapped);                                                \
		return 0;                                                                          \
	}

/* The driver layer without its latency (probe-driver-latency off, the default): no entry
 * program and no clock, each call of a tracked ioctl counted with its size at the
 * tracepoint, to the ioctl's tenant. A direct add, as call_end's: one kept in the thread's
 * entry until the ioctl's exit would be lost with the exit (a detach in between, an entry
 * claimed over), where each call counted here stays counted. */
static __always_inline void call_count(__u32 op, __u64 bytes)
{
	__u64 tag = 0;
	struct thread_state *st = driver_state(&tag);
	__u32 tenant;

	if (!st || !bytes)
		return;
	tenant = st->tenant;
	barrier();
	if (READ_TAG(st) == tag)
		record(tenant, op, IOMMUD_LAYER_IOMMU, bytes, 0, false);
}

/* A driver function's entry, as the fentry and the kprobe tier attach it: prog_fentry and
 * prog_kprobe. */
#define DRIVER_ENTRY(prog, function, op)                                                           \
	SEC("fentry/" #function)                                                                   \
	int BPF_PROG(prog##_fentry)                                                                \
	{                                                                                          \
		call_enter(op);                                                                    \
		return 0;                                                                          \
	}                                                                                          \
	SEC("kprobe/" #function)                                                                   \
	int BPF_KPROBE(prog##_kprobe)                                                              \
	{                                                                                          \
		call_enter(op);                                                                    \
		return 0;                                                                          \
	}

/* The loader points map's at iommu_map_nosync where the kernel has it (iommu_map calls it, and
 * so may iommufd directly), else at iommu_map: the function the iommu:map tracepoint is in.
 * iommu_unmap, and iommu_unmap_fast (VFIO type1's unmap, which gathers the IOTLB flush), have
 * their own entries, which the loader turns on or off apart; both end at iommu:unmap. */
DRIVER_ENTRY(map, iommu_map, IOMMUD_OP_MAP)
DRIVER_ENTRY(unmap, iommu_unmap, IOMMUD_OP_UNMAP)
DRIVER_ENTRY(unmap_fast, iommu_unmap_fast, IOMMUD_OP_UNMAP)

DRIVER_TRACEPOINTS(map_end, unmap_end, call_end)

DRIVER_TRACEPOINTS(map_count, unmap_count, call_count)

/* The tracepoint tier: the kernel's own iommu:map and iommu:unmap events, counts and sizes.
 * There is no ioctl layer to tell iommufd's maps from the rest, so each event in process
 * context counts: to the tenant whose cgroup the task is in, else tenant-less (slot 0, the
 * empty label), which takes the daemon's sessions and other devices' process-context DMA
 * mapping alike; interrupt context (dma-iommu from softirq and IRQ handlers) never counts. */
static __always_inline void count_tp(__u32 op, __u64 bytes)
{
	if (!in_interrupt())
		record(cgroup_tenant(), op, IOMMUD_LAYER_IOMMU, bytes, 0, false);
}

DRIVER_TRACEPOINTS(map_tp, unmap_tp, count_tp)

/* ---- DMA faults ------------------------------------------------------------------------- */

static __always_inline void count_fault(const struct iommud_fault_key *key)
{
	__u64 one = 1, *n = bpf_map_lookup_elem(&faults, key);

	if (n)
		__sync_fetch_and_add(n, 1);
	else if (bpf_map_update_elem(&faults, key, &one, BPF_NOEXIST) < 0)
		count_drop();
}

/* Drivers that report through report_iommu_fault (AMD-Vi, ARM SMMU, ...): the device. */
SEC("raw_tp/io_page_fault")
int BPF_PROG(fault_reported, struct device *dev, unsigned long iova, int flags)
{
	struct iommud_fault_key key = {};

	(void)bpf_probe_read_kernel_str(key.device, sizeof(key.device),
					BPF_CORE_READ(dev, kobj.name));
	count_fault(&key);
	return 0;
}

/* VT-d only logs which device faulted, rate-limited; its fault interrupt names the unit. The
 * build host may lack the driver, so its struct is named here and relocated against the running
 * kernel's (CO-RE). */
struct intel_iommu___iommud {
	char name[16];
} __attribute__((preserve_access_index));

SEC("kprobe/dmar_fault")
int BPF_KPROBE(fault_vtd, int irq, struct intel_iommu___iommud *iommu)
{
	struct iommud_fault_key key = {};

	(void)bpf_core_read_str(key.device, sizeof(key.device), &iommu->name);
	count_fault(&key);
	return 0;
}

/* virtio-iommu likewise: each event its queue delivers is a fault, counted to the IOMMU's own
 * virtio device. */
SEC("kprobe/viommu_event_handler")
int BPF_KPROBE(fault_virtio, struct virtqueue *vq)
{
	struct iommud_fault_key key = {};

	(void)bpf_probe_read_kernel_str(key.device, sizeof(key.device),
					BPF_CORE_READ(vq, vdev, dev.kobj.name));
	count_fault(&key);
	return 0;
}
