// SPDX-License-Identifier: GPL-2.0
/*
 * Benchmark programs (bench/), never loaded by the agent:
 *  - floor_send/floor_recv: the cheapest possible program on kspan's I/O hooks,
 *    the floor kspan's own cost is compared against: the same first step as
 *    kspan's (is the caller's process in a hash of pids, `floor_pids`), then a
 *    per-CPU counter;
 *  - floor_switch/floor_wakeup: the same on the scheduler hooks kspan attaches
 *    (thread.sched spans, on by default), which run about as often per request:
 *    on sched_switch the outgoing task's process in `floor_pids` (kspan's first
 *    step there too), then the counter; on sched_wakeup the counter alone (kspan's
 *    first step there is one array load). kspan's per-connection hooks (accept,
 *    state changes, retransmits, resets, process events) run per connection, not
 *    per request, and have no floor;
 *  - fill_ring: on getppid() from `fill_pid`, writes `fill_count` records of
 *    kspan_event size into the ring, for the ring-buffer reader benchmark.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "kspan.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 20);
} bench_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} floor_hits SEC(".maps");

struct fill_cfg {
	__u32 pid;
	__u32 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fill_cfg);
} fill_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} floor_pids SEC(".maps");

/* The floor's per-CPU counter. */
static __always_inline void floor_count(void)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&floor_hits, &k);
	if (v)
		*v += 1;
}

static __always_inline int floor_hit(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (bpf_map_lookup_elem(&floor_pids, &tgid))
		floor_count();
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(floor_send, struct sock *sk, int ret, int flags)
{
	return floor_hit();
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(floor_recv, struct sock *sk, int ret, int flags)
{
	return floor_hit();
}

/* prev is the task that calls into the scheduler: floor_hit's pid is prev's. */
SEC("tp_btf/sched_switch")
int BPF_PROG(floor_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return floor_hit();
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(floor_wakeup, struct task_struct *p)
{
	floor_count();
	return 0;
}

static long fill_one(__u64 i, void *ctx)
{
	struct kspan_event *e = bpf_ringbuf_reserve(&bench_ring, sizeof(*e), 0);
	if (!e)
		return 1;
	__builtin_memset(e, 0, sizeof(*e));
	e->type = KSPAN_EV_SEND;
	e->family = 2;
	e->cookie = i + 1;
	e->bytes = 100 + i;
	e->calls = 1;
	e->ts_ns = i;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

/* The floor of a function probe: the same pid check and counter on entry and
 * return, attached by bench/uprobe-cost.ts where kspan's uprobes would be. */
SEC("uprobe")
int floor_uprobe(void *ctx)
{
	return floor_hit();
}

SEC("uretprobe")
int floor_uretprobe(void *ctx)
{
	return floor_hit();
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int fill_ring(void *ctx)
{
	__u32 k = 0;
	struct fill_cfg *cfg = bpf_map_lookup_elem(&fill_config, &k);
	if (!cfg || (bpf_get_current_pid_tgid() >> 32) != cfg->pid)
		return 0;
	bpf_loop(cfg->count, fill_one, NULL, 0);
	return 0;
}

/*
 * sched_floor_switch: the floor of the scheduler programs' cost (bench/sched-cost.ts),
 * the trivial counter on the same hook: a per-CPU counter, nothing else. (Not
 * `floor_*`: the HTTP benchmarks' floor loads those.)
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sched_floor_hits SEC(".maps");

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_floor_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&sched_floor_hits, &k);
	if (v)
		*v += 1;
	return 0;
}
