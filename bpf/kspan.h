/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Records shared by the BPF programs and the agent. Declared once here; the
 * TypeScript decoders in src/records/abi.generated.ts are generated from the BTF of the
 * compiled object (tools/gen-records/main.ts), so no offset is written twice.
 *
 * Every type below must stay free of implicit padding surprises: fields are
 * ordered by size and padded explicitly.
 */
#ifndef KSPAN_H
#define KSPAN_H

enum kspan_event_type {
	KSPAN_EV_ACCEPT = 1,
	KSPAN_EV_CONNECT = 2,
	KSPAN_EV_SEND = 3,
	KSPAN_EV_RECV = 4,
	KSPAN_EV_RETRANSMIT = 5,
	KSPAN_EV_RESET = 6,
	KSPAN_EV_CLOSE = 7,
};

/* Bits of kspan_event.flags. */
enum kspan_event_flag {
	KSPAN_F_RESET_SENT = 1,     /* reset: we sent the RST (else received) */
	KSPAN_F_FALLBACK_IO = 2,    /* send/recv: aggregated from syscall exit tracepoints */
	KSPAN_F_SERVER = 4,         /* the socket was accepted (passive open) */
	KSPAN_F_CLIENT = 8,         /* the socket connected (active open) */
	KSPAN_F_FLUSHED = 16,       /* send/recv: closed by the agent at shutdown, not by the kernel */
	KSPAN_F_IDLE = 32,          /* send/recv: closed because the socket went idle (flush_idle) */
	KSPAN_F_DROP = 64,          /* aggregate in the socket table: not to leave the kernel (unsampled) */
	KSPAN_F_SENT_ACKED = 64,    /* send/recv record holding a send (and never a DROP aggregate): as a send,
	                             * a recv or the idle flush made it, every byte the owner had written before
	                             * was acknowledged, so no retransmit of this record's sent data can follow */
	KSPAN_F_AFTER_DROP = 128,   /* send/recv/close: an aggregate of this socket before it stayed in the kernel */
};

/* Bits of kspan_sock.sflags. */
enum kspan_sock_flag {
	KSPAN_S_ORPHAN_SKIP = 1,    /* records with no context stay in the kernel (the target's orphan_keep) */
	KSPAN_S_KEEP_UNSAMPLED = 2, /* the owner's KSPAN_T_KEEP_UNSAMPLED, for the softirq hooks */
	KSPAN_S_DROPPED = 4,        /* an aggregate stayed in the kernel since the last record */
	KSPAN_S_QUEUED = 8,         /* the socket is in the idle flush's queue */
	KSPAN_S_CONNECTING = 16,    /* connect() sent the SYN: its time waits in `connect_pending` */
};

/* Where a socket keeps the context that last sent (kspan_sock.tx_at): the span
 * that owns the data in flight, for retransmits. Mostly the open aggregate or the
 * one before it; `tx_spill` only when both slots hold other spans. */
enum kspan_tx_at {
	KSPAN_TX_NONE = 0,          /* nothing sent yet */
	KSPAN_TX_AGG = 1,           /* agg.ref */
	KSPAN_TX_PEND = 2,          /* pend.ref (also after pend went out: the slot keeps it) */
	KSPAN_TX_SPILL = 3,         /* the `tx_spill` map, keyed by cookie */
};

/* Sizes and limits, one place for both sides: the maps are declared with them,
 * and the agent reads them from src/records/abi.generated.ts (it may resize the
 * ring and the socket table before load, never past what is written here). */
