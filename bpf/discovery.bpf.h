/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Discovery: following processes as they exec, fork and exit, so the agent
 * scans /proc once at start and never polls after that.
 *
 *   tp_btf/sched_process_exec   the new image's task (process context): a
 *       target's location is cleared (the old image's TLS is gone) and, when the
 *       agent watches (KSPAN_D_WATCH), an EXEC record goes to it
 *   tp_btf/sched_process_fork   the parent (process context): a child process
 *       of a selected target becomes a target with the parent's entry (same
 *       address space copy, so the same TLS location), then a FORK record
 *   tp_btf/sched_process_exit   the exiting thread: when it was the process's
 *       last (signal->live is 0), its targets/node_layouts/proc_seen entries are
 *       deleted here and an EXIT record says so
 *
 * A publisher can appear after exec (ld.so maps its libraries, a library is
 * dlopen'ed, a Node service starts its publisher after its SDK). Instead of a
 * timer, the connection hooks of kspan.bpf.c call discovery_poke() for a
 * process that is not a target: when its VMA count changed since the agent last
 * looked (a dlopen or a new OTEL_CTX mapping adds VMAs), at most once per
 * check_interval_ns, a CHECK record asks the agent to look again. A process the
 * agent ruled out (by selectors or excludes) is marked `ignore` until it execs.
 * With --port selectors, only connections on a selected port (local or peer,
 * `sel_ports`) send a CHECK.
 *
 * Selection slots: a policy swap must never leave a moment where both policies,
 * or neither, apply. Each target carries `sel`, the slots (bit 0, bit 1) whose
 * selection includes it, and `sel_epoch` says which slot is in force. The agent
 * writes the new selection into the other slot's bits, flips `sel_epoch` with
 * one 4-byte store, then clears the old slot: every hook sees one policy or
 * the other, whole. Ports carry the same slot bits.
 *
 * Records go to their own small ring, `proc_events`, each with a wake-up: they
 * are rare and the agent should act on them at once.
 */
#ifndef KSPAN_DISCOVERY_BPF_H
#define KSPAN_DISCOVERY_BPF_H

#include "kspan.h"
#include "counters.bpf.h"

struct kspan_proc_event *unused_proc_event __attribute__((unused));
struct kspan_discovery *unused_discovery __attribute__((unused));
struct kspan_proc_seen *unused_proc_seen __attribute__((unused));
enum kspan_proc_event_type *unused_proc_event_type __attribute__((unused));
enum kspan_discovery_flag *unused_discovery_flag __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, KSPAN_PROC_RING_BYTES);
} proc_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kspan_discovery);
} discovery SEC(".maps");

/* The selection slot in force (0 or 1): flipped by the agent in one store. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sel_epoch SEC(".maps");

/* --port selectors: port -> the slots (bits) that select it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KSPAN_MAX_SEL_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} sel_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KSPAN_MAX_PROC_SEEN);
	__type(key, __u32);
	__type(value, struct kspan_proc_seen);
} proc_seen SEC(".maps");

static __always_inline __u32 sel_slot_bit(void)
{
	__u32 zero = 0;
	__u32 *epoch = bpf_map_lookup_elem(&sel_epoch, &zero);
	return 1u << ((epoch ? *epoch : 0) & 1);
}

/* Whether the selection in force includes this target. */
static __always_inline bool target_selected(const struct kspan_target *t)
{
	return t->sel & sel_slot_bit();
}

static __always_inline struct kspan_discovery *discovery_conf(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&discovery, &zero);
}

/*
 * pid and tgid of the current task (`current_task`, which must be current) as
 * the agent sees them: the kernel's own when the agent runs in the initial pid
 * namespace, else those of the agent's namespace (0 for a task outside it:
 * never a target).
 */
static __always_inline __u64 current_pid_tgid_of(struct task_struct *current_task)
{
	struct kspan_discovery *d = discovery_conf();
	/* In the initial namespace, loads from the task (which the caller may
	 * need anyway): no bpf_get_current_pid_tgid() call. */
	if (!d || !d->pidns_ino)
		return (__u64)current_task->tgid << 32 | (__u32)current_task->pid;
	struct bpf_pidns_info ns = {};
	if (bpf_get_ns_current_pid_tgid(d->pidns_dev, d->pidns_ino, &ns, sizeof(ns)))
		return 0;
	return (__u64)ns.tgid << 32 | ns.pid;
}

static __always_inline __u64 current_pid_tgid(void)
{
	return current_pid_tgid_of(bpf_get_current_task_btf());
}

/* The tgid of another task (a forked child) in the agent's pid namespace, 0 when it is not in it:
 * the entry of its pid's numbers[] (one per namespace level) whose namespace is the agent's. */
#define KSPAN_MAX_PIDNS_LEVEL 8
static __always_inline __u32 task_tgid_seen(struct task_struct *t, const struct kspan_discovery *d)
{
	if (!d->pidns_ino)
		return BPF_CORE_READ(t, tgid);
	struct pid *pid = BPF_CORE_READ(t, group_leader, thread_pid);
	if (!pid)
		return 0;
	__u32 levels = BPF_CORE_READ(pid, level);
	for (__u32 i = 0; i < KSPAN_MAX_PIDNS_LEVEL; i++) {
		if (i > levels)
			break;
		struct upid up = {};
		bpf_probe_read_kernel(&up, sizeof(up), (void *)pid + bpf_core_field_offset(struct pid, numbers) + i * bpf_core_type_size(struct upid));
		if (up.ns && BPF_CORE_READ(up.ns, ns.inum) == d->pidns_ino)
			return up.nr;
	}
	return 0;
}

