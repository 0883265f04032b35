/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The per-CPU `counters` map (enum kspan_counter in kspan.h) and count(): every
 * loss and every refused context read is counted here, and the agent sums the
 * CPUs' slots. Included first by every file that counts.
 */
#ifndef KSPAN_COUNTERS_BPF_H
#define KSPAN_COUNTERS_BPF_H

#include "kspan.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KSPAN_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

/* A failed context read (thread_ctx.bpf.h): counted when `failed` is NULL, else
 * its counter handed to the caller, which tells a failure from "no span" itself. */
static __always_inline void ctx_failed(__u32 *failed, __u32 counter)
{
	if (failed)
		*failed = counter;
	else
		count(counter);
}

#endif
