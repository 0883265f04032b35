/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Function spans from uprobes: one record per call of a probed function of a
 * traced process, with its duration and the span its thread had active at entry.
 * Included from kspan.bpf.c (it shares `targets`, the context readers and the
 * counters); its records go to their own ring buffer, `calls`.
 *
 * Hooks, and the context each runs in (the agent attaches the uprobes, once per
 * binary for every process mapping it, with the probe id as the attach cookie;
 * src/uprobes/):
 *   uprobe    uprobe_call_entry    the calling thread, at the function's first
 *                             instruction: a frame pushed on the thread's stack
 *                             of open calls, with the context read from its TLS
 *   uretprobe uprobe_call_return   the calling thread, after the function returned:
 *                             its frame popped, one `kspan_call` record
 *   uretprobe uprobe_dns_return   the same for getaddrinfo(), plus the queried name
 *                             (arg 0) and the distinct addresses of the answer
 *                             (*arg 3, a struct addrinfo list); never payload
 *   uretprobe uprobe_tls_return   the same for SSL_do_handshake/connect/accept,
 *                             plus, after a success, the first int of the SSL
 *                             (arg 0): the negotiated version in OpenSSL 1.1
 *                             and 3.0/3.1 (`ssl_st.version`); the agent keeps
 *                             it only when it is a TLS version
 *   tp_btf/sched_process_exit, sched_process_exec   the thread itself: calls
 *                             still open are closed, flagged unfinished
 *
 * Processes that are not traced (no `targets` entry) leave at the first lookup.
 * Entry and return are matched per thread by the stack pointer: a return's sp is
 * its entry's + 8 (the return address popped), so nested calls, recursion, and
 * two probes on one function pair up, and a frame above the returning one
 * (left by longjmp or unwinding; the kernel drops its uretprobe) is closed
 * flagged abandoned.
 */
#ifndef KSPAN_UPROBES_BPF_H
#define KSPAN_UPROBES_BPF_H

#include "counters.bpf.h"
#include "thread_ctx.bpf.h"

struct kspan_call *unused_call __attribute__((unused));
struct kspan_call_stack *unused_call_stack __attribute__((unused));
enum kspan_call_flag *unused_call_flag __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, KSPAN_CALL_RING_BYTES);
} calls SEC(".maps");

/* tid → the thread's open probed calls. Allocated on a thread's first probed
 * call, freed when it exits (no memory for threads that never call one). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KSPAN_MAX_CALL_THREADS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct kspan_call_stack);
} call_stacks SEC(".maps");

/* An all-zero stack to create a thread's entry from (too large for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kspan_call_stack);
} call_stack_zero SEC(".maps");

/* What a return program adds to the record. */
enum call_kind {
	CALL_PLAIN,
	CALL_DNS,
	CALL_TLS,
};

#define KSPAN_AF_INET 2
#define KSPAN_AF_INET6 10
/* Entries of a getaddrinfo answer looked at (glibc gives one per address and socket type). */
#define KSPAN_DNS_ENTRIES_MAX 24

static __always_inline struct kspan_call_stack *call_stack_get(__u32 tid, __u32 tgid)
{
	struct kspan_call_stack *s = bpf_map_lookup_elem(&call_stacks, &tid);
	if (s)
		return s;
	__u32 zero = 0;
	struct kspan_call_stack *z = bpf_map_lookup_elem(&call_stack_zero, &zero);
	if (!z)
		return NULL;
	bpf_map_update_elem(&call_stacks, &tid, z, BPF_NOEXIST);
	s = bpf_map_lookup_elem(&call_stacks, &tid);
	if (s)
		s->pid = tgid;
	return s;
}

SEC("uprobe")
int BPF_KPROBE(uprobe_call_entry)
{
	__u64 id = current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct kspan_target *t = target_of(tgid);
	if (!t)
		return 0;
	struct kspan_call_stack *s = call_stack_get(tid, tgid);
	if (!s) {
		count(KSPAN_C_CALL_TABLE_FULL);
		return 0;
	}
	__u32 d = s->depth;
	if (d >= KSPAN_CALL_DEPTH) {
		count(KSPAN_C_CALL_TOO_DEEP);
		return 0;
	}
	struct kspan_call_frame *f = &s->frames[d & (KSPAN_CALL_DEPTH - 1)];
	f->start_ns = bpf_ktime_get_ns();
	f->sp = PT_REGS_SP(ctx);
	f->arg0 = PT_REGS_PARM1(ctx);
	f->arg3 = PT_REGS_PARM4(ctx);
	f->probe = (__u32)bpf_get_attach_cookie(ctx);
	read_thread_ctx(tgid, &t->loc, &f->ctx);
	f->drop = f->ctx.valid && !(f->ctx.trace_flags & 1) && !(t->flags & KSPAN_T_KEEP_UNSAMPLED);
	s->depth = d + 1;
	return 0;
}

/* Distinct addresses in a getaddrinfo answer: entries in a row with the same
 * address (one per socket type) count once. */
