/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Scheduler time per span: how long each target thread ran, blocked and waited
 * in the run queue while it served a span. Included from kspan.bpf.c.
 *
 * Hooks (tp_btf, no kprobes):
 *   sched_switch      on the CPU that switches, `current` still the outgoing task
 *                     (prev): its TLS is readable, but no page fault can be
 *                     served there, so a context read of a page not resident
 *                     fails (counted: KSPAN_C_SCHED_CTX_FAILED; so is a record
 *                     caught mid-update, the thread preempted in its writer);
 *                     the thread then keeps the span it had. Switch-out of
 *                     prev, switch-in of next.
 *   sched_wakeup      any context (the waker's): a blocked thread becomes runnable.
 *   sched_wakeup_new  a new thread: state left by a dead thread with its tid is closed.
 *
 * At a target thread's switch-out its span S is read from TLS. The run that
 * ends goes to S (on-CPU: the delta of se.sum_exec_runtime, what schedstat
 * reports), and so does the off-CPU interval that follows: blocked (switched
 * out not runnable, until its wakeup) and run-queue wait (from the wakeup, or
 * from a preemption, until the switch-in). A (thread, span) aggregate is
 * emitted as one `sched_events` record when the thread next switches out under
 * another span or none, or exits; when it switches out under none, the run that
 * ended goes to the closing span (the span ended during it). Threads that switch
 * out with no span keep no state and make no record; nor do threads that switch
 * out under an unsampled span (each such switch-out counted:
 * KSPAN_C_SCHED_UNSAMPLED): to the table such a span is no span, so its
 * preemptions cost no insert and delete, and the switch-ins and wakeups of the
 * machine skip the table while only unsampled spans are active (`sched_live`).
 *
 * Off-CPU intervals of at least `sched_conf.off_event_ns` are counted in the
 * aggregate and, the first KSPAN_SCHED_MAX_OFF_EVENTS of it, each made into a
 * kspan_sched_off record ahead of the aggregate: a blocked one at its wakeup,
 * with the woken task's kernel stack (on_sched_wakeup_nostack: without), a
 * run-queue wait at the switch-in.
 *
 * The untraced path, what every other switch on the machine pays: one
 * `discovery` lookup (whether the agent is in a pid namespace of its own: then
 * prev's pid as that namespace sees it), one `targets` lookup (prev's process)
 * and one `sched_threads` lookup (next's thread).
 */
#ifndef KSPAN_SCHED_BPF_H
#define KSPAN_SCHED_BPF_H

#include "sched.h"
#include "counters.bpf.h"
#include "thread_ctx.bpf.h"

#define KSPAN_PF_EXITING 0x00000004

struct kspan_sched_event *unused_sched_event __attribute__((unused));
struct kspan_sched_thread *unused_sched_thread __attribute__((unused));
enum kspan_sched_flag *unused_sched_flag __attribute__((unused));
enum kspan_sched_limit *unused_sched_limit __attribute__((unused));
struct kspan_sched_off *unused_sched_off __attribute__((unused));
struct kspan_sched_conf *unused_sched_conf __attribute__((unused));
enum kspan_sched_off_kind *unused_sched_off_kind __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kspan_sched_conf);
} sched_conf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, KSPAN_SCHED_RING_BYTES);
} sched_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KSPAN_MAX_SCHED_THREADS);
	__type(key, __u32);
	__type(value, struct kspan_sched_thread);
} sched_threads SEC(".maps");

/*
 * How many threads have state in `sched_threads`: added to after an insert,
 * taken from after a delete, so never fewer than there are. While it is 0
 * (threads that switch out between requests with no span keep none), the
 * wakeups and switch-ins of every task on the machine skip the table. A thread's
 * state is inserted at its own switch-out, which is over before anything can
 * wake it or switch it in again (the kernel orders both after it: p->on_cpu).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} sched_live SEC(".maps");

static __always_inline void sched_live_add(__s64 delta)
{
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&sched_live, &zero);
	if (n)
		__sync_fetch_and_add(n, delta);
}

/* The state of thread `tid`, or NULL; without a table lookup while no thread has any. */
static __always_inline struct kspan_sched_thread *sched_thread_of(__u32 tid)
{
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&sched_live, &zero);
	if (n && *n <= 0)
		return NULL;
	return bpf_map_lookup_elem(&sched_threads, &tid);
}

/* Removes thread `tid`'s state. */
static __always_inline void sched_thread_delete(__u32 tid)
{
	if (!bpf_map_delete_elem(&sched_threads, &tid))
		sched_live_add(-1);
}