static __always_inline void proc_emit(__u8 type, __u32 pid, __u32 ppid, __u32 map_count)
{
	struct kspan_proc_event *e = bpf_ringbuf_reserve(&proc_events, sizeof(*e), 0);
	if (!e) {
		count(KSPAN_C_PROC_RING_FULL);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = pid;
	e->ppid = ppid;
	e->map_count = map_count;
	e->type = type;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

static __always_inline bool port_selected(__u16 port, __u32 bit)
{
	__u8 *slots = bpf_map_lookup_elem(&sel_ports, &port);
	return slots && (*slots & bit);
}

/* Whether discovery_poke() needs the socket (--port selectors): the accept hook finds it only then. */
static __always_inline bool discovery_wants_ports(void)
{
	struct kspan_discovery *d = discovery_conf();
	return d && (d->flags & (KSPAN_D_PORTS * sel_slot_bit()));
}

/*
 * A process that is not a target opened a connection (accept returned, or
 * connect sent its SYN): ask the agent to look at it again when it may have
 * started publishing since. `sk` may be NULL (its ports are then unknown).
 */
static __always_inline void discovery_poke(__u32 tgid, const struct sock *sk)
{
	struct kspan_discovery *d = discovery_conf();
	if (!d || !(d->flags & KSPAN_D_WATCH))
		return;
	__u32 bit = sel_slot_bit();
	if (d->flags & (KSPAN_D_PORTS * bit)) {
		if (!sk)
			return;
		__u16 lport = BPF_CORE_READ(sk, __sk_common.skc_num);
		__u16 rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		if (!port_selected(lport, bit) && !port_selected(rport, bit))
			return;
	}
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 map_count = BPF_CORE_READ(task, mm, map_count);
	__u64 now = bpf_ktime_get_ns();
	struct kspan_proc_seen *seen = bpf_map_lookup_elem(&proc_seen, &tgid);
	if (seen) {
		if (seen->ignore || seen->map_count == map_count || now - seen->checked_ns < d->check_interval_ns)
			return;
		seen->map_count = map_count;
		seen->checked_ns = now;
	} else {
		struct kspan_proc_seen init = { .checked_ns = now, .map_count = map_count };
		bpf_map_update_elem(&proc_seen, &tgid, &init, BPF_ANY);
	}
	proc_emit(KSPAN_P_CHECK, tgid, 0, map_count);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_proc_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = current_pid_tgid() >> 32; /* p is current */
	if (!tgid)
		return 0;
	bpf_map_delete_elem(&proc_seen, &tgid);
	struct kspan_target *t = bpf_map_lookup_elem(&targets, &tgid);
	if (t) {
		/* The old image's TLS is gone: no context until the agent resolves the new one. */
		t->loc.kind = KSPAN_TLS_NONE;
		t->loc.scheme = KSPAN_SCHEME_NONE;
		bpf_map_delete_elem(&node_layouts, &tgid);
	}
	struct kspan_discovery *d = discovery_conf();
	if (t || (d && (d->flags & KSPAN_D_WATCH)))
		proc_emit(KSPAN_P_EXEC, tgid, 0, 0);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_proc_fork, struct task_struct *parent, struct task_struct *child)
{
	if (parent->tgid == child->tgid)
		return 0; /* a thread */
	struct kspan_discovery *d = discovery_conf();
	if (!d)
		return 0;
	__u32 ptgid = current_pid_tgid() >> 32; /* parent is current */
	__u32 ctgid = task_tgid_seen(child, d);
	if (!ptgid || !ctgid)
		return 0;
	struct kspan_proc_seen *seen = bpf_map_lookup_elem(&proc_seen, &ptgid);
	if (seen && seen->ignore) {
		struct kspan_proc_seen copy = *seen;
		bpf_map_update_elem(&proc_seen, &ctgid, &copy, BPF_ANY);
		return 0;
	}
	struct kspan_target *t = bpf_map_lookup_elem(&targets, &ptgid);
	if (!t || !target_selected(t) || !(d->flags & KSPAN_D_FOLLOW_FORK))
		return 0;
	struct kspan_target copy = *t;
	if (bpf_map_update_elem(&targets, &ctgid, &copy, BPF_NOEXIST)) {
		count(KSPAN_C_FORK_TABLE_FULL);
		return 0;
	}
	/* The Node walk's layout is the parent's too (the same heap, copied). */
	void *layout = bpf_map_lookup_elem(&node_layouts, &ptgid);
	if (layout) {
		struct kspan_node_layout l = *(struct kspan_node_layout *)layout;
		bpf_map_update_elem(&node_layouts, &ctgid, &l, BPF_ANY);
	}
	proc_emit(KSPAN_P_FORK, ctgid, ptgid, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_proc_exit, struct task_struct *p)
{
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0; /* other threads of the process still run */
	__u32 tgid = current_pid_tgid() >> 32; /* p is current */
	if (!tgid)
		return 0;
	bpf_map_delete_elem(&proc_seen, &tgid);
	if (bpf_map_delete_elem(&targets, &tgid))
		return 0; /* not a target */
	bpf_map_delete_elem(&node_layouts, &tgid);
	proc_emit(KSPAN_P_EXIT, tgid, 0, 0);
	return 0;
}

#endif