enum kspan_limit {
	KSPAN_RING_BYTES = 4 << 20,         /* default ring buffer size */
	KSPAN_MAX_SOCKETS = 57344,          /* default size of the socket table (`socks`): with every slot in use, 15.7 MB of kernel memory allocated on use, 15.3 MB preallocated (<= 16 MB) */
	KSPAN_MAX_TARGETS = 4096,           /* traced processes at once (`targets`, `node_layouts`) */
	KSPAN_MAX_ACCEPT_PENDING = 16384,   /* handshakes done, not yet accepted (LRU) */
	KSPAN_MAX_IO_INFLIGHT = 16384,      /* fallback path: threads inside a read/write at once */
	KSPAN_MAX_TLS_MODULE = 4096,        /* highest TLS module id (DTV index) the reader follows */
	KSPAN_FLUSH_BATCH = 8192,           /* sockets one flush_idle run looks at (the agent runs it again for more) */
	KSPAN_IDLE_NO_QUEUE = 0x7fffffff,   /* `idle_queued`'s count where the idle flush has no queue (flush_idle_walk, or none): nothing is queued */
	KSPAN_MAX_SOCK_CLAIMS = 1024,       /* sockets claimed at once by the idle flush or a hook (`sock_claims`): a few per CPU at most */
	KSPAN_CTX_ATTRS_MAX = 52,           /* see struct kspan_trace_ctx */
	KSPAN_MAX_PROC_SEEN = 16384,        /* processes not traced whose last CHECK is remembered (`proc_seen`, LRU) */
	KSPAN_PROC_RING_BYTES = 256 << 10,  /* the `proc_events` ring */
	KSPAN_MAX_SEL_PORTS = 1024,         /* ports of --port selectors (`sel_ports`) */
	KSPAN_CALL_RING_BYTES = 1 << 20,    /* ring buffer of uprobe call records (`calls`); its mapping counts in the agent's RSS */
	KSPAN_MAX_CALL_THREADS = 4096,      /* threads inside a probed function at once (`call_stacks`) */
	KSPAN_CALL_DEPTH = 8,               /* probed calls open at once in one thread, nested or recursive */
	KSPAN_CALL_NAME_MAX = 64,           /* dns: bytes of the queried name kept (NUL included) */
	KSPAN_MAX_SPAN_ATTRS = 16384,       /* spans whose attributes the socket table refers to (`span_attrs`, LRU) */
	KSPAN_MAX_TX_SPILL = 4096,          /* sockets whose last sender is out of their slots (`tx_spill`, LRU) */
	KSPAN_MAX_CONNECT_PENDING = 16384,  /* connects waiting for their handshake (`connect_pending`, LRU) */
};

/* Indexes into the per-CPU `counters` map (counters.bpf.h): every loss is counted. */
enum kspan_counter {
	KSPAN_C_RINGBUF_FULL = 0,   /* bpf_ringbuf_reserve failed: a record was lost */
	KSPAN_C_SOCK_TABLE_FULL = 1,/* no room for a socket's state: its records are lost */
	KSPAN_C_NO_COOKIE = 2,      /* fallback path: socket had no cookie yet */
	KSPAN_C_CTX_TORN = 3,       /* thread context changed while it was copied */
	KSPAN_C_CTX_INVALID = 4,    /* thread context record not valid (valid != 1) */
	KSPAN_C_CTX_FAULT = 5,      /* thread context read faulted (page not resident, bad pointer) */
	KSPAN_C_CTX_SUSPECT = 6,    /* a server socket's response changed context with no request between: kept with the response's context */
	KSPAN_C_CTX_NODE_REJECTED = 7, /* Node walk refused a V8 structure (rehash, bad counts or index, long chain): no context */
	KSPAN_C_UNSAMPLED = 8,      /* a record not made: its context is not sampled (an exchange, a connect, a retransmit, a reset) */
	KSPAN_C_ORPHAN_SKIPPED = 9, /* a record not made: no context, on a connection --orphans-ratio left out */
	KSPAN_C_IDLE_QUEUE_FULL = 10,/* an open aggregate the idle flush will not see (its queue was full): it waits for the socket's next call or close */
	KSPAN_C_CALL_TABLE_FULL = 11,/* uprobe: no room for a thread's open calls: the call makes no record */
	KSPAN_C_CALL_TOO_DEEP = 12, /* uprobe: more than KSPAN_CALL_DEPTH probed calls open in a thread: the deeper ones make no record */
	KSPAN_C_CALL_UNMATCHED = 13,/* uprobe: a return with no open call of its own (the agent attached mid-call) */
	KSPAN_C_STATE_EVICTED = 14, /* state kept out of the socket table was evicted before its record (a span's
	                             * attributes, a socket's last sender, a connect's start): the record went without it */
	KSPAN_C_SCHED_CTX_FAILED = 15,/* scheduler: the span could not be read at a switch-out (a page not resident: no fault can be served there; or caught mid-update): the thread keeps the span it had (not in KSPAN_C_CTX_*, which count the TCP hooks' reads) */
	KSPAN_C_SCHED_TABLE_FULL = 16,/* scheduler: no room for a thread's state (`sched_threads`): its time under the span is lost */
	KSPAN_C_SCHED_UNSAMPLED = 17,/* scheduler: a switch-out under an unsampled span (no state kept, no record) */
	KSPAN_C_PROC_RING_FULL = 18,/* a process event (exec, fork, exit, check) was lost: the ring was full */
	KSPAN_C_FORK_TABLE_FULL = 19,/* a target's child could not be made a target: the targets map was full */
	KSPAN_C_SCHED_IN_UNSEEN = 20,/* scheduler: a target thread switched out again with neither its switch-in nor (blocked) its wakeup seen by the programs (the kernel did not run them): the interval was closed at that switch-out from the thread's own accounting, its blocked record with no stack */
	KSPAN_C_FLUSH_CONTENDED = 21,/* a hook found a socket claimed by the idle flush for longer than it waits (or could not claim it: `sock_claims` full): a send or recv went out as a record of its own, another hook changed the socket anyway */
	KSPAN_C_MAX = 22,
};