/* A new thread's zeroed state (too large for the stack next to a context). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kspan_sched_thread);
} sched_scratch SEC(".maps");

/* The same span: trace_id, span_id, trace_flags and valid (not the attributes). */
static __always_inline bool sched_ctx_equal(const struct kspan_trace_ctx *a, const struct kspan_trace_ctx *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] &&
	       *(const __u16 *)&a->trace_flags == *(const __u16 *)&b->trace_flags;
}

/* Emits the thread's aggregate. */
static __always_inline void sched_emit(struct kspan_sched_thread *st, __u8 flags)
{
	struct kspan_sched_event *e = bpf_ringbuf_reserve(&sched_events, sizeof(*e), 0);
	if (!e) {
		count(KSPAN_C_RINGBUF_FULL);
		return;
	}
	*e = st->agg;
	e->flags |= flags;
	/* Wake the agent only when the ring is an eighth full; it drains on a timer otherwise. */
	__u64 avail = bpf_ringbuf_query(&sched_events, BPF_RB_AVAIL_DATA);
	__u64 mark = bpf_ringbuf_query(&sched_events, BPF_RB_RING_SIZE) / 8;
	bool crossed = avail >= mark && avail < mark + sizeof(*e) + 8;
	bpf_ringbuf_submit(e, crossed ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* The threshold of off-CPU records (0: none). */
static __always_inline __u64 sched_off_event_ns(void)
{
	__u32 zero = 0;
	struct kspan_sched_conf *c = bpf_map_lookup_elem(&sched_conf, &zero);
	return c ? c->off_event_ns : 0;
}

/*
 * An off-CPU interval of at least the threshold: counted in the aggregate, and
 * a kspan_sched_off record for the first KSPAN_SCHED_MAX_OFF_EVENTS. `task`
 * (blocked intervals, at the wakeup: the task cannot run yet, its stack is
 * still the blocked one) is whose kernel stack to take; NULL for none.
 */
static __always_inline void sched_off_emit(struct kspan_sched_thread *st, __u8 kind, __u64 start, __u64 dur,
					   struct task_struct *task)
{
	__u64 min = sched_off_event_ns();
	if (!min || dur < min)
		return;
	if (st->agg.off_events++ >= KSPAN_SCHED_MAX_OFF_EVENTS)
		return; /* counted in the aggregate: the agent reports the excess */
	struct kspan_sched_off *e = bpf_ringbuf_reserve(&sched_events, sizeof(*e), 0);
	if (!e) {
		count(KSPAN_C_RINGBUF_FULL);
		return;
	}
	e->start_ns = start;
	e->duration_ns = dur;
	__builtin_memcpy(e->trace_id, st->agg.ctx.trace_id, sizeof(e->trace_id));
	__builtin_memcpy(e->span_id, st->agg.ctx.span_id, sizeof(e->span_id));
	e->pid = st->agg.pid;
	e->tid = st->agg.tid;
	e->syscall = st->syscall;
	e->kind = kind;
	e->frames = 0;
	e->_pad[0] = e->_pad[1] = 0;
	long n = task ? bpf_get_task_stack(task, e->stack, sizeof(e->stack), 0) : 0;
	if (n > 0)
		e->frames = n / sizeof(__u64);
	/* What the helper did not fill goes out zeroed (the ring's memory is not cleared). */
	__u64 *frame = (__u64 *)e->stack;
	for (int i = 0; i < KSPAN_SCHED_STACK_DEPTH; i++)
		if (i >= e->frames)
			frame[i] = 0;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

/* Starts a new aggregate for sampled span `cur` (read from record `rec`), whose first run began at `start`. */
static __always_inline void sched_open(struct kspan_sched_thread *st, const struct kspan_trace_ctx *cur, __u64 rec,
				       __u16 attrs_size, __u32 tgid, __u32 tid, __u64 start)
{
	__builtin_memset(&st->agg, 0, sizeof(st->agg));
	st->agg.ctx = *cur;
	st->agg.pid = tgid;
	st->agg.tid = tid;
	st->agg.start_ns = start;
	st->agg.max_off_syscall = -1;
	read_thread_ctx_attrs(rec, attrs_size, &st->agg.ctx);
}

/* The syscall a task is in (-1: none, e.g. preempted in user space). */
static __always_inline __s32 task_syscall(struct task_struct *task)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return -1;
	return (__s32)BPF_CORE_READ(regs, orig_ax);
}

/* next, a thread that switched out under a span, gets a CPU again. */
static __always_inline void sched_in(struct kspan_sched_thread *st, __u64 now)
{
	__u64 out = st->out_ns;
	if (!out) {
		st->out_ns = 0;
		return;
	}
	__u64 off = now - out;
	/* A blocking switch-out with no wakeup seen stayed runnable (a signal was pending): all run-queue. */
	__u64 runnable = out;
	if (st->blocked && st->wake_ns >= out && st->wake_ns <= now) {
		st->agg.blocked_ns += st->wake_ns - out;
		runnable = st->wake_ns;
	}
	st->agg.runq_ns += now - runnable;
	sched_off_emit(st, KSPAN_OFF_RUNQUEUE, runnable, now - runnable, NULL);
	if (bpf_get_smp_processor_id() != st->cpu)
		st->agg.migrations++;
	if (off > st->agg.max_off_ns) {
		st->agg.max_off_ns = off;
		st->agg.max_off_start_ns = out;
		st->agg.max_off_syscall = st->syscall;
		if (st->blocked && st->wake_ns >= out)
			st->agg.flags |= KSPAN_SF_MAX_OFF_BLOCKED;
		else
			st->agg.flags &= ~KSPAN_SF_MAX_OFF_BLOCKED;
	}
	st->in_ns = now;
	st->out_ns = 0;
}

/* The kernel's run-queue wait of a task so far (sched_info.run_delay; 0 without CONFIG_SCHED_INFO). */
static __always_inline __u64 task_run_delay(struct task_struct *task)
{
	if (!bpf_core_field_exists(task->sched_info))
		return 0;
	return task->sched_info.run_delay;
}

/*
 * prev switches out while the interval after its last switch-out is still open:
 * the kernel ran this program for neither the switch-in that ended it nor, when
 * it blocked, the wakeup (on 6.18, about one sleep in 200 under load: the task's
 * own switch-in and voluntary-switch counts moved, the programs' runs for it did
 * not, and no recursion miss was counted). The interval is closed here from the
 * thread's own accounting: it ended `run` (the on-CPU time since, one run on
 * this CPU) before now; of it, the run-queue wait is what sched_info.run_delay
 * grew by, the rest blocked (its record with no stack: the one blocked then is
 * gone). Counted: KSPAN_C_SCHED_IN_UNSEEN.
 */
static __always_inline void sched_in_unseen(struct kspan_sched_thread *st, struct task_struct *prev, __u64 run,
					    __u64 now)
{
	count(KSPAN_C_SCHED_IN_UNSEEN);
	__u64 out = st->out_ns;
	__u64 in = now > run ? now - run : now;
	if (in < out)
		in = out;
	if (st->blocked && !st->wake_ns) {
		__u64 delay = task_run_delay(prev) - st->run_delay;
		__u64 wake = delay < in - out ? in - delay : out;
		st->wake_ns = wake;
		if (wake > out)
			sched_off_emit(st, KSPAN_OFF_BLOCKED, out, wake - out, NULL);
	}
	sched_in(st, in);
}

/*
 * prev, a target's thread, leaves its CPU. Returns the time it read, or 0 when
 * the thread had no span and no state: then nothing is timed (the path of a
 * thread that blocks between requests, once per request: the clock read is a
 * fifth of this program's cost there).
 */
static __always_inline __u64 sched_out(const struct kspan_target *t, struct task_struct *prev, __u64 seen,
				       bool preempt, unsigned int prev_state)
{
	/* `sched_threads` is keyed by the kernel's tid (what sched_in and the wakeups have);
	 * the records carry pid and tid as the agent sees them (`seen`). */
	__u32 tid = prev->pid, tgid = seen >> 32, seen_tid = (__u32)seen;
	struct kspan_sched_thread *st = sched_thread_of(tid);
	__u64 now;

	if (prev->flags & KSPAN_PF_EXITING) {
		/* Its memory may be gone already: no context read; what it had goes out. */
		if (!st)
			return 0;
		now = bpf_ktime_get_ns();
		st->agg.end_ns = now;
		sched_emit(st, KSPAN_SF_EXITED);
		sched_thread_delete(tid);
		return now;
	}

	/* A read that fails is told from "no span" here, and counted as the
	 * scheduler's (KSPAN_C_SCHED_CTX_FAILED), not as the TCP hooks' failures. */
	struct kspan_trace_ctx cur;
	__u16 attrs_size;
	__u32 failed = 0;
	__u64 rec = read_thread_ctx_head(prev, tgid, &t->loc, &cur, &attrs_size, &failed);
	if (failed) {
		count(KSPAN_C_SCHED_CTX_FAILED);
		/* Not "no span": the thread keeps the one it had (none: nothing to keep). */
		if (!st)
			return 0;
		cur = st->agg.ctx;
		rec = 0;
	}
	/* An unsampled span keeps no state: the switch-out is counted, and a
	 * (sampled) span the thread had ends where it would for any other span. */
	bool unsampled = cur.valid && !(cur.trace_flags & 1) && !(t->flags & KSPAN_T_KEEP_UNSAMPLED);
	if (unsampled)
		count(KSPAN_C_SCHED_UNSAMPLED);
	if (!st && (!cur.valid || unsampled))
		return 0; /* no span: no state, no record */
	now = bpf_ktime_get_ns();

	__u64 sum = prev->se.sum_exec_runtime;
	/* The run that ends: since the last switch-out we saw, or since this run's switch-in. */
	__u64 run = st ? sum - st->sum_out : sum - prev->se.prev_sum_exec_runtime;
	if (st && st->out_ns)
		sched_in_unseen(st, prev, run, now); /* its switch-in was not seen: the interval goes to the span it had */

	if (st && !sched_ctx_equal(&st->agg.ctx, &cur)) {
		__u8 flags = 0;
		if (!cur.valid) {
			/* The span ended during this run: the run is its last. */
			st->agg.on_cpu_ns += run;
			st->agg.end_ns = now;
			flags = KSPAN_SF_TAIL;
		} else {
			st->agg.end_ns = st->in_ns ? st->in_ns : now;
		}
		sched_emit(st, flags);
		if (!cur.valid || unsampled) {
			sched_thread_delete(tid);
			return now;
		}
		sched_open(st, &cur, rec, attrs_size, tgid, seen_tid, now - run);
	} else if (!st) {
		__u32 zero = 0;
		struct kspan_sched_thread *init = bpf_map_lookup_elem(&sched_scratch, &zero);
		if (!init)
			return now;
		__builtin_memset(init, 0, sizeof(*init));
		if (!bpf_map_update_elem(&sched_threads, &tid, init, BPF_NOEXIST)) {
			sched_live_add(1);
		} else if (!bpf_map_lookup_elem(&sched_threads, &tid)) {
			count(KSPAN_C_SCHED_TABLE_FULL);
			return now;
		}
		st = bpf_map_lookup_elem(&sched_threads, &tid);
		if (!st)
			return now;
		sched_open(st, &cur, rec, attrs_size, tgid, seen_tid, now - run);
	}

	/* Voluntary as the kernel counts nvcsw: not a preemption, and a sleeping state. */
	bool voluntary = !preempt && prev_state != 0;
	st->agg.on_cpu_ns += run;
	if (voluntary)
		st->agg.voluntary++;
	else
		st->agg.involuntary++;
	st->syscall = task_syscall(prev);
	st->sum_out = sum;
	st->run_delay = task_run_delay(prev);
	st->out_ns = now;
	st->wake_ns = 0;
	st->blocked = voluntary;
	st->cpu = bpf_get_smp_processor_id();
	return now;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u64 now = 0;
	/* prev is current: its pid and tgid as the agent sees them (a sidecar's own pid namespace). */
	__u64 seen = current_pid_tgid_of(prev);
	struct kspan_target *t = seen ? target_of(seen >> 32) : NULL;
	if (t)
		now = sched_out(t, prev, seen, preempt, prev_state);
	struct kspan_sched_thread *st = sched_thread_of(next->pid);
	if (st)
		sched_in(st, now ? now : bpf_ktime_get_ns());
	return 0;
}

/* p, blocked, becomes runnable: a long block makes a record, with p's stack when `stack`. */
static __always_inline void sched_wakeup(struct task_struct *p, bool stack)
{
	struct kspan_sched_thread *st = sched_thread_of(p->pid);
	if (!st || !st->out_ns || !st->blocked || st->wake_ns)
		return;
	__u64 now = bpf_ktime_get_ns();
	st->wake_ns = now;
	if (now > st->out_ns)
		sched_off_emit(st, KSPAN_OFF_BLOCKED, st->out_ns, now - st->out_ns, stack ? p : NULL);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_sched_wakeup, struct task_struct *p)
{
	sched_wakeup(p, true);
	return 0;
}

/* The same without bpf_get_task_stack, for a kernel that refuses it to tp_btf: records with no stack. */
SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_sched_wakeup_nostack, struct task_struct *p)
{
	sched_wakeup(p, false);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(on_sched_wakeup_new, struct task_struct *p)
{
	/* A tid is reused: what a dead thread left (its exit unseen) goes out first. */
	__u32 tid = p->pid;
	struct kspan_sched_thread *st = sched_thread_of(tid);
	if (st) {
		st->agg.end_ns = st->in_ns ? st->in_ns : st->out_ns;
		sched_emit(st, KSPAN_SF_EXITED);
		sched_thread_delete(tid);
	}
	return 0;
}

#endif
