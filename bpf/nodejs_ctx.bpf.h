/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The Node.js thread-context walk (scheme KSPAN_SCHEME_NODEJS_V1, writer
 * `nodejs_v1_dev`, e.g. @datadog/pprof's ThreadContext fed by kspan/publisher).
 *
 * Called from read_thread_ctx() (thread_ctx.bpf.h), so only in syscall-context
 * hooks: `current` is the Node thread and it is in the kernel, so V8 cannot be
 * moving or rehashing what we read *on this thread*. The GC of another thread
 * (workers have their own isolates and heaps) cannot touch this isolate.
 *
 * From the thread's otel_thread_ctx_nodejs_v1 struct (its address comes from
 * the process's `targets` entry, like the native scheme's pointer):
 *   @0 cped_slot  @8 als_handle (Global: pointer to a slot holding the ALS)
 *   @16 als_identity_hash i32  @20 record slot u8 (G3)  @24 undefined_addr
 * walk (64-bit V8, no pointer compression; tagged = address | 1):
 *   frame = *cped_slot; table = *(frame + map_table_offset);
 *   F = table + hash_map_header_size: elements, deleted, buckets (Smis = v << 32);
 *   head = F[3 + (hash & (buckets - 1))]; entries at F + 24 + 8 * buckets,
 *   24 bytes each {key, value, next}; follow the chain comparing key == *als_handle;
 *   record = *(wrapper + slot), G1: *(*(wrapper + slot) + native_field_offset).
 * Returns the record address; read_thread_ctx() then copies it with the same
 * valid-before/after checks as the native scheme.
 *
 * The same bounds as the TypeScript reference (src/context/nodejs/v8-walk.ts):
 * buckets a power of two in 1..1024, counts Smis >= 0 (a non-Smi element count is
 * a rehash forwarding pointer), indexes below min(elements + deleted, 2 * buckets),
 * at most KSPAN_NODE_MAX_HOPS chain hops. A refusal is counted
 * (KSPAN_C_CTX_NODE_REJECTED) and gives no context, never a wrong one.
 */
#ifndef KSPAN_NODEJS_CTX_BPF_H
#define KSPAN_NODEJS_CTX_BPF_H

#include "counters.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct kspan_node_layout);
} node_layouts SEC(".maps");

#define KSPAN_NODE_MAX_BUCKETS 1024
#define KSPAN_NODE_MAX_HOPS 8
#define KSPAN_NODE_MAX_OFFSET 256

struct nodejs_tls_struct {
	__u64 cped_slot;
	__u64 als_handle;
	__s32 als_identity_hash;
	__u8 record_slot;
	__u8 _pad[3];
	__u64 undefined_addr;
};

struct nodejs_table_counts {
	__u64 elements;
	__u64 deleted;
	__u64 buckets;
};

struct nodejs_map_entry {
	__u64 key;
	__u64 value;
	__u64 next;
};

static __always_inline int nodejs_is_smi(__u64 w)
{
	return (w & 0xffffffffULL) == 0;
}

static __always_inline __s64 nodejs_smi(__u64 w)
{
	return (__s64)w >> 32;
}

static __always_inline __u64 nodejs_read_u64(__u64 addr, int *fault)
{
	__u64 v = 0;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)addr))
		*fault = 1;
	return v;
}

/* The record of the span active on this thread, or 0 when there is none (or the
 * walk was refused: counted). `tls` is the address of the thread's struct. A
 * fault goes to `failed` as in read_thread_ctx_head() (thread_ctx.bpf.h). */
