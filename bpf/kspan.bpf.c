// SPDX-License-Identifier: GPL-2.0
/*
 * kspan: the kernel's view of TCP connections of selected processes.
 *
 * Hooks, and the context each runs in:
 *   tp_btf/inet_sock_set_state   softirq or syscall: handshake start/end, connect failures
 *   tp_btf/sock_send_length      syscall: bytes sent (kernel >= 6.3)
 *   tp_btf/sock_recv_length      syscall: bytes received (kernel >= 6.3)
 *   tp_btf/tcp_retransmit_skb    softirq/timer: one record per retransmitted skb;
 *       two variants, chosen at load from the kernel's prototype: with the
 *       kernel's err (newer kernels, fired for failed attempts too) and without
 *       (older kernels, e.g. 6.1 and 6.12: fired only when the retransmit was sent)
 *   tp_btf/tcp_send_reset        softirq or syscall: RST sent
 *   tp_btf/tcp_receive_reset     softirq: RST received
 *   tp_btf/tcp_destroy_sock      any: socket gone, totals from tcp_sock
 *   tracepoint/syscalls/sys_exit_accept{,4}   syscall: accept() returned
 *   syscall flush_idle           run by the agent on a timer: idle aggregates, from a
 *       queue of the sockets with one open (bpf_loop, 5.17+); flush_idle_walk
 *       walks the whole socket table instead where bpf_loop is missing
 *   tracepoint/syscalls/sys_{enter,exit}_{read,write,...}  syscall: fallback for
 *       kernels without sock_{send,recv}_length; the socket is found from the fd
 *
 * Syscall-context hooks read the calling thread's trace context and keep it in
 * per-socket state keyed by the socket cookie. Softirq hooks never read TLS (there
 * `current` is unrelated, on loopback often the peer): they use that state, and
 * their records carry the owner's pid/tid from it.
 *
 * send/recv are aggregated per socket and per trace context; a record is emitted
 * when the aggregate closes (direction or context changes, or the socket closes).
 *
 * Which programs are essential and which may be switched off (with a warning
 * naming what is lost) is the agent's program table, src/kernel/programs.ts.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "kspan.h"
#include "counters.bpf.h"
#include "thread_ctx.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define SOCK_STREAM 1
#define MSG_PEEK 2
#define MSG_ERRQUEUE 0x2000
#define S_IFMT 00170000
#define S_IFSOCK 0140000

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7

/* Force the record types into BTF so the generator can see them. */
struct kspan_event *unused_event __attribute__((unused));
struct kspan_sock *unused_sock __attribute__((unused));
struct kspan_sock_agg *unused_sock_agg __attribute__((unused));
struct kspan_span_ref *unused_span_ref __attribute__((unused));
struct kspan_span_attrs *unused_span_attrs __attribute__((unused));
enum kspan_tx_at *unused_tx_at __attribute__((unused));
struct kspan_agg *unused_agg __attribute__((unused));
struct kspan_flush_args *unused_flush_args __attribute__((unused));
enum kspan_event_type *unused_type __attribute__((unused));
enum kspan_event_flag *unused_flag __attribute__((unused));
enum kspan_counter *unused_counter __attribute__((unused));
struct kspan_tls_loc *unused_tls_loc __attribute__((unused));
struct kspan_target *unused_target __attribute__((unused));
enum kspan_tls_kind *unused_tls_kind __attribute__((unused));
enum kspan_ctx_scheme *unused_scheme __attribute__((unused));
enum kspan_dtv_layout *unused_dtv_layout __attribute__((unused));
enum kspan_limit *unused_limit __attribute__((unused));
enum kspan_target_flag *unused_target_flag __attribute__((unused));
enum kspan_sock_flag *unused_sock_flag __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, KSPAN_RING_BYTES);
} events SEC(".maps");

/* Which processes (tgid) are traced, and where their threads keep their span;
 * the agent changes it at run time. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KSPAN_MAX_TARGETS);
	__type(key, __u32);
	__type(value, struct kspan_target);
} targets SEC(".maps");

/* The socket table (192 B a socket). When full, a new socket gets no state: its
 * records are lost and counted (KSPAN_C_SOCK_TABLE_FULL). Sockets already
 * traced are never evicted for it, so no open aggregate disappears unseen: an
 * LRU would drop one silently (its evictions cannot be counted). Preallocated
 * as declared here; the agent adds BPF_F_NO_PREALLOC before load on 6.1+, where
 * hash map elements come from the BPF memory allocator (src/kernel/tcp-tracer.ts,
 * --socket-table): before 6.1 a run-time allocated hash map in a tracepoint
 * program makes the kernel WARN (the syscall fallback's case). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KSPAN_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct kspan_sock);
} socks SEC(".maps");

/* Passive opens: when the handshake completed, until accept() takes the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KSPAN_MAX_ACCEPT_PENDING);
	__type(key, __u64);
	__type(value, __u64);
} accept_pending SEC(".maps");

/* Active opens: when connect() sent the SYN, until the handshake ends (KSPAN_S_CONNECTING). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KSPAN_MAX_CONNECT_PENDING);
	__type(key, __u64);
	__type(value, __u64);
} connect_pending SEC(".maps");

/* The attributes of spans the socket table refers to, keyed by trace and span id
 * (struct kspan_span_ref's first 24 bytes): written when a span with attributes
 * opens an aggregate (or is read at accept/connect), read back into its records.
 * Most targets publish none and never touch it. An evicted entry is counted
 * (KSPAN_C_STATE_EVICTED) and its record goes without the attributes. */
struct span_key {
	__u8 trace_id[16];
	__u8 span_id[8];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KSPAN_MAX_SPAN_ATTRS);
	__type(key, struct span_key);
	__type(value, struct kspan_span_attrs);
} span_attrs SEC(".maps");

/* The context that last sent on a socket, when neither of its slots still holds
 * it (kspan_sock.tx_at == KSPAN_TX_SPILL): three spans at once on one socket. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KSPAN_MAX_TX_SPILL);
	__type(key, __u64);
	__type(value, struct kspan_span_ref);
} tx_spill SEC(".maps");

/* Fallback path: the fd of a socket syscall in flight, per thread. */
struct io_args {
	__u64 fd;
	__u8 dir;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KSPAN_MAX_IO_INFLIGHT);
	__type(key, __u32);
	__type(value, struct io_args);
} io_inflight SEC(".maps");

/* A socket in the idle flush's queue: its cookie, and its kernel address, which the
 * flush reads acknowledgements through (sent_acked()) while the socket's state is
 * in `socks`, i.e. before tcp_destroy_sock, so before the socket is freed. */
struct idle_entry {
	__u64 cookie;
	__u64 sk;
};

/* Sockets with an open aggregate, for the idle flush (each at most once: KSPAN_S_QUEUED),
 * and how many are queued. */
struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, KSPAN_MAX_SOCKETS);
	__type(value, struct idle_entry);
} idle_queue SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} idle_queued SEC(".maps");