static __always_inline __u32 dns_addresses(__u64 res_pp)
{
	__u64 ai = 0;
	if (!res_pp || bpf_probe_read_user(&ai, sizeof(ai), (void *)res_pp))
		return 0;
	__u32 n = 0;
	__u64 prev[2] = {}, cur[2];
	int prev_family = -1; /* no family: the first entry counts */
	for (int i = 0; i < KSPAN_DNS_ENTRIES_MAX && ai; i++) {
		/* struct addrinfo: ai_family @4, ai_addr @24, ai_next @40 */
		int family = 0;
		__u64 addr = 0, next = 0;
		if (bpf_probe_read_user(&family, sizeof(family), (void *)(ai + 4)) ||
		    bpf_probe_read_user(&addr, sizeof(addr), (void *)(ai + 24)) ||
		    bpf_probe_read_user(&next, sizeof(next), (void *)(ai + 40)))
			break;
		__builtin_memset(cur, 0, sizeof(cur));
		/* sin_addr @4 of sockaddr_in, sin6_addr @8 of sockaddr_in6 */
		if (family == KSPAN_AF_INET6)
			bpf_probe_read_user(cur, 16, (void *)(addr + 8));
		else
			bpf_probe_read_user(cur, 4, (void *)(addr + 4));
		/* n is never compared: the verifier's states stay prunable */
		n += family != prev_family || cur[0] != prev[0] || cur[1] != prev[1];
		prev[0] = cur[0];
		prev[1] = cur[1];
		prev_family = family;
		ai = next;
	}
	return n;
}

static __always_inline void call_submit(struct kspan_call_stack *s, __u32 i, __u32 tid, __u64 now, __s64 ret,
					__u8 flags, enum call_kind kind)
{
	struct kspan_call_frame *f = &s->frames[i & (KSPAN_CALL_DEPTH - 1)];
	if (f->drop) {
		count(KSPAN_C_UNSAMPLED);
		return;
	}
	struct kspan_call *c = bpf_ringbuf_reserve(&calls, sizeof(*c), 0);
	if (!c) {
		count(KSPAN_C_RINGBUF_FULL);
		return;
	}
	__builtin_memset(c, 0, sizeof(*c));
	c->start_ns = f->start_ns;
	c->end_ns = now;
	c->ret = ret;
	c->pid = s->pid;
	c->tid = tid;
	c->probe = f->probe;
	c->outer_probe = i > 0 ? s->frames[(i - 1) & (KSPAN_CALL_DEPTH - 1)].probe : 0;
	c->flags = flags;
	c->depth = i;
	c->ctx = f->ctx;
	if (kind == CALL_DNS) {
		if (f->arg0)
			bpf_probe_read_user_str(c->name, sizeof(c->name), (void *)f->arg0);
		if (ret == 0)
			c->count = dns_addresses(f->arg3);
	} else if (kind == CALL_TLS && (int)ret == 1 && f->arg0) {
		__s32 version = 0;
		if (!bpf_probe_read_user(&version, sizeof(version), (void *)f->arg0))
			c->count = version;
	}
	/* Wake the reader only past an eighth of the ring; it also drains on a short timer. */
	__u64 avail = bpf_ringbuf_query(&calls, BPF_RB_AVAIL_DATA);
	__u64 mark = bpf_ringbuf_query(&calls, BPF_RB_RING_SIZE) / 8;
	bool crossed = avail >= mark && avail < mark + sizeof(struct kspan_call) + 8;
	bpf_ringbuf_submit(c, crossed ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

static __always_inline int call_pop(struct pt_regs *ctx, enum call_kind kind)
{
	__u32 tid = (__u32)current_pid_tgid();
	struct kspan_call_stack *s = bpf_map_lookup_elem(&call_stacks, &tid);
	if (!s)
		return 0;
	__u64 entry_sp = PT_REGS_SP(ctx) - 8;
	__u64 now = bpf_ktime_get_ns();
	/* Frames deeper than the returning call (lower sp) were returned past
	 * without their own return: longjmp or unwinding. */
	for (int k = 0; k < KSPAN_CALL_DEPTH; k++) {
		__u32 d = s->depth;
		if (d == 0 || d > KSPAN_CALL_DEPTH)
			break;
		if (s->frames[(d - 1) & (KSPAN_CALL_DEPTH - 1)].sp >= entry_sp)
			break;
		s->depth = d - 1;
		call_submit(s, d - 1, tid, now, 0, KSPAN_CALL_F_ABANDONED, CALL_PLAIN);
	}
	__u32 d = s->depth;
	if (d == 0 || d > KSPAN_CALL_DEPTH) {
		count(KSPAN_C_CALL_UNMATCHED);
		return 0;
	}
	__u32 i = d - 1;
	if (s->frames[i & (KSPAN_CALL_DEPTH - 1)].sp != entry_sp)
		return 0; /* the returning call was not kept (counted too deep at its entry) */
	s->depth = i;
	call_submit(s, i, tid, now, PT_REGS_RC(ctx), 0, kind);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(uprobe_call_return)
{
	return call_pop(ctx, CALL_PLAIN);
}

SEC("uretprobe")
int BPF_KRETPROBE(uprobe_dns_return)
{
	return call_pop(ctx, CALL_DNS);
}

SEC("uretprobe")
int BPF_KRETPROBE(uprobe_tls_return)
{
	return call_pop(ctx, CALL_TLS);
}

/* The thread leaves (exit) or its program is replaced (exec): its open calls
 * will never return; each is closed now, flagged unfinished. */
static __always_inline int calls_close_thread(void)
{
	__u32 tid = (__u32)current_pid_tgid();
	struct kspan_call_stack *s = bpf_map_lookup_elem(&call_stacks, &tid);
	if (!s)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	for (int k = 0; k < KSPAN_CALL_DEPTH; k++) {
		__u32 d = s->depth;
		if (d == 0 || d > KSPAN_CALL_DEPTH)
			break;
		s->depth = d - 1;
		call_submit(s, d - 1, tid, now, 0, KSPAN_CALL_F_UNFINISHED, CALL_PLAIN);
	}
	bpf_map_delete_elem(&call_stacks, &tid);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(calls_on_exit)
{
	return calls_close_thread();
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(calls_on_exec)
{
	return calls_close_thread();
}

#endif
