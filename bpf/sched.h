/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Records of the scheduler programs (bpf/sched.bpf.h), shared with the agent
 * like kspan.h: the TypeScript views in src/records/abi.generated.ts are
 * generated from the object's BTF. Fields ordered by size, padded explicitly.
 */
#ifndef KSPAN_SCHED_H
#define KSPAN_SCHED_H

#include "kspan.h"

enum kspan_sched_limit {
	KSPAN_SCHED_RING_BYTES = 1 << 20,   /* the `sched_events` ring */
	KSPAN_MAX_SCHED_THREADS = 16384,    /* threads under a span at once (`sched_threads`) */
	KSPAN_SCHED_STACK_DEPTH = 12,       /* kernel return addresses in a kspan_sched_off record */
	KSPAN_SCHED_MAX_OFF_EVENTS = 32,    /* kspan_sched_off records per (thread, span); the rest only counted */
};

/* kspan_sched_off.kind */
enum kspan_sched_off_kind {
	KSPAN_OFF_BLOCKED = 1,      /* switched out not runnable → its wakeup */
	KSPAN_OFF_RUNQUEUE = 2,     /* runnable (woken, or preempted) → switch-in */
};

/* Bits of kspan_sched_event.flags. */
enum kspan_sched_flag {
	KSPAN_SF_FLUSHED = 1,       /* closed by the agent at shutdown, not by a span change */
	KSPAN_SF_EXITED = 2,        /* closed because the thread exited */
	KSPAN_SF_MAX_OFF_BLOCKED = 4, /* the longest off-CPU interval was blocked (else waiting to run) */
	KSPAN_SF_TAIL = 8,          /* the thread switched out with no span: its last run went to this span */
};

/*
 * Scheduler time of one thread under one span, aggregated in the kernel and
 * emitted when the span the thread switches out under changes (or it exits).
 * A run (switch-in to switch-out) goes to the span the thread switched out
 * under, and so does the off-CPU time after that switch-out.
 */
struct kspan_sched_event {
	__u64 start_ns;             /* CLOCK_MONOTONIC: start of the first run under the span */
	__u64 end_ns;               /* last switch-in under the span, or the switch-out that closed it */
	__u64 on_cpu_ns;            /* se.sum_exec_runtime of the runs under the span */
	__u64 blocked_ns;           /* switch-out not runnable → its wakeup */
	__u64 runq_ns;              /* wakeup (or a preemption) → switch-in */
	__u64 max_off_ns;           /* the longest off-CPU interval */
	__u64 max_off_start_ns;     /* when it began (switch-out) */
	__u32 pid;
	__u32 tid;
	__u32 voluntary;            /* switch-outs that blocked (nvcsw) */
	__u32 involuntary;          /* preemptions (nivcsw) */
	__u32 migrations;           /* switch-ins on another CPU than the switch-out before */
	__s32 max_off_syscall;      /* the syscall the thread was in at that switch-out, -1: none (preempted in user space) */
	__u8 flags;                 /* enum kspan_sched_flag */
	__u8 _pad[3];
	__u32 off_events;           /* off-CPU intervals ≥ the event threshold (a kspan_sched_off record for the first KSPAN_SCHED_MAX_OFF_EVENTS) */
	struct kspan_trace_ctx ctx; /* the span */
};

/*
 * One off-CPU interval of a (thread, span) that lasted at least the threshold
 * (kspan_sched_conf.off_event_ns), on the same ring as the aggregates and
 * always ahead of its own (thread, span)'s aggregate record. Told from a
 * kspan_sched_event by its size. A blocked interval carries the thread's
 * kernel stack as it was while blocked (taken at its wakeup; the scheduler's
 * own frames included, the agent skips them).
 */
struct kspan_sched_off {
	__u64 start_ns;             /* CLOCK_MONOTONIC: switch-out (blocked, preempted) or wakeup (runqueue after a block) */
	__u64 duration_ns;
	__u8 stack[KSPAN_SCHED_STACK_DEPTH * 8]; /* kernel return addresses (u64, host order), innermost first; `frames` of them */
	__u8 trace_id[16];          /* the span, as in its aggregate */
	__u8 span_id[8];
	__u32 pid;
	__u32 tid;
	__s32 syscall;              /* the syscall the thread was in at the switch-out, -1 none */
	__u8 kind;                  /* enum kspan_sched_off_kind */
	__u8 frames;                /* valid entries of `stack` (0: none taken, or a runqueue interval) */
	__u8 _pad[2];
};

/* The scheduler programs' settings (`sched_conf`, one entry, written by the agent before attaching). */
struct kspan_sched_conf {
	__u64 off_event_ns;         /* shortest off-CPU interval that makes a kspan_sched_off record; 0: none */
};

/* Per-thread state (`sched_threads`, keyed by tid): only threads that switched out under a span. */
struct kspan_sched_thread {
	struct kspan_sched_event agg; /* the open aggregate */
	__u64 sum_out;              /* se.sum_exec_runtime at the last switch-out */
	__u64 out_ns;               /* last switch-out; 0 while on a CPU */
	__u64 wake_ns;              /* its wakeup, after a blocking switch-out */
	__u64 in_ns;                /* last switch-in */
	__s32 syscall;              /* syscall at the last switch-out, -1 none */
	__u32 cpu;                  /* CPU of the last switch-out */
	__u8 blocked;               /* the last switch-out blocked */
	__u8 _pad[7];
	__u64 run_delay;            /* sched_info.run_delay (the kernel's run-queue wait so far) at the last switch-out */
};

#endif
