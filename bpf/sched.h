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
	__u8 _pad[7];
	struct kspan_trace_ctx ctx; /* the span */
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
	__u8 drop;                  /* the span is not sampled: nothing is aggregated, no record */
	__u8 _pad[6];
};

#endif