/* The highest `agg.last_ns` the idle flush may act on before its next run
 * publishes another (slot 0; 0 before its first run). See sock_enter(). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} flush_guard SEC(".maps");

/* Sockets the idle flush or one of their hooks is changing: an insert with
 * BPF_NOEXIST is the claim, the delete lets go. Preallocated (a tracepoint's
 * run-time allocation makes kernels before 6.1 WARN). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KSPAN_MAX_SOCK_CLAIMS);
	__type(key, __u64);
	__type(value, __u8);
} sock_claims SEC(".maps");

/* Scratch space for a new socket's state (too large for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kspan_sock);
} sock_scratch SEC(".maps");

#include "discovery.bpf.h"

/* The traced process `tgid`, or NULL when it is not traced (or not selected by the policy in force). */
static __always_inline struct kspan_target *target_of(__u32 tgid)
{
	struct kspan_target *t = bpf_map_lookup_elem(&targets, &tgid);
	return t && target_selected(t) ? t : NULL;
}

static __always_inline struct kspan_target *current_target(void)
{
	return target_of(current_pid_tgid() >> 32);
}

/* Reads family, ports and addresses of a socket into the state. */
static __always_inline void sock_addr(struct kspan_sock *st, const struct sock *sk)
{
	st->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	st->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	st->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (st->family == AF_INET6) {
		BPF_CORE_READ_INTO(&st->laddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&st->raddr, sk, __sk_common.skc_v6_daddr);
	} else {
		BPF_CORE_READ_INTO(&st->laddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO(&st->raddr, sk, __sk_common.skc_daddr);
	}
}

static __always_inline bool is_tcp_sock(const struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return false;
	return BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) == IPPROTO_TCP &&
	       BPF_CORE_READ_BITFIELD_PROBED(sk, sk_type) == SOCK_STREAM;
}

/* The same check on a trusted tp_btf pointer: direct loads, no helper calls. */
static __always_inline bool is_tcp_sock_btf(const struct sock *sk)
{
	__u16 family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return false;
	return BPF_CORE_READ_BITFIELD(sk, sk_protocol) == IPPROTO_TCP &&
	       BPF_CORE_READ_BITFIELD(sk, sk_type) == SOCK_STREAM;
}

/* Whether a new connection's records with no context stay in the kernel: the
 * cookie, mixed (cookies are a counter), against the target's orphan_keep. */
static __always_inline __u8 orphan_skip(const struct kspan_target *t, __u64 cookie)
{
	if (t->orphan_keep == 0xffffffff)
		return 0;
	return (__u32)((cookie * 0x9E3779B97F4A7C15ull) >> 32) >= t->orphan_keep;
}

/* The cookie of a socket behind a trusted tp_btf pointer: a plain load once it
 * was generated, the helper (which generates it) the first time. */
static __always_inline __u64 sock_cookie_btf(struct sock *sk)
{
	__u64 c = sk->__sk_common.skc_cookie.counter;
	return c ? c : bpf_get_socket_cookie(sk);
}

/*
 * The role of a socket first seen in send/recv, with no accept or connect seen
 * (opened before kspan started, or while the accept hook is off): an accepted
 * socket is a clone of its listener and keeps the listen() backlog; a connected
 * one never listened.
 */
static __always_inline __u8 role_inferred(const struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_max_ack_backlog) ? KSPAN_F_SERVER : KSPAN_F_CLIENT;
}

/* Finds or creates the state of a socket seen in syscall context by a target
 * (role 0: not known from the call, inferred). */