/* Bits of kspan_target.flags: per-target choices the agent makes. */
enum kspan_target_flag {
	KSPAN_T_KEEP_UNSAMPLED = 1, /* records of unsampled contexts leave the kernel too (events/record --unsampled) */
};

/* The span a thread had active, copied from its TLS (OTEP 4947 record header and
 * the head of its attributes, {key u8, len u8, val[len]}...). KSPAN_CTX_ATTRS_MAX
 * = 52 attribute bytes fill it to 80 bytes with no padding. It sits in every
 * record twice; the socket table keeps its head only (struct kspan_span_ref). */
struct kspan_trace_ctx {
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 trace_flags;
	__u8 valid;                 /* 1 when a context was read, 0 when none */
	__u16 attrs_size;           /* the record's attrs_size; attrs holds the first min(attrs_size, 52) bytes */
	__u8 attrs[KSPAN_CTX_ATTRS_MAX];
};

/* A send/recv aggregate: bytes and calls of one direction under one context. */
struct kspan_agg {
	__u64 first_ns;
	__u64 last_ns;
	__u64 bytes;
	__u32 tid;
	__u32 calls;
	__u8 dir;                   /* 0 none, KSPAN_EV_SEND or KSPAN_EV_RECV */
	__u8 flags;                 /* KSPAN_F_FALLBACK_IO */
	__u8 _pad[6];
	struct kspan_trace_ctx ctx;
};

/* One ring-buffer record. Which fields apply depends on `type`: the comments
 * below, and the README's `kspan events` table, which prints them one to one. */
