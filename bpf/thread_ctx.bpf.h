/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Reads the span a thread has active from its TLS (OTEP 4947 otel_thread_ctx_v1).
 *
 * Called only from syscall-context hooks, where `current` is the thread that
 * made the call and is in the kernel, so it cannot be rewriting its own record
 * under us. (In softirq context `current` is unrelated: never call it there.)
 *
 * Where the TLS pointer lives is resolved per process in userspace
 * (src/context/tls-resolver.ts) and kept in the process's `targets` entry:
 *   STATIC: &otel_thread_ctx_v1 = fsbase + offset
 *   DTV:    &otel_thread_ctx_v1 = dtv[module] + offset, dtv = *(fsbase + 8)
 *           loc->dtv_layout says whose DTV: glibc x86_64 has 16-byte entries,
 *           the entry count at dtv[-1], and 0 or -1 for a block the thread has
 *           not allocated yet (lazily, on first access); musl x86_64 has 8-byte
 *           entries and the count at dtv[0], and allocates a dlopen'ed module's
 *           block for every thread at dlopen time.
 * Then the pointer, then the record header: trace_id[16] span_id[8] valid u8
 * trace_flags u8 attrs_size u16, then the first min(attrs_size,
 * KSPAN_CTX_ATTRS_MAX) bytes of the attributes. The header is copied once,
 * `valid` with it (the writer thread is in the kernel, or off its CPU, and
 * cannot change it under us: one helper call, not two); when there are
 * attributes, `valid` is read again after them, and a change means a torn read.
 *
 * Outcomes and counters (enum kspan_counter): no location, NULL pointer,
 * unallocated DTV block → no context, not counted (the thread has no span);
 * a read that faults (bad pointer, page not resident) → KSPAN_C_CTX_FAULT;
 * valid != 1 → KSPAN_C_CTX_INVALID; changed while copied → KSPAN_C_CTX_TORN.
 * A caller that tells a failed read from "no span" itself (the scheduler's)
 * passes `failed`: the header read's fault and invalid outcomes are then
 * written there instead of counted.
 */
#ifndef KSPAN_THREAD_CTX_BPF_H
#define KSPAN_THREAD_CTX_BPF_H

#include "counters.bpf.h"
#include "nodejs_ctx.bpf.h"

/* glibc's dtv_t is {pointer, to_free}, length at dtv[-1]; musl's a bare
 * pointer, length at dtv[0] (enum kspan_dtv_layout) */
#define KSPAN_DTV_GLIBC_ENTRY 16
#define KSPAN_DTV_MUSL_ENTRY 8
#define KSPAN_RECORD_VALID_OFF 24

/* The record header as the writer lays it out (packed, host order). */
struct otel_thread_ctx_head {
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 valid;
	__u8 trace_flags;
	__u16 attrs_size;
} __attribute__((packed));

/* The address of the thread's TLS pointer, or 0 when it has none (yet). */
static __always_inline __u64 thread_ctx_slot(const struct kspan_tls_loc *loc, __u64 tp, __u32 *failed)
{
	if (loc->kind == KSPAN_TLS_STATIC)
		return tp + (__u64)loc->offset;
	if (loc->kind != KSPAN_TLS_DTV)
		return 0;

	__u64 module = loc->module;
	if (module == 0 || module > KSPAN_MAX_TLS_MODULE)
		return 0;
	__u64 dtv = 0, len = 0, block = 0;
	__u64 esz = loc->dtv_layout == KSPAN_DTV_MUSL ? KSPAN_DTV_MUSL_ENTRY : KSPAN_DTV_GLIBC_ENTRY;
	__u64 len_at = loc->dtv_layout == KSPAN_DTV_MUSL ? 0 : (__u64)-KSPAN_DTV_GLIBC_ENTRY;
	if (bpf_probe_read_user(&dtv, sizeof(dtv), (void *)(tp + 8)) || !dtv) {
		ctx_failed(failed, KSPAN_C_CTX_FAULT);
		return 0;
	}
	if (bpf_probe_read_user(&len, sizeof(len), (void *)(dtv + len_at))) {
		ctx_failed(failed, KSPAN_C_CTX_FAULT);
		return 0;
	}
	if (module > len)
		return 0; /* the thread's dtv predates the module: not touched yet */
	if (bpf_probe_read_user(&block, sizeof(block), (void *)(dtv + module * esz))) {
		ctx_failed(failed, KSPAN_C_CTX_FAULT);
		return 0;
	}
	if (block == 0 || block == (__u64)-1)
		return 0; /* TLS_DTV_UNALLOCATED: allocated on the thread's first access */
	return block + (__u64)loc->offset;
}

/*
 * The header of the active record of `task` (current) into `out`: ids, flags, valid (no
 * attribute bytes, attrs_size 0). Returns the record's address and, in
 * `*attrs_size`, the record's own attrs_size, for read_thread_ctx_attrs() when
 * the caller needs the attributes too (an aggregate opens under this span); 0
 * when the thread has no context. Reading the attributes later in the same hook
 * is as safe as reading them now: the writer is this thread, in the kernel.
 * `failed`: NULL to count failures, else where their counter goes (see the top).
 */
static __always_inline __u64 read_thread_ctx_head(struct task_struct *task, __u32 tgid,
						  const struct kspan_tls_loc *loc, struct kspan_trace_ctx *out,
						  __u16 *attrs_size, __u32 *failed)
{
	__builtin_memset(out, 0, sizeof(*out));
	*attrs_size = 0;

	if (loc->kind == KSPAN_TLS_NONE || (loc->scheme != KSPAN_SCHEME_OTEL_V1 && loc->scheme != KSPAN_SCHEME_NODEJS_V1))
		return 0;

	__u64 tp = task->thread.fsbase;
	if (!tp)
		return 0;
	__u64 slot = thread_ctx_slot(loc, tp, failed);
	if (!slot)
		return 0;

	__u64 rec = 0;
	if (loc->scheme == KSPAN_SCHEME_NODEJS_V1) {
		/* The TLS holds the Node discovery struct: walk V8 to the record. */
		rec = nodejs_record(tgid, slot, failed);
	} else if (bpf_probe_read_user(&rec, sizeof(rec), (void *)slot)) {
		ctx_failed(failed, KSPAN_C_CTX_FAULT);
		return 0;
	}
	if (!rec)
		return 0; /* no active span */

	/* One copy of the header, valid with it: the only writer is this thread,
	 * which is in the kernel (or off its CPU) while we read, so the copy is a
	 * snapshot; a writer caught mid-update left valid at 0. */
	struct otel_thread_ctx_head head;
	if (bpf_probe_read_user(&head, sizeof(head), (void *)rec)) {
		ctx_failed(failed, KSPAN_C_CTX_FAULT);
		return 0;
	}
	if (head.valid != 1) {
		ctx_failed(failed, KSPAN_C_CTX_INVALID);
		return 0;
	}
	__builtin_memcpy(out->trace_id, head.trace_id, sizeof(out->trace_id));
	__builtin_memcpy(out->span_id, head.span_id, sizeof(out->span_id));
	out->trace_flags = head.trace_flags;
	out->valid = 1;
	*attrs_size = head.attrs_size;
	return rec;
}

/*
 * The head of the record's attributes into `out` (whose ids came from `rec`):
 * the first min(attrs_size, KSPAN_CTX_ATTRS_MAX) bytes, then valid once more so
 * they belong to the same span. A read that faults or tears leaves the context
 * its ids without attributes, counted.
 */
static __always_inline void read_thread_ctx_attrs(__u64 rec, __u16 attrs_size, struct kspan_trace_ctx *out)
{
	__u32 n = attrs_size;
	if (!rec || !n)
		return;
	if (n > KSPAN_CTX_ATTRS_MAX)
		n = KSPAN_CTX_ATTRS_MAX;
	__u8 valid_after = 0;
	if (bpf_probe_read_user(out->attrs, n, (void *)(rec + sizeof(struct otel_thread_ctx_head))) ||
	    bpf_probe_read_user(&valid_after, 1, (void *)(rec + KSPAN_RECORD_VALID_OFF))) {
		__builtin_memset(out->attrs, 0, sizeof(out->attrs));
		count(KSPAN_C_CTX_FAULT);
		return;
	}
	if (valid_after != 1) {
		__builtin_memset(out->attrs, 0, sizeof(out->attrs));
		count(KSPAN_C_CTX_TORN);
		return;
	}
	out->attrs_size = attrs_size;
}

/* The whole context: header and attributes (once-per-connection hooks). */
static __always_inline void read_thread_ctx(__u32 tgid, const struct kspan_tls_loc *loc,
					    struct kspan_trace_ctx *out)
{
	__u16 attrs_size;
	__u64 rec = read_thread_ctx_head(bpf_get_current_task_btf(), tgid, loc, out, &attrs_size, NULL);
	read_thread_ctx_attrs(rec, attrs_size, out);
}

#endif