static __always_inline struct kspan_sock *sock_state_get(const struct kspan_target *t, __u64 cookie,
							 const struct sock *sk, __u8 role)
{
	struct kspan_sock *st = bpf_map_lookup_elem(&socks, &cookie);
	if (st) {
		if (role && !st->role)
			st->role = role;
		if (!st->lport)
			sock_addr(st, sk);
		return st;
	}
	__u32 zero = 0;
	struct kspan_sock *init = bpf_map_lookup_elem(&sock_scratch, &zero);
	if (!init)
		return NULL;
	__builtin_memset(init, 0, sizeof(*init));
	init->role = role ? role : role_inferred(sk);
	init->sflags = (orphan_skip(t, cookie) ? KSPAN_S_ORPHAN_SKIP : 0) |
		       (t->flags & KSPAN_T_KEEP_UNSAMPLED ? KSPAN_S_KEEP_UNSAMPLED : 0);
	sock_addr(init, sk);
	if (bpf_map_update_elem(&socks, &cookie, init, BPF_NOEXIST) && 
	    !bpf_map_lookup_elem(&socks, &cookie)) {
		count(KSPAN_C_SOCK_TABLE_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(&socks, &cookie);
}

/*
 * The idle flush (the agent's CPU) and a socket's own hooks (any CPU) change the
 * same state, so they take turns. The flush touches only a socket whose last
 * call is at or before its cutoff, and claims it first (`sock_claims`). A hook
 * claims the socket as well when the flush could be at it: when the socket's
 * last call is at or before `flush_guard`, which each flush run publishes before
 * it acts, as far past its own cutoff as the next run's may go (guard_ns). A
 * run's cutoff never passes the guard published by the run before, so a hook
 * that read either guard sees the socket as the flush does. A socket in use
 * since (the common case) costs one array load; one quiet for a while, a claim.
 * This holds while a hook runs for less than the time between two flush runs.
 * A claim held by the flush past the hook's few attempts (its CPU stood still
 * while it held one: a hypervisor's or an emulator's pause) is counted
 * (KSPAN_C_FLUSH_CONTENDED); a send or recv then leaves the socket's aggregates
 * alone and goes out as a record of its own (account_io_alone()), so its bytes
 * are still in exactly one record, and the other hooks go on without it.
 */
static __always_inline bool sock_claim(__u64 cookie)
{
	__u8 one = 1;
	return bpf_map_update_elem(&sock_claims, &cookie, &one, BPF_NOEXIST) == 0;
}

/* A hook's turn at a socket's state (sock_enter()). */
enum sock_turn {
	TURN_FREE = 0,    /* the flush cannot be at it */
	TURN_CLAIMED = 1, /* claimed: sock_leave() lets it go */
	TURN_HELD = 2,    /* the flush held it past the hook's tries (counted) */
};

static __always_inline void sock_leave(__u64 cookie, enum sock_turn turn)
{
	if (turn == TURN_CLAIMED)
		bpf_map_delete_elem(&sock_claims, &cookie);
}

/* Before a hook changes `st`: its turn (pass it to sock_leave() when done). */
static __always_inline enum sock_turn sock_enter(const struct kspan_sock *st, __u64 cookie)
{
	__u32 zero = 0;
	__u64 *guard = bpf_map_lookup_elem(&flush_guard, &zero);
	if (guard && *guard && st->agg.last_ns > *guard)
		return TURN_FREE;
	/* the flush holds a claim for one socket's records: a microsecond or two */
	for (int i = 0; i < 64; i++)
		if (sock_claim(cookie))
			return TURN_CLAIMED;
	count(KSPAN_C_FLUSH_CONTENDED);
	return TURN_HELD;
}

static __always_inline void fill_common(struct kspan_event *e, const struct kspan_sock *st,
					__u64 cookie, __u8 type)
{
	e->cookie = cookie;
	e->type = type;
	e->pid = st->pid;
	e->tid = st->tid;
	e->family = st->family;
	e->flags = st->role;
	e->lport = st->lport;
	e->rport = st->rport;
	__builtin_memcpy(e->laddr, st->laddr, sizeof(e->laddr));
	__builtin_memcpy(e->raddr, st->raddr, sizeof(e->raddr));
}

static __always_inline struct kspan_event *reserve(void)
{
	struct kspan_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(KSPAN_C_RINGBUF_FULL);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	return e;
}

/* Keeps a context's head in the socket table's form, and its attribute bytes (if
 * any) in `span_attrs`, where ctx_from_ref() finds them. */
static __always_inline void ref_keep(struct kspan_span_ref *dst, const struct kspan_trace_ctx *ctx)
{
	__builtin_memcpy(dst, ctx, sizeof(*dst));
	if (ctx->valid && ctx->attrs_size)
		bpf_map_update_elem(&span_attrs, ctx, &ctx->attrs_size, BPF_ANY);
}

/* A record's context from a kept span: the head, then the attribute bytes. `dst`
 * is zeroed (a reserved record). */
static __always_inline void ctx_from_ref(struct kspan_trace_ctx *dst, const struct kspan_span_ref *ref)
{
	__builtin_memcpy(dst, ref, sizeof(*ref));
	if (!ref->valid || !ref->attrs_size)
		return;
	struct kspan_span_attrs *a = bpf_map_lookup_elem(&span_attrs, ref);
	if (!a) {
		dst->attrs_size = 0;
		count(KSPAN_C_STATE_EVICTED);
		return;
	}
	__builtin_memcpy(&dst->attrs_size, a, sizeof(*a));
}

static __always_inline bool ref_equal(const struct kspan_span_ref *a, const struct kspan_span_ref *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	/* trace_id, span_id, trace_flags and valid: the span's identity. */
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] &&
	       *(const __u16 *)&a->trace_flags == *(const __u16 *)&b->trace_flags;
}

/* The context that last sent on the socket (retransmits), or NULL. */
static __always_inline const struct kspan_span_ref *tx_ref(struct kspan_sock *st, __u64 cookie)
{
	switch (st->tx_at) {
	case KSPAN_TX_AGG:
		return &st->agg.ref;
	case KSPAN_TX_PEND:
		return &st->pend.ref;
	case KSPAN_TX_SPILL: {
		struct kspan_span_ref *r = bpf_map_lookup_elem(&tx_spill, &cookie);
		if (!r)
			count(KSPAN_C_STATE_EVICTED);
		return r;
	}
	}
	return NULL;
}

/* The slot `slot` that holds the last sender is about to take another span: the
 * sender moves to `tx_spill` (rare: a third span on the socket at once). */
static __always_inline void tx_spill_from(struct kspan_sock *st, __u64 cookie, const struct kspan_span_ref *slot)
{
	bpf_map_update_elem(&tx_spill, &cookie, slot, BPF_ANY);
	st->tx_at = KSPAN_TX_SPILL;
}

/* The record form of a kept aggregate. */
static __always_inline void agg_out(struct kspan_agg *dst, const struct kspan_sock_agg *src)
{
	dst->first_ns = src->first_ns;
	dst->last_ns = src->last_ns;
	dst->bytes = src->bytes;
	dst->tid = src->tid;
	dst->calls = src->calls;
	dst->dir = src->dir;
	dst->flags = src->flags;
	ctx_from_ref(&dst->ctx, &src->ref);
}

/* Leaves no aggregate open (`agg.ref` stays: the last syscall's span). */
static __always_inline void agg_clear(struct kspan_sock *st)
{
	st->agg.dir = 0;
	st->agg.bytes = 0;
	st->agg.calls = 0;
}

/* Moves the open aggregate to `dst` and leaves none open. */
static __always_inline void agg_take(struct kspan_sock_agg *dst, struct kspan_sock *st)
{
	*dst = st->agg;
	agg_clear(st);
}

/*
 * Wake-ups are batched: the record that fills the ring past an eighth wakes the
 * agent, once; below that, and while the agent is still draining above it, the
 * agent reads on its own short timer (20 ms). A busy loop pays no wake-up per
 * record, and a lagging agent is not woken again for every record it has yet to
 * read (a forced wake-up per record cost microseconds each when it lagged).
 */
static __always_inline void submit(void *e)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 mark = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 8;
	/* avail counts this record (reserved): it crossed the mark if the ring was below it without it */
	bool crossed = avail >= mark && avail < mark + sizeof(struct kspan_event) + 8;
	bpf_ringbuf_submit(e, crossed ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Counts an aggregate that leaves no record: unsampled, or an orphan left out. */
static __always_inline void agg_count_dropped(bool unsampled)
{
	count(unsampled ? KSPAN_C_UNSAMPLED : KSPAN_C_ORPHAN_SKIPPED);
}

/*
 * Whether every byte the owner wrote to the socket before the current call was
 * acknowledged: snd_una has caught up with write_seq less `call_bytes`, what the
 * call in progress queued (a send's; 0 for a recv). Then no retransmit of data
 * sent before the call can follow, and the agent ends the record's send spans at
 * once instead of holding them for late retransmits. Read only when a record is
 * made; `sk` may be untrusted (the fallback's), so the reads are helper reads.
 */
static __always_inline bool sent_acked(const struct sock *sk, __u32 call_bytes)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	__u32 unacked = BPF_CORE_READ(tp, write_seq) - BPF_CORE_READ(tp, snd_una);
	return unacked <= call_bytes;
}

/*
 * Emits the aggregates waiting in the state: `pend` (as prev) and `main`.
 * Sampling is decided here, in the kernel: an aggregate flagged DROP (its context
 * not sampled, or no context on a connection --orphans-ratio leaves out) makes no
 * record, and neither does a pending aggregate with no context before a dropped
 * one: that is the request its unsampled response answers (the correlator would
 * give it to the same span). `sk`: the socket when a send or recv call makes the
 * record (KSPAN_F_SENT_ACKED is then known; NULL elsewhere), `call_bytes` what
 * that call queued to send.
 */
static __always_inline void agg_submit(struct kspan_sock *st, __u64 cookie, struct kspan_sock_agg *main,
				       const struct sock *sk, __u32 call_bytes)
{
	bool has_prev = st->pend.dir && &st->pend != main;
	bool drop_main = main->flags & KSPAN_F_DROP;
	bool drop_prev = has_prev && ((st->pend.flags & KSPAN_F_DROP) || (drop_main && !st->pend.ref.valid));
	struct kspan_sock_agg *out = main;

	if (drop_main)
		agg_count_dropped(main->ref.valid);
	if (drop_prev)
		agg_count_dropped(main->ref.valid || st->pend.ref.valid);
	/* The record's first aggregate says when one before it stayed in the
	 * kernel: the correlator then knows the connection's first exchange (the
	 * one its accept belongs to) was not sampled. */
	__u8 after_drop = (st->sflags & KSPAN_S_DROPPED) || (drop_prev && !drop_main) ? KSPAN_F_AFTER_DROP : 0;
	if (drop_main) {
		st->sflags |= KSPAN_S_DROPPED;  /* after whatever goes out now */
		if (!has_prev || drop_prev) {
			st->pend.dir = 0;
			return;
		}
		out = &st->pend;  /* the kept request goes out alone */
		has_prev = false;
	}
	struct kspan_event *e = reserve();
	if (e) {
		fill_common(e, st, cookie, out->dir);
		e->tid = out->tid;
		e->ts_ns = out->last_ns;
		e->start_ns = out->first_ns;
		e->bytes = out->bytes;
		e->calls = out->calls;
		e->flags |= out->flags;
		ctx_from_ref(&e->ctx, &out->ref);
		bool holds_send = out->dir == KSPAN_EV_SEND;
		if (has_prev && !drop_prev) {
			agg_out(&e->prev, &st->pend);
			e->prev.flags |= after_drop;
			holds_send |= st->pend.dir == KSPAN_EV_SEND;
		} else {
			e->flags |= after_drop;
		}
		/* Only a record with a send in it has a send span to end early. */
		if (sk && holds_send && sent_acked(sk, call_bytes))
			e->flags |= KSPAN_F_SENT_ACKED;
		submit(e);
		if (!drop_main)
			st->sflags &= ~KSPAN_S_DROPPED;
	}
	st->pend.dir = 0;
}

/* Whether an aggregate opened under `ctx` stays in the kernel. */
static __always_inline __u8 agg_drop_flag(const struct kspan_target *t, const struct kspan_sock *st,
					  const struct kspan_trace_ctx *ctx)
{
	if (ctx->valid)
		return (ctx->trace_flags & 1) || (t->flags & KSPAN_T_KEEP_UNSAMPLED) ? 0 : KSPAN_F_DROP;
	return st->sflags & KSPAN_S_ORPHAN_SKIP ? KSPAN_F_DROP : 0;
}

/* Whether a one-off record (accept, connect, retransmit, reset) under `ctx`
 * stays in the kernel, counted when it does: its context is not sampled, or it
 * has none on a connection --orphans-ratio leaves out. The socket's state holds
 * the target's choices, so softirq hooks can decide too. */
static __always_inline bool record_skip(const struct kspan_sock *st, const struct kspan_span_ref *ctx,
				       bool orphans_apply)
{
	if (!ctx || !ctx->valid) {
		if (!orphans_apply || !(st->sflags & KSPAN_S_ORPHAN_SKIP))
			return false;
		count(KSPAN_C_ORPHAN_SKIPPED);
		return true;
	}
	if ((ctx->trace_flags & 1) || (st->sflags & KSPAN_S_KEEP_UNSAMPLED))
		return false;
	count(KSPAN_C_UNSAMPLED);
	return true;
}

/* The open aggregate just closed (it went out, or into `pend`): `agg.ref` will
 * take the next span, so a last sender there moves to `pend.ref`, a copy when the
 * aggregate went out (`pend` is free then). */
static __always_inline void tx_leave_agg(struct kspan_sock *st, bool copied)
{
	if (st->tx_at != KSPAN_TX_AGG)
		return;
	if (!copied)
		st->pend.ref = st->agg.ref;
	st->tx_at = KSPAN_TX_PEND;
}

/* Closes the open send/recv aggregate. The first of a pair waits in `pend`; the
 * second goes out with it in one record. `call_bytes`: what the send that closes
 * it queued (0: no send follows). A send that follows becomes the last sender, so
 * the one before need not be kept. */
static __always_inline void agg_close(struct kspan_sock *st, __u64 cookie, const struct sock *sk, __u32 call_bytes)
{
	bool sending = call_bytes != 0;

	if (!st->agg.dir)
		return;
	if (!st->pend.dir) {
		if (st->tx_at == KSPAN_TX_PEND && !sending && !ref_equal(&st->pend.ref, &st->agg.ref))
			tx_spill_from(st, cookie, &st->pend.ref);
		agg_take(&st->pend, st);
		tx_leave_agg(st, true);
		return;
	}
	if ((st->agg.flags & KSPAN_F_DROP) && ((st->pend.flags & KSPAN_F_DROP) || !st->pend.ref.valid)) {
		/* The pair stays in the kernel (an unsampled response and its
		 * request): what agg_submit() would do, with nothing to copy. */
		agg_count_dropped(st->agg.ref.valid);
		agg_count_dropped(st->agg.ref.valid || st->pend.ref.valid);
		st->sflags |= KSPAN_S_DROPPED;
		st->pend.dir = 0;
		agg_clear(st);
		tx_leave_agg(st, false);
		return;
	}
	__u32 zero = 0;
	struct kspan_sock *tmp = bpf_map_lookup_elem(&sock_scratch, &zero);
	if (!tmp)
		return;
	agg_take(&tmp->pend, st);
	agg_submit(st, cookie, &tmp->pend, sk, call_bytes);
	tx_leave_agg(st, false);
}

/* Socket closing or idle: emits whatever is open or pending. An open aggregate
 * with nothing pending goes out alone, from its slot. `sk`: the socket, when
 * the flush knows it (KSPAN_F_SENT_ACKED), else NULL. */
static __always_inline void agg_flush(struct kspan_sock *st, __u64 cookie, const struct sock *sk)
{
	if (st->agg.dir && !st->pend.dir) {
		agg_submit(st, cookie, &st->agg, sk, 0);
		agg_clear(st);
		tx_leave_agg(st, false);
		return;
	}
	agg_close(st, cookie, sk, 0);
	if (st->pend.dir)
		agg_submit(st, cookie, &st->pend, sk, 0);
}

/* Whether a context read now is the kept span (identity only: the attributes
 * are not part of it, an aggregate keeps its first call's). */
static __always_inline bool ctx_equal_ref(const struct kspan_trace_ctx *a, const struct kspan_span_ref *b)
{
	return ref_equal((const struct kspan_span_ref *)a, b);
}

/* Puts a socket whose aggregate just opened in the idle flush's queue, once.
 * Without the queued flush (flush_idle_walk, or no idle flush) the agent sets
 * the queued count to KSPAN_IDLE_NO_QUEUE before it attaches: nothing is pushed
 * (the queue is a one-slot stand-in there; a push would fail on every
 * aggregate that opens, and be counted). */
static __always_inline void idle_watch(struct kspan_sock *st, __u64 cookie, const struct sock *sk)
{
	if (st->sflags & KSPAN_S_QUEUED)
		return;
	__u32 zero = 0;
	__u64 *queued = bpf_map_lookup_elem(&idle_queued, &zero);
	if (!queued || *queued == KSPAN_IDLE_NO_QUEUE)
		return;
	struct idle_entry q = { .cookie = cookie, .sk = (__u64)sk };
	if (bpf_map_push_elem(&idle_queue, &q, 0)) {
		count(KSPAN_C_IDLE_QUEUE_FULL);
		return;
	}
	st->sflags |= KSPAN_S_QUEUED;
	__sync_fetch_and_add(queued, 1);
}

/* accept() and connect(): the calling thread's span (with its attributes)
 * becomes the socket's last context, in `agg.ref` (no aggregate is open yet on a
 * new socket; if one is, its span stays). */
static __always_inline void sock_last_read(struct kspan_sock *st, __u64 cookie,
					   const struct kspan_target *t, __u32 tgid)
{
	struct kspan_trace_ctx cur;
	read_thread_ctx(tgid, &t->loc, &cur);
	if (st->agg.dir)
		return;
	if (st->tx_at == KSPAN_TX_AGG && !ctx_equal_ref(&cur, &st->agg.ref))
		tx_spill_from(st, cookie, &st->agg.ref);
	ref_keep(&st->agg.ref, &cur);
}

/* A send or recv on a socket the idle flush held past the hook's tries (its CPU
 * stood still: see sock_enter()), under the context `cur` just read: the call
 * goes out as a record of its own, and the socket's aggregates are left to the
 * flush. Only the totals the close reports change, which the flush never writes. */
static __always_inline void account_io_alone(const struct kspan_target *t, struct kspan_sock *st, __u64 cookie,
					     __u32 tid, __u8 dir, __u64 bytes, __u8 path_flag,
					     const struct kspan_trace_ctx *cur, __u64 rec, __u16 attrs_size)
{
	if (dir == KSPAN_EV_SEND)
		st->total_sent += bytes;
	else
		st->total_received += bytes;
	if (agg_drop_flag(t, st, cur)) {
		agg_count_dropped(cur->valid);
		return;
	}
	struct kspan_event *e = reserve();
	if (!e)
		return;
	fill_common(e, st, cookie, dir);
	e->tid = tid;
	e->ts_ns = bpf_ktime_get_ns();
	e->start_ns = e->ts_ns;
	e->bytes = bytes;
	e->calls = 1;
	e->flags |= path_flag;
	__builtin_memcpy(&e->ctx, cur, sizeof(*cur));
	read_thread_ctx_attrs(rec, attrs_size, &e->ctx);
	submit(e);
}

/* One send or recv by a target thread, in syscall context. The caller checked
 * that the thread belongs to a target (first, before any other work: these hooks
 * fire for every socket call on the machine). `turn`: sock_enter()'s (held: the
 * call goes out alone, after the one context read both ways share). */
static __always_inline void account_io(const struct kspan_target *t, struct task_struct *task, __u64 pid_tgid,
				       const struct sock *sk, struct kspan_sock *st, __u64 cookie, __u8 dir, __u64 bytes,
				       __u8 path_flag, enum sock_turn turn)
{
	__u32 tgid = pid_tgid >> 32, tid = (__u32)pid_tgid;
	struct kspan_trace_ctx cur;

	/* The header only: the attributes are read when an aggregate opens. */
	__u16 attrs_size;
	__u64 rec = read_thread_ctx_head(task, tgid, &t->loc, &cur, &attrs_size, NULL);
	if (turn == TURN_HELD) {
		account_io_alone(t, st, cookie, tid, dir, bytes, path_flag, &cur, rec, attrs_size);
		return;
	}

	if (st->agg.dir == dir && dir == KSPAN_EV_SEND && st->agg.ref.valid && !ctx_equal_ref(&cur, &st->agg.ref)) {
		/* Sockets outlive the moment of context (docs/ARCHITECTURE.md): a
		 * runtime flushes what the socket could not take at once later, from
		 * its event loop, where no span or another request's span is active.
		 * A send with no context continues the open response; on a server
		 * socket a different context with no request read in between is not
		 * believed either (a response answers the request before it): the
		 * bytes stay with the response, and the mismatch is counted. */
		if (!cur.valid || st->role == KSPAN_F_SERVER) {
			if (cur.valid)
				count(KSPAN_C_CTX_SUSPECT);
			/* the open aggregate's span: its ids are what cur is compared with below */
			__builtin_memcpy(&cur, &st->agg.ref, sizeof(st->agg.ref));
			cur.attrs_size = 0;
			rec = 0;
		}
	}
	bool closed = false;
	if (st->agg.dir && (st->agg.dir != dir || !ctx_equal_ref(&cur, &st->agg.ref))) {
		agg_close(st, cookie, sk, dir == KSPAN_EV_SEND ? bytes : 0);
		closed = true;
	}
	if (!st->agg.dir) {
		/* agg.ref takes this span: a last sender still there (only after an
		 * accept or connect wrote it) must not be lost. */
		if (st->tx_at == KSPAN_TX_AGG && dir != KSPAN_EV_SEND && !ctx_equal_ref(&cur, &st->agg.ref))
			tx_spill_from(st, cookie, &st->agg.ref);
		__u8 drop = agg_drop_flag(t, st, &cur);
		st->agg.dir = dir;
		st->agg.tid = tid;
		st->agg.flags = path_flag | drop;
		/* An aggregate that stays in the kernel needs no attributes, and no
		 * clock read to open: its times go nowhere but the idle flush, which
		 * sees the last call of the aggregate this call just closed (one
		 * that was open until now). Otherwise the clock is read. */
		__u64 now = drop && closed ? st->agg.last_ns : 0;
		if (!now)
			now = bpf_ktime_get_ns();
		st->agg.first_ns = now;
		st->agg.last_ns = now;
		if (!drop)
			read_thread_ctx_attrs(rec, attrs_size, &cur);
		ref_keep(&st->agg.ref, &cur);
		idle_watch(st, cookie, sk);
	} else {
		st->agg.last_ns = bpf_ktime_get_ns();
	}
	st->agg.bytes += bytes;
	st->agg.calls += 1;
	st->pid = tgid;
	st->tid = tid;
	/* agg.ref is now this call's span: the last syscall's, and the last sender's on a send. */
	if (dir == KSPAN_EV_SEND) {
		st->tx_at = KSPAN_TX_AGG;
		st->total_sent += bytes;
	} else {
		st->total_received += bytes;
	}
}

/* A send or recv of `ret` bytes on a trusted tp_btf socket: the pid first (a
 * process not traced leaves here), then the TCP check and the socket's state. */
static __always_inline void sock_length(struct sock *sk, int ret, __u8 dir)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 pid_tgid = current_pid_tgid_of(task);
	struct kspan_target *t = target_of(pid_tgid >> 32);
	if (!t || !is_tcp_sock_btf(sk))
		return;
	__u64 cookie = sock_cookie_btf(sk);
	struct kspan_sock *st = sock_state_get(t, cookie, sk, 0);
	if (!st)
		return;
	enum sock_turn turn = sock_enter(st, cookie);
	account_io(t, task, pid_tgid, sk, st, cookie, dir, ret, 0, turn);
	sock_leave(cookie, turn);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(on_send_length, struct sock *sk, int ret, int flags)
{
	if (ret > 0)
		sock_length(sk, ret, KSPAN_EV_SEND);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_recv_length, struct sock *sk, int ret, int flags)
{
	if (ret > 0 && !(flags & (MSG_PEEK | MSG_ERRQUEUE)))
		sock_length(sk, ret, KSPAN_EV_RECV);
	return 0;
}

/* ---- state changes: handshakes and connect outcomes ---- */

/* A connect's outcome: SYN_SENT -> ESTABLISHED, or -> CLOSE. */
static __always_inline void connect_done(const struct sock *sk, struct kspan_sock *st, __u64 cookie, int newstate)
{
	st->sflags &= ~KSPAN_S_CONNECTING;
	__u64 *sent = bpf_map_lookup_elem(&connect_pending, &cookie);
	__u64 syn_sent_ns = sent ? *sent : 0;
	bpf_map_delete_elem(&connect_pending, &cookie);
	if (!syn_sent_ns) {
		count(KSPAN_C_STATE_EVICTED);
		return;
	}
	sock_addr(st, sk);
	if (record_skip(st, &st->agg.ref, true))
		return;
	struct kspan_event *e = reserve();
	if (!e)
		return;
	fill_common(e, st, cookie, KSPAN_EV_CONNECT);
	e->ts_ns = bpf_ktime_get_ns();
	e->start_ns = syn_sent_ns;
	e->tcp_state = newstate;
	if (newstate != TCP_ESTABLISHED) {
		int err = BPF_CORE_READ(sk, sk_err);
		if (!err)
			err = BPF_CORE_READ(sk, sk_err_soft);
		e->error = err ? err : 103; /* ECONNABORTED: closed before it connected */
	}
	ctx_from_ref(&e->ctx, &st->agg.ref);
	submit(e);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_set_state, const struct sock *sk, int oldstate, int newstate)
{
	if (BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) != IPPROTO_TCP)
		return 0;

	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		/* Passive open completed (softirq). The cookie is taken here, not at
		 * SYN_RECV: inet_csk_clone_lock() overwrites it after that event. The
		 * owner is unknown until accept(), so only the time is kept. */
		__u64 cookie = bpf_get_socket_cookie((void *)sk);
		__u64 now = bpf_ktime_get_ns();
		bpf_map_update_elem(&accept_pending, &cookie, &now, BPF_ANY);
		return 0;
	}

	if (newstate == TCP_SYN_SENT) {
		/* connect() in syscall context: the caller is the owner. */
		__u64 pid_tgid = current_pid_tgid();
		__u32 tgid = pid_tgid >> 32;
		struct kspan_target *t = target_of(tgid);
		if (!t) {
			discovery_poke(tgid, sk);
			return 0;
		}
		__u64 cookie = bpf_get_socket_cookie((void *)sk);
		struct kspan_sock *st = sock_state_get(t, cookie, sk, KSPAN_F_CLIENT);
		if (!st)
			return 0;
		enum sock_turn turn = sock_enter(st, cookie);
		__u64 now = bpf_ktime_get_ns();
		bpf_map_update_elem(&connect_pending, &cookie, &now, BPF_ANY);
		st->sflags |= KSPAN_S_CONNECTING;
		st->pid = tgid;
		st->tid = (__u32)pid_tgid;
		sock_last_read(st, cookie, t, tgid);
		sock_leave(cookie, turn);
		return 0;
	}

	if (oldstate != TCP_SYN_SENT)
		return 0;
	/* SYN_SENT -> ESTABLISHED (handshake done) or -> CLOSE (refused, timed
	 * out, reset, aborted). Softirq or syscall: use the state, not current. */
	__u64 cookie = bpf_get_socket_cookie((void *)sk);
	struct kspan_sock *st = bpf_map_lookup_elem(&socks, &cookie);
	if (!st || !(st->sflags & KSPAN_S_CONNECTING))
		return 0;
	enum sock_turn turn = sock_enter(st, cookie);
	connect_done(sk, st, cookie, newstate);
	sock_leave(cookie, turn);
	return 0;
}