struct kspan_event {
	__u64 ts_ns;                /* CLOCK_MONOTONIC: when it happened (aggregate: last call) */
	__u64 start_ns;             /* aggregate: first call; accept: handshake done; connect: SYN sent */
	__u64 cookie;               /* socket cookie */
	__u64 bytes;                /* send/recv: bytes in the aggregate */
	__u64 bytes_sent;           /* close: bytes the owner sent through syscalls while traced */
	__u64 bytes_received;       /* close: bytes the owner received through syscalls while traced */
	__u32 pid;                  /* tgid of the socket's owner */
	__u32 tid;                  /* thread of the socket's owner */
	__u32 calls;                /* send/recv: syscalls in the aggregate */
	__u32 retransmits;          /* close: tcp_sock total_retrans */
	__u32 srtt_us;              /* close: smoothed RTT */
	__s32 error;                /* connect: errno of the failure; retransmit: the kernel's err
	                             * (kernels whose tracepoint has no err: always 0) */
	__u8 type;                  /* enum kspan_event_type */
	__u8 family;                /* AF_INET or AF_INET6 */
	__u8 flags;                 /* enum kspan_event_flag bits */
	__u8 tcp_state;             /* retransmit/reset: TCP state at the time */
	__u16 lport;                /* host byte order */
	__u16 rport;                /* host byte order */
	__u8 laddr[16];             /* IPv4: first 4 bytes */
	__u8 raddr[16];
	struct kspan_trace_ctx ctx; /* the span active in the thread, or valid = 0 */
	/* send/recv: the aggregate that closed before this one on the same socket,
	 * when dir != 0. Aggregates are emitted in pairs (a request and its
	 * response), so an exchange costs one ring-buffer record, not two. */
	struct kspan_agg prev;
};

/* Argument of the `flush_idle` syscall program, run by the agent on a timer. */
struct kspan_flush_args {
	__u64 idle_ns;              /* close aggregates whose last call is older than this */
	__u64 guard_ns;             /* the next run's cutoff may be this much past this run's (more than the time between runs) */
	__u64 flushed;              /* out: how many aggregates were closed */
	__u64 more;                 /* out: 1 when sockets are left for another run (more than KSPAN_FLUSH_BATCH) */
};

/* A span as the socket table keeps it: the head of a kspan_trace_ctx (same
 * layout, so the first 28 bytes copy either way), without the attribute bytes.
 * Those wait in `span_attrs`, keyed by the ids (the first 24 bytes), only when
 * attrs_size > 0, and go back into the record when it is made. */
struct kspan_span_ref {
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 trace_flags;
	__u8 valid;                 /* 1 when a context was read, 0 when none */
	__u16 attrs_size;           /* the record's attrs_size (0: no attributes) */
};

/* Value of `span_attrs`: what struct kspan_trace_ctx holds after its ids. */
struct kspan_span_attrs {
	__u16 attrs_size;
	__u8 attrs[KSPAN_CTX_ATTRS_MAX];
};

/* A send/recv aggregate in the socket table: struct kspan_agg with its context
 * by reference. 64 bytes. */
struct kspan_sock_agg {
	struct kspan_span_ref ref;
	__u8 dir;                   /* 0 none, KSPAN_EV_SEND or KSPAN_EV_RECV */
	__u8 flags;                 /* KSPAN_F_FALLBACK_IO, KSPAN_F_DROP, KSPAN_F_IDLE */
	__u8 _pad[2];
	__u32 tid;
	__u32 calls;
	__u64 first_ns;
	__u64 last_ns;
	__u64 bytes;
};

/*
 * Per-socket state, keyed by cookie in the `socks` map: 192 bytes, 57 344 of
 * them by default (allocated on use on 6.1+, preallocated before). One span per
 * slot: the open aggregate's `agg.ref` is also the context of the socket's last
 * syscall (reset and close records; accept and connect write it before any
 * aggregate), and the context that last sent is found through `tx_at`. A
 * connect's SYN time waits in `connect_pending`.
 */
struct kspan_sock {
	__u64 total_sent;           /* bytes sent / received through syscalls while traced */
	__u64 total_received;
	__u32 pid;                  /* owner: last thread that used the socket in a syscall */
	__u32 tid;
	__u8 family;
	__u8 role;                  /* KSPAN_F_SERVER or KSPAN_F_CLIENT, 0 unknown */
	__u16 lport;
	__u16 rport;
	__u8 sflags;                /* enum kspan_sock_flag */
	__u8 tx_at;                 /* enum kspan_tx_at */
	__u8 laddr[16];
	__u8 raddr[16];
	struct kspan_sock_agg agg;  /* the open aggregate (dir 0: none) */
	struct kspan_sock_agg pend; /* closed aggregate waiting for its pair */
};

