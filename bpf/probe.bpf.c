// SPDX-License-Identifier: GPL-2.0
/*
 * Tiny programs `kspan doctor` loads one at a time to prove each hook type kspan
 * needs works on this kernel. They count into a map and emit nothing.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} probe_hits SEC(".maps");

static __always_inline void hit(void)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&probe_hits, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe_tracepoint(void *ctx)
{
	hit();
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(probe_tp_btf_cookie, const struct sock *sk, int oldstate, int newstate)
{
	if (bpf_get_socket_cookie((void *)sk))
		hit();
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(probe_sock_send_length, struct sock *sk, int ret, int flags)
{
	hit();
	return 0;
}

SEC("uprobe")
int probe_uprobe(void *ctx)
{
	hit();
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(probe_ringbuf, struct task_struct *p)
{
	__u64 *e = bpf_ringbuf_reserve(&probe_ring, sizeof(*e), 0);
	if (e) {
		*e = 1;
		bpf_ringbuf_submit(e, 0);
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(probe_thread_pointer, struct task_struct *p)
{
	struct task_struct *t = bpf_get_current_task_btf();
	if (t->thread.fsbase)
		hit();
	return 0;
}