/* ---- accept(): the socket from the returned fd ---- */

/*
 * The fd's socket, cheaply: the task's fd table by direct loads from the
 * trusted current task, one helper read for the fd's file, then the file's
 * mode and socket. The TCP check is the caller's (the send/recv fallback
 * skips it for a socket already in the table: only TCP sockets get there).
 */
static __always_inline struct sock *sock_from_fd(__u64 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct files_struct *files = task->files;
	if (!files)
		return NULL;
	struct fdtable *fdt = files->fdt;
	if (!fdt || fd >= fdt->max_fds)
		return NULL;
	struct file **fds = fdt->fd;
	struct file *f = NULL;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return NULL;
	umode_t mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	if (!sock)
		return NULL;
	return BPF_CORE_READ(sock, sk);
}

static __always_inline __u64 sock_cookie_read(const struct sock *sk)
{
	/* Same value bpf_get_socket_cookie() returns once it was generated. */
	return BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
}

/* The TCP socket behind an fd of the calling task, with its cookie; NULL when the
 * fd is no TCP socket, or its cookie was never generated (counted). */
static __always_inline struct sock *tcp_sock_from_fd(__u64 fd, __u64 *cookie)
{
	struct sock *sk = sock_from_fd(fd);
	if (!sk || !is_tcp_sock(sk))
		return NULL;
	*cookie = sock_cookie_read(sk);
	if (!*cookie) {
		count(KSPAN_C_NO_COOKIE);
		return NULL;
	}
	return sk;
}