/* Where a target's thread-context pointer lives (in its `targets` entry). Resolved in userspace from the ELF and /proc/PID/{maps,mem}. */
enum kspan_tls_kind {
	KSPAN_TLS_NONE = 0,
	KSPAN_TLS_STATIC = 1,       /* address = fsbase + offset (local-exec, initial-exec, static TLSDESC) */
	KSPAN_TLS_DTV = 2,          /* address = dtv[module].block + offset (dlopen'ed, dynamic TLS) */
};

enum kspan_dtv_layout {
	KSPAN_DTV_GLIBC = 0,        /* 16-byte entries, entry count at dtv[-1] */
	KSPAN_DTV_MUSL = 1,         /* 8-byte entries, entry count at dtv[0] */
};

enum kspan_ctx_scheme {
	KSPAN_SCHEME_NONE = 0,
	KSPAN_SCHEME_OTEL_V1 = 1,   /* otel_thread_ctx_v1: the TLS word points at the record */
	KSPAN_SCHEME_NODEJS_V1 = 2, /* otel_thread_ctx_nodejs_v1: walk V8 to the record */
};

struct kspan_tls_loc {
	__s64 offset;               /* STATIC: TP-relative offset; DTV: offset in the module's block */
	__u64 module;               /* DTV: module id (dtv index) */
	__u8 kind;                  /* enum kspan_tls_kind */
	__u8 scheme;                /* enum kspan_ctx_scheme */
	__u8 dtv_layout;            /* enum kspan_dtv_layout (DTV only) */
	__u8 _pad[5];
};

/* Value of the `targets` map (tgid → what the programs need of a traced
 * process), so one lookup per event answers "traced?" and "where is the span?". */
struct kspan_target {
	struct kspan_tls_loc loc;   /* kind KSPAN_TLS_NONE: no thread context (yet) */
	/* Connections whose records with no context leave the kernel: those whose
	 * cookie hashes below this (0xffffffff: all, 0: none). A connection is kept
	 * or left out whole, so a kept one is complete. */
	__u32 orphan_keep;
	__u8 flags;                 /* enum kspan_target_flag */
	__u8 sel;                   /* selection slots this target is selected in (bit 0, bit 1): see discovery.bpf.h */
	__u8 _pad[2];
};

/* How to walk a Node.js target's V8 heap from its otel_thread_ctx_nodejs_v1 TLS
 * struct to the record (scheme KSPAN_SCHEME_NODEJS_V1; `node_layouts` map, keyed
 * by tgid). From the target's process context (threadlocal.* keys), per
 * generation of the `nodejs_v1_dev` contract (docs/NODEJS.md):
 *   G3: record pointer at wrapper + the u8 at TLS byte 20 (record_slot = 0)
 *   G2: record pointer at wrapper + record_slot
 *   G1: record pointer at *(wrapper + record_slot) + native_field_offset */
struct kspan_node_layout {
	__u16 map_table_offset;     /* JSMap: tagged pointer to its OrderedHashMap */
	__u16 hash_map_header_size; /* OrderedHashMap: header before the element count */
	__u16 record_slot;          /* see above; 0: take it from the TLS struct (G3) */
	__u16 native_field_offset;  /* G1 only: second hop; 0 otherwise */
	__u8 generation;            /* 1, 2 or 3 */
	__u8 _pad[7];
};

/* ---- discovery (discovery.bpf.h): processes as they exec, fork and exit ---- */

enum kspan_proc_event_type {
	KSPAN_P_EXEC = 1,           /* a process exec'ed: the agent looks at it (a target's location was cleared) */
	KSPAN_P_FORK = 2,           /* a target forked: the child is a target already (same location) */
	KSPAN_P_EXIT = 3,           /* a target's last thread exited: its entries were deleted */
	KSPAN_P_CHECK = 4,          /* a process not traced opened a connection, its mappings changed since the agent looked */
};