static __always_inline __u64 nodejs_record(__u32 tgid, __u64 tls, __u32 *failed)
{
	struct kspan_node_layout *layout = bpf_map_lookup_elem(&node_layouts, &tgid);
	if (!layout)
		return 0; /* no layout pushed (yet): not walkable */

	struct nodejs_tls_struct st;
	if (bpf_probe_read_user(&st, sizeof(st), (void *)tls)) {
		ctx_failed(failed, KSPAN_C_CTX_FAULT);
		return 0;
	}
	/* Writers store cped_slot before undefined_addr without fences: all must be set. */
	if (!st.cped_slot || !st.als_handle || !st.undefined_addr)
		return 0;

	int fault = 0;
	__u64 frame = nodejs_read_u64(st.cped_slot, &fault);
	if (fault)
		goto fault;
	if (frame == st.undefined_addr || !(frame & 1))
		return 0; /* no AsyncContextFrame: nothing active */

	__u64 table = nodejs_read_u64((frame & ~1ULL) + (layout->map_table_offset & (KSPAN_NODE_MAX_OFFSET - 1)), &fault);
	if (fault)
		goto fault;
	if (!(table & 1))
		goto rejected;

	__u64 f = (table & ~1ULL) + (layout->hash_map_header_size & (KSPAN_NODE_MAX_OFFSET - 1));
	struct nodejs_table_counts c;
	if (bpf_probe_read_user(&c, sizeof(c), (void *)f))
		goto fault;
	if (!nodejs_is_smi(c.elements) || !nodejs_is_smi(c.deleted) || !nodejs_is_smi(c.buckets))
		goto rejected; /* a non-Smi element count: V8 is rehashing (forwarding pointer) */
	__s64 elements = nodejs_smi(c.elements);
	__s64 deleted = nodejs_smi(c.deleted);
	__s64 buckets = nodejs_smi(c.buckets);
	if (elements < 0 || deleted < 0 || buckets < 1 || buckets > KSPAN_NODE_MAX_BUCKETS || (buckets & (buckets - 1)))
		goto rejected;
	__s64 used = elements + deleted;
	if (used > 2 * buckets)
		used = 2 * buckets;

	__u64 als = nodejs_read_u64(st.als_handle, &fault);
	if (fault)
		goto fault;

	__u64 bucket = (__u64)st.als_identity_hash & (__u64)(buckets - 1);
	__u64 head = nodejs_read_u64(f + 24 + 8 * bucket, &fault);
	if (fault)
		goto fault;
	if (!nodejs_is_smi(head))
		goto rejected;
	__s64 index = nodejs_smi(head);
	__u64 entries = f + 24 + 8 * (__u64)buckets;
	__u64 value = 0;
	int found = 0;

	for (int hop = 0; hop < KSPAN_NODE_MAX_HOPS; hop++) {
		if (index == -1)
			return 0; /* our ALS is not in this frame */
		if (index < 0 || index >= used)
			goto rejected;
		struct nodejs_map_entry e;
		if (bpf_probe_read_user(&e, sizeof(e), (void *)(entries + 24 * (__u64)index)))
			goto fault;
		if (e.key == als) {
			value = e.value;
			found = 1;
			break;
		}
		if (!nodejs_is_smi(e.next))
			goto rejected;
		index = nodejs_smi(e.next);
	}
	if (!found) {
		if (index == -1)
			return 0;
		goto rejected; /* chain longer than KSPAN_NODE_MAX_HOPS */
	}
	if (value == st.undefined_addr)
		return 0; /* the context was cleared in this frame */
	if (!(value & 1))
		goto rejected;
	__u64 wrapper = value & ~1ULL;

	__u64 slot = layout->record_slot ? layout->record_slot : st.record_slot;
	if (slot < 8 || slot > 248 || (slot & 7))
		goto rejected;
	__u64 rec = nodejs_read_u64(wrapper + slot, &fault);
	if (fault)
		goto fault;
	if (layout->native_field_offset && rec) {
		/* G1: internal field 0 points at the native wrapper holding the record. */
		rec = nodejs_read_u64(rec + (layout->native_field_offset & (KSPAN_NODE_MAX_OFFSET - 1)), &fault);
		if (fault)
			goto fault;
	}
	return rec; /* 0: the wrapper is being torn down */

fault:
	ctx_failed(failed, KSPAN_C_CTX_FAULT);
	return 0;
rejected:
	count(KSPAN_C_CTX_NODE_REJECTED);
	return 0;
}

#endif