/* An accepted socket: its owner, its span, and the accept record. */
static __always_inline void accepted(const struct kspan_target *t, __u64 pid_tgid, struct kspan_sock *st, __u64 cookie)
{
	__u32 tgid = pid_tgid >> 32;
	st->pid = tgid;
	st->tid = (__u32)pid_tgid;
	sock_last_read(st, cookie, t, tgid);
	/* No context at accept() is the rule, not an orphan: the accept of a
	 * connection whose exchanges stay in the kernel is dropped by the agent,
	 * told by the close's KSPAN_F_AFTER_DROP. */
	if (record_skip(st, &st->agg.ref, false)) {
		bpf_map_delete_elem(&accept_pending, &cookie);
		return;
	}

	struct kspan_event *e = reserve();
	if (!e)
		return;
	fill_common(e, st, cookie, KSPAN_EV_ACCEPT);
	e->ts_ns = bpf_ktime_get_ns();
	__u64 *est = bpf_map_lookup_elem(&accept_pending, &cookie);
	if (est) {
		e->start_ns = *est;
		bpf_map_delete_elem(&accept_pending, &cookie);
	}
	ctx_from_ref(&e->ctx, &st->agg.ref);
	submit(e);
}

static __always_inline int handle_accept_exit(long ret)
{
	__u64 pid_tgid = current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	struct kspan_target *t = target_of(tgid);
	if (ret < 0)
		return 0;
	if (!t) {
		discovery_poke(tgid, discovery_wants_ports() ? sock_from_fd(ret) : NULL);
		return 0;
	}
	__u64 cookie;
	struct sock *sk = tcp_sock_from_fd(ret, &cookie);
	if (!sk)
		return 0;
	struct kspan_sock *st = sock_state_get(t, cookie, sk, KSPAN_F_SERVER);
	if (!st)
		return 0;
	enum sock_turn turn = sock_enter(st, cookie);
	accepted(t, pid_tgid, st, cookie);
	sock_leave(cookie, turn);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int on_accept4_exit(struct trace_event_raw_sys_exit *ctx)
{
	return handle_accept_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int on_accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	return handle_accept_exit(ctx->ret);
}

/* ---- softirq/timer hooks: retransmits, resets, close ---- */

static __always_inline int emit_sock_event(const struct sock *sk, __u8 type, __u8 flags, int err)
{
	__u64 cookie = bpf_get_socket_cookie((void *)sk);
	struct kspan_sock *st = bpf_map_lookup_elem(&socks, &cookie);
	if (!st)
		return 0;
	/* Retransmitted data belongs to whoever sent last; a reset to the last user. */
	const struct kspan_span_ref *ctx = type == KSPAN_EV_RETRANSMIT ? tx_ref(st, cookie) : &st->agg.ref;
	if (record_skip(st, ctx, true))
		return 0;
	struct kspan_event *e = reserve();
	if (!e)
		return 0;
	fill_common(e, st, cookie, type);
	e->ts_ns = bpf_ktime_get_ns();
	e->flags |= flags;
	e->error = err;
	e->tcp_state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (ctx)
		ctx_from_ref(&e->ctx, ctx);
	submit(e);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_retransmit, const struct sock *sk, const struct sk_buff *skb, int err)
{
	return emit_sock_event(sk, KSPAN_EV_RETRANSMIT, 0, err);
}

/* The same hook where its prototype is (sk, skb): no err to report. */
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_retransmit_noerr, const struct sock *sk, const struct sk_buff *skb)
{
	return emit_sock_event(sk, KSPAN_EV_RETRANSMIT, 0, 0);
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(on_send_reset, const struct sock *sk)
{
	/* sk may be NULL since 6.10 (a reset for a packet with no socket); the
	 * prototype's third argument (the reason, 6.10+) is not read, so one
	 * program serves both prototypes. */
	if (!sk)
		return 0;
	return emit_sock_event(sk, KSPAN_EV_RESET, KSPAN_F_RESET_SENT, 0);
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(on_receive_reset, struct sock *sk)
{
	return emit_sock_event(sk, KSPAN_EV_RESET, 0, 0);
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(on_destroy_sock, struct sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);
	bpf_map_delete_elem(&accept_pending, &cookie);
	struct kspan_sock *st = bpf_map_lookup_elem(&socks, &cookie);
	if (!st)
		return 0;
	enum sock_turn turn = sock_enter(st, cookie);
	agg_flush(st, cookie, NULL);
	struct kspan_event *e = reserve();
	if (e) {
		const struct tcp_sock *tp = (const struct tcp_sock *)sk;
		fill_common(e, st, cookie, KSPAN_EV_CLOSE);
		e->ts_ns = bpf_ktime_get_ns();
		/* Application bytes, not tcp_sock's bytes_acked/bytes_received:
		 * those count the FIN's sequence number too. */
		e->bytes_sent = st->total_sent;
		e->bytes_received = st->total_received;
		e->retransmits = BPF_CORE_READ(tp, total_retrans);
		e->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
		/* A close always goes out (it ends the connection); an unsampled
		 * context's ids do not go with it. */
		if (!st->agg.ref.valid || (st->agg.ref.trace_flags & 1) || (st->sflags & KSPAN_S_KEEP_UNSAMPLED))
			ctx_from_ref(&e->ctx, &st->agg.ref);
		if (st->sflags & KSPAN_S_DROPPED)
			e->flags |= KSPAN_F_AFTER_DROP;
		submit(e);
	}
	if (st->tx_at == KSPAN_TX_SPILL)
		bpf_map_delete_elem(&tx_spill, &cookie);
	if (st->sflags & KSPAN_S_CONNECTING)
		bpf_map_delete_elem(&connect_pending, &cookie);
	bpf_map_delete_elem(&socks, &cookie);
	sock_leave(cookie, turn);
	return 0;
}

/* ---- idle sockets: the agent closes aggregates nobody adds to any more ---- */

/*
 * On a keep-alive connection the last response stays in the open aggregate
 * until the next request or the close. The agent runs this program (syscall
 * type, BPF_PROG_TEST_RUN) every few hundred milliseconds to close aggregates
 * idle for `idle_ns`, so spans are not held back by a quiet connection.
 *
 * flush_idle looks only at the sockets in `idle_queue` (those whose aggregate
 * opened since they were last looked at), as many as were queued when it
 * started: an idle one is flushed and leaves the queue, a busy one goes back,
 * a closed or quiet one leaves. flush_idle_walk, for kernels without bpf_loop
 * (before 5.17), walks the whole socket table.
 */
struct flush_ctx {
	__u64 cutoff;
	__u64 flushed;
	__u64 *queued;
};

/*
 * This run's cutoff: `idle_ns` before now, but never past the guard the run
 * before published (hooks that read it claim every socket at or before it; 0
 * before the first run: every hook claims). Then publishes the next guard,
 * `guard_ns` past what this run wanted, which the next run's cutoff will not
 * pass either: a run that comes late lags by the difference once.
 */
static __always_inline __u64 flush_cutoff(const struct kspan_flush_args *args)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 want = now > args->idle_ns ? now - args->idle_ns : 0;
	__u32 zero = 0;
	__u64 *guard = bpf_map_lookup_elem(&flush_guard, &zero);
	if (!guard)
		return 0;
	__u64 g = *guard;
	__u64 next = want + args->guard_ns;
	if (!g || next > g)
		*guard = next;
	return g && want > g ? g : want;
}

/* Flushes a quiet socket's open aggregate, holding the socket's claim (which a
 * hook may hold: then it is left for the next run). False: not quiet, or claimed. */
static __always_inline bool flush_if_idle(struct kspan_sock *st, __u64 cookie, struct flush_ctx *fc, bool dequeue,
					 const struct sock *sk)
{
	if (st->agg.last_ns > fc->cutoff || !sock_claim(cookie))
		return false;
	bool quiet = st->agg.last_ns <= fc->cutoff; /* a hook may have had it in between */
	if (quiet) {
		if (dequeue)
			st->sflags &= ~KSPAN_S_QUEUED;
		if (st->agg.dir) {
			st->agg.flags |= KSPAN_F_IDLE;
			agg_flush(st, cookie, sk);
			fc->flushed++;
		}
	}
	sock_leave(cookie, TURN_CLAIMED);
	return quiet;
}

static long flush_queued(__u32 i, struct flush_ctx *fc)
{
	struct idle_entry q;
	if (bpf_map_pop_elem(&idle_queue, &q))
		return 1; /* empty: stop */
	__sync_fetch_and_add(fc->queued, -1);
	__u64 cookie = q.cookie;
	struct kspan_sock *st = bpf_map_lookup_elem(&socks, &cookie);
	if (!st)
		return 0; /* closed since */
	/* Quiet: flushed (if open) and out of the queue. Otherwise (in use since
	 * the cutoff, or claimed by a hook) it goes back, to be looked at again. */
	if (flush_if_idle(st, cookie, fc, true, (const struct sock *)q.sk))
		return 0;
	if (!bpf_map_push_elem(&idle_queue, &q, 0))
		__sync_fetch_and_add(fc->queued, 1);
	else
		count(KSPAN_C_IDLE_QUEUE_FULL); /* cannot happen (each socket is queued once): it waits for its close */
	return 0;
}

SEC("syscall")
int flush_idle(struct kspan_flush_args *args)
{
	__u32 zero = 0;
	struct flush_ctx fc = { .cutoff = flush_cutoff(args) };
	fc.queued = bpf_map_lookup_elem(&idle_queued, &zero);
	if (!fc.queued)
		return 0;
	__u64 n = *fc.queued;
	args->more = n > KSPAN_FLUSH_BATCH;
	if (n > KSPAN_FLUSH_BATCH)
		n = KSPAN_FLUSH_BATCH;
	bpf_loop(n, flush_queued, &fc, 0);
	args->flushed = fc.flushed;
	return 0;
}

static long flush_one(struct bpf_map *map, __u64 *cookie, struct kspan_sock *st, struct flush_ctx *fc)
{
	if (st->agg.dir)
		flush_if_idle(st, *cookie, fc, false, NULL);
	return 0;
}

SEC("syscall")
int flush_idle_walk(struct kspan_flush_args *args)
{
	struct flush_ctx fc = { .cutoff = flush_cutoff(args) };
	bpf_for_each_map_elem(&socks, flush_one, &fc, 0);
	args->flushed = fc.flushed;
	args->more = 0;
	return 0;
}

/* ---- fallback: syscall tracepoints for kernels without sock_{send,recv}_length ---- */

/* One read or write of a target's fd that returned `ret` bytes: find the socket, then account it. */
static __always_inline void io_done(const struct kspan_target *t, struct task_struct *task, __u64 pid_tgid,
				    __u64 fd, __u8 dir, long ret)
{
	struct sock *sk = sock_from_fd(fd);
	if (!sk)
		return;
	__u64 cookie = sock_cookie_read(sk);
	struct kspan_sock *st = cookie ? bpf_map_lookup_elem(&socks, &cookie) : NULL;
	if (!st) {
		if (!is_tcp_sock(sk))
			return;
		if (!cookie) {
			count(KSPAN_C_NO_COOKIE);
			return;
		}
		st = sock_state_get(t, cookie, sk, 0);
		if (!st)
			return;
	} else if (!st->lport) {
		sock_addr(st, sk); /* as sock_state_get() does for a socket it finds */
	}
	enum sock_turn turn = sock_enter(st, cookie);
	account_io(t, task, pid_tgid, sk, st, cookie, dir, ret, KSPAN_F_FALLBACK_IO, turn);
	sock_leave(cookie, turn);
}

/*
 * At a syscall's exit the task's saved registers still hold its arguments
 * (x86_64: the fd in rdi; the syscall tracepoints never fire for 32-bit
 * compat calls), so one program per call does the work: no entry hook, no
 * map to pair entry and exit. bpf_task_pt_regs() is 5.15+: older kernels
 * get the paired programs below.
 */
static __always_inline int io_exit_regs(long ret, __u8 dir)
{
	if (ret <= 0)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 pid_tgid = current_pid_tgid_of(task);
	struct kspan_target *t = target_of(pid_tgid >> 32);
	if (!t)
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return 0;
	io_done(t, task, pid_tgid, regs->di, dir, ret);
	return 0;
}

/* Kernels without bpf_task_pt_regs: the entry keeps the fd per thread for the exit. */
static __always_inline int io_enter(__u64 fd, __u8 dir)
{
	__u64 pid_tgid = current_pid_tgid();
	if (!target_of(pid_tgid >> 32))
		return 0;
	__u32 tid = (__u32)pid_tgid;
	struct io_args a = { .fd = fd, .dir = dir };
	bpf_map_update_elem(&io_inflight, &tid, &a, BPF_ANY);
	return 0;
}

static __always_inline int io_exit_paired(long ret)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 pid_tgid = current_pid_tgid_of(task);
	__u32 tid = (__u32)pid_tgid;
	struct io_args *a = bpf_map_lookup_elem(&io_inflight, &tid);
	if (!a)
		return 0;
	__u64 fd = a->fd;
	__u8 dir = a->dir;
	bpf_map_delete_elem(&io_inflight, &tid);
	struct kspan_target *t;
	if (ret <= 0 || !(t = target_of(pid_tgid >> 32)))
		return 0;
	io_done(t, task, pid_tgid, fd, dir, ret);
	return 0;
}