/* One record of the `proc_events` ring. */
struct kspan_proc_event {
	__u64 ts_ns;                /* CLOCK_MONOTONIC */
	__u32 pid;                  /* tgid */
	__u32 ppid;                 /* FORK: the parent's tgid */
	__u32 map_count;            /* CHECK: the process's VMA count when it was sent */
	__u8 type;                  /* enum kspan_proc_event_type */
	__u8 _pad[3];
};

enum kspan_discovery_flag {
	KSPAN_D_FOLLOW_FORK = 1,    /* children of targets become targets on fork */
	KSPAN_D_WATCH = 2,          /* exec and CHECK records go to the agent (selectors, --all) */
	KSPAN_D_PORTS = 4,          /* slot 0 selects by port: CHECK only for connections whose local or peer
	                             * port is in `sel_ports` for the slot in force (KSPAN_D_PORTS << 1: slot 1) */
};

/* The one entry of the `discovery` array: what the programs do, set by the agent. */
struct kspan_discovery {
	__u64 check_interval_ns;    /* a process is sent for CHECK at most this often */
	/* The agent's pid namespace when it is not the initial one (a sidecar
	 * sharing its service's): pids in maps and records are that namespace's,
	 * as the agent sees them in /proc. pidns_ino 0: the initial namespace. */
	__u64 pidns_dev;
	__u64 pidns_ino;
	__u32 flags;                /* enum kspan_discovery_flag */
	__u32 _pad;
};

/* `proc_seen` (LRU, tgid): what the agent last saw of a process not traced. */
struct kspan_proc_seen {
	__u64 checked_ns;           /* when it was last sent for CHECK */
	__u32 map_count;            /* its VMA count then */
	__u32 ignore;               /* 1: the agent ruled it out until it execs (no CHECK) */
};

/* uprobe calls (bpf/uprobes.bpf.h): one record per call of a probed function,
 * in their own ring buffer (`calls`). */
enum kspan_call_flag {
	KSPAN_CALL_F_UNFINISHED = 1, /* the thread exited or exec'ed inside the call: closed then */
	KSPAN_CALL_F_ABANDONED = 2,  /* the call never returned (longjmp, unwinding): closed when a caller returned */
};

/* One probed call open in a thread (its entry seen, its return not yet). */
struct kspan_call_frame {
	__u64 start_ns;
	__u64 sp;                   /* stack pointer at entry: its return has sp + 8 */
	__u64 arg0;                 /* first argument (dns: the name) */
	__u64 arg3;                 /* fourth argument (dns: struct addrinfo **res) */
	__u32 probe;                /* the attach cookie: the agent's probe id */
	__u8 drop;                  /* the context is not sampled: no record */
	__u8 _pad[3];
	struct kspan_trace_ctx ctx; /* the span active in the thread at entry */
};

/* Value of `call_stacks` (tid → the thread's open probed calls, innermost last). */
struct kspan_call_stack {
	__u32 depth;                /* frames in use */
	__u32 pid;
	struct kspan_call_frame frames[KSPAN_CALL_DEPTH];
};

/* A ring-buffer record of the `calls` ring: one call of a probed function. */
struct kspan_call {
	__u64 start_ns;             /* CLOCK_MONOTONIC: entry */
	__u64 end_ns;               /* return (or when the agent's hooks closed it: flags) */
	__s64 ret;                  /* the return value (rax); 0 when unfinished */
	__u32 pid;
	__u32 tid;
	__u32 probe;                /* the agent's probe id (attach cookie) */
	__u32 outer_probe;          /* probe id of the probed call this one runs inside, 0 when none */
	__u32 count;                /* dns: distinct addresses in the answer; tls: the SSL's first int after a success (the version in OpenSSL 1.1 to 3.1) */
	__u8 flags;                 /* enum kspan_call_flag */
	__u8 depth;                 /* probed calls open under this one in the thread */
	__u8 _pad[2];
	__u8 name[KSPAN_CALL_NAME_MAX]; /* dns: the queried name, NUL-terminated; else empty */
	struct kspan_trace_ctx ctx; /* the span active in the thread at entry, or valid = 0 */
};

#endif