#define IO_TRACEPOINTS(name, dir)                                                 \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                \
	int on_##name##_exit(struct trace_event_raw_sys_exit *ctx)                \
	{                                                                         \
		return io_exit_regs(ctx->ret, dir);                               \
	}                                                                         \
	SEC("tracepoint/syscalls/sys_enter_" #name)                               \
	int on_##name##_enter(struct trace_event_raw_sys_enter *ctx)              \
	{                                                                         \
		return io_enter(ctx->args[0], dir);                               \
	}                                                                         \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                \
	int paired_##name##_exit(struct trace_event_raw_sys_exit *ctx)            \
	{                                                                         \
		return io_exit_paired(ctx->ret);                                  \
	}

IO_TRACEPOINTS(write, KSPAN_EV_SEND)
IO_TRACEPOINTS(writev, KSPAN_EV_SEND)
IO_TRACEPOINTS(sendto, KSPAN_EV_SEND)
IO_TRACEPOINTS(sendmsg, KSPAN_EV_SEND)
IO_TRACEPOINTS(read, KSPAN_EV_RECV)
IO_TRACEPOINTS(readv, KSPAN_EV_RECV)
IO_TRACEPOINTS(recvfrom, KSPAN_EV_RECV)
IO_TRACEPOINTS(recvmsg, KSPAN_EV_RECV)

#include "uprobes.bpf.h"
#include "sched.bpf.h"
