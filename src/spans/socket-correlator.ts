/**
 * SocketCorrelator: kernel records → kernel spans, keyed on the socket cookie.
 * Pure: no kernel, no I/O; time comes from an injectable clock.
 *
 * What the kernel gives us (bpf/kspan.bpf.c): send/recv are aggregates per socket,
 * per direction and per trace context, emitted when the direction or the context
 * changes, or when the socket closes. So a send record arrives when the socket next
 * reads (or closes), a recv record when it next writes (or closes). retransmit
 * records carry the context that last *sent* on the socket (it owns the data in
 * flight); reset and close records the context of the last syscall.
 *
 * Attribution rules
 *
 * Server sockets (accepted by the target):
 *  S1. recv records are not attributed on arrival. They are merged per cookie into
 *      one pending request (first read → last read, bytes, calls), whatever their
 *      context: the application reads the request before it starts the span that
 *      answers it, so the read carries no context (new connection) or the previous
 *      request's context (keep-alive, when the thread's TLS still holds it).
 *  S2. The next send record on that cookie closes the pending request: a send with a
 *      context C makes one `tcp.recv` child of C (the request bytes) and a `tcp.send`
 *      child of C (the response). So recv(null) → send(A) → recv(A) → send(B) gives
 *      recv₁ and send(A) under A, recv₂ and send(B) under B, and an HTTP
 *      100-continue body read inside A (send(A) recv(A) send(A)) gives A two reads.
 *  S3. The first request of a connection also gets `tcp.accept` (handshake done →
 *      accept() returned), under the same context as the first response.
 *  S4. When no send with a context comes (the response had no context, the socket
 *      closed or was evicted), the pending request goes to the latest context it was
 *      itself read in that is not the socket's previous response context; failing
 *      that it is an orphan.
 *  S5. Pipelined requests read in one aggregate are attributed whole to the first
 *      response; later responses get only their `tcp.send` (bytes cannot be split
 *      without parsing the protocol).
 *
 * Client sockets (connected by the target):
 *  C1. `tcp.connect` covers SYN sent → ESTABLISHED (or CLOSE: error status with the
 *      reason from connectErrorName), under the context connect() ran in. SYN
 *      retransmits and resets seen in SYN_SENT become its events.
 *  C2. send → `tcp.send` under its context.
 *  C3. recv → `tcp.recv` under its own context, or, when it has none, under the
 *      context of the send just before it on that cookie. When that send had the
 *      same context, the span starts at the end of the send (the wait for the first
 *      response byte is in it; `waitNs` holds that wait).
 *  Sockets whose role the kernel did not see (opened before kspan started): the
 *  lower port is taken to be the server's.
 *
 * Retransmits and resets (both roles):
 *  R1. A retransmit goes to the `tcp.send` span of its context on that cookie. The
 *      send record usually comes after (the aggregate is still open), so events wait
 *      per cookie and per context until that span is built. A built `tcp.send` is
 *      held back ("lingers") to collect later retransmits until the socket reads
 *      again (the kernel emits the next recv record only once the socket writes
 *      again, so the data is acknowledged), sends again, closes, or `lingerNs`
 *      passes (by the time of the records that follow, or the clock's at a tick);
 *      not at all when its record says every byte sent before it was
 *      acknowledged (`sentAcked`: the kernel saw snd_una at write_seq when it made
 *      the record, the common case of a keep-alive request after a response).
 *  R2. A reset goes to the span of its context that is held or built next on that
 *      cookie, as a `tcp.reset` event, and makes it an error.
 *  R3. Events whose span never comes (socket closed, evicted) become a standalone
 *      zero-length `tcp.retransmit` / `tcp.reset` span under their context, so the
 *      retransmit events still add up to the kernel's count (counters.lateEvents).
 *
 * Sampling and orphans: a span whose parent is unsampled (traceFlags & 1 == 0) is
 * dropped and counted; a span with no context is counted (per pid too) and emitted
 * only with `orphans: true`, then grouped by exchange. The kernel keeps most of
 * these from ever leaving it (unsampled exchanges, orphans --orphans-ratio leaves
 * out); a send/recv record marked `afterDropped` says an exchange before it stayed
 * there, so:
 *  D1. A pending accept when an `afterDropped` send/recv or close arrives belonged
 *      to the connection's first exchange, which stayed in the kernel: it is
 *      dropped and counted (acceptsOfDroppedExchanges), not hung under a later
 *      exchange or ended as an orphan.

 *
 * Exchanges (`orphans: true` only):
 *  E1. The spans of a socket that have no context are grouped per request/response
 *      exchange under a root kernel span `tcp.exchange` (kind SERVER on an accepted
 *      socket, CLIENT on a connected one), one trace per exchange. Its ids come from
 *      `exchangeIds`; it covers its spans, from the first (the handshake for a
 *      connection's first exchange, else the first request byte) to the last.
 *  E2. Server socket: the request (tcp.accept, tcp.recv) then the response (tcp.send)
 *      is one exchange, and the next request after a response starts the next one;
 *      the accept belongs to the connection's first exchange. Client socket: the
 *      request (tcp.connect, tcp.send) then the response (tcp.recv).
 *  E3. The root is emitted once its response span is, i.e. after the kernel closed
 *      the response aggregate (the next request, the close, the idle flush) and, for
 *      a send, after its linger; a response record after that (a response continued
 *      after an idle flush) is an exchange of its own. A socket that ends mid-exchange
 *      emits it with the spans it has. A read between two sends (HTTP 100-continue)
 *      makes two exchanges. Standalone retransmit/reset spans (R3) join the socket's
 *      current exchange.
 *
 * Memory: per-socket state is bounded by `maxSockets` (least recently used is
 * evicted) and `idleTimeoutNs`; per-socket pending events by `maxPendingEvents`.
 * Evicted or exited sockets end their open spans, marked `incomplete`.
 */
import type { Endpoint, KernelRecord, RecordType, TraceContext } from '../records/kernel-record.ts';
import { connectErrorName } from '../records/kernel-record.ts';
import { KspanLimit } from '../records/abi.generated.ts';
import { newKernelSpan, type IncompleteReason, type KernelSpan, type KernelSpanEvent, type KernelSpanName } from './kernel-span.ts';
import { IdSource } from './span-ids.ts';

const TCP_SYN_SENT = 2;

export interface SocketCorrelatorOptions {
  /** Receives every span that is to be exported, in the order it completes. */
  emit: (span: KernelSpan) => void;
  /** Emit spans with no context as root spans (default false: count them only). */
  orphans?: boolean;
  /** Per-socket state kept at most (LRU). Default KSPAN_MAX_SOCKETS, the BPF `socks` map size. */
  maxSockets?: number;
  /** A socket with no record for this long is evicted. Default 300 s. */
  idleTimeoutNs?: bigint;
  /** How long a built tcp.send waits for late retransmits at most. Default 1 s. */
  lingerNs?: bigint;
  /** Retransmit/reset events held per socket while their span is not built yet. Default 256. */
  maxPendingEvents?: number;
  /**
   * Current CLOCK_MONOTONIC time in ns. Default: process.hrtime.bigint() (the same
   * clock as bpf_ktime_get_ns). 'records': the latest record time (replay).
   */
  clock?: (() => bigint) | 'records';
  /** Ids of a tcp.exchange root (rule E1). Default: random, sampled. */
  exchangeIds?: () => TraceContext;
}

export interface CorrelatorCounters {
  records: number;
  recordsByType: Record<RecordType, number>;
  /** Spans handed to `emit` (orphan roots included). */
  spans: number;
  /** Spans with no context (emitted only with `orphans`). */
  orphanSpans: number;
  /** tcp.exchange roots emitted (with `orphans`), counted in `spans` too. */
  exchanges: number;
  /** Spans dropped because their parent was not sampled. */
  unsampledSpans: number;
  /** Accepts dropped because their connection's first exchange stayed in the kernel (rule D1). */
  acceptsOfDroppedExchanges: number;
  /** Spans ended by the agent (eviction, process exit, shutdown, flushed aggregates). */
  incompleteSpans: number;
  evictedLru: number;
  evictedIdle: number;
  processExits: number;
  /** Retransmit/reset events that got a standalone span (their span was gone). */
  lateEvents: number;
  /** Events dropped over the per-socket bound. */
  eventsDropped: number;
  /** close records for sockets with no state (evicted before, or opened before kspan). */
  closeUnknown: number;
}

interface PendingRequest {
  startNs: bigint;
  endNs: bigint;
  bytes: number;
  calls: number;
  tid: number;
  pid: number;
  fallback: boolean;
  flushed: boolean;
  /** Latest context the request was read in that is not the previous response's. */
  ownCtx: TraceContext | null;
}

interface PendingAccept {
  startNs: bigint;
  endNs: bigint;
  queueNs: bigint | null;
  tid: number;
  pid: number;
  ctx: TraceContext | null;
}

/**
 * A held send in the deadline queue. Once done it lets go of its span and socket
 * (both null: that is what done means): a done entry stays queued until the
 * entries before it are done or due (up to `lingerNs` behind an idle
 * connection's last send), and would otherwise keep every span it held alive
 * into the old generation.
 */
interface Lingering {
  state: SocketState | null;
  span: KernelSpan | null;
  /** The span's context: later retransmits in it are its events. */
  ctx: TraceContext | null;
  deadline: bigint;
}

/** A request/response exchange whose spans have no context (rules E1-E3). */
interface Exchange {
  state: SocketState;
  /** The root's ids: its spans' parent. */
  ctx: TraceContext;
  startNs: bigint;
  endNs: bigint;
  pid: number;
  tid: number;
  /** Spans under it that are not finished yet. */
  open: number;
  /** Its response has begun: the next request is another exchange's. */
  responded: boolean;
  incomplete: IncompleteReason | null;
  done: boolean;
}

interface PendingEvents {
  ctx: TraceContext | null;
  events: KernelSpanEvent[];
}

class SocketState {
  cookie: bigint;
  pid = 0;
  role: 'server' | 'client' = 'server';
  roleKnown = false;
  family: 4 | 6 = 4;
  local: Endpoint = { address: '', port: 0 };
  peer: Endpoint = { address: '', port: 0 };
  lastSeenNs = 0n;
  /** The correlator's idle-check period in which the socket was last moved to the end of the recency order. */
  epoch = -1;
  pendingAccept: PendingAccept | null = null;
  pendingRequest: PendingRequest | null = null;
  /** Server: the context of the last response on this socket (stale for reads). */
  answered: TraceContext | null = null;
  /** Client: the last send, for the next recv's parent and start. */
  lastSend: { ctx: TraceContext | null; endNs: bigint; used: boolean } | null = null;
  lingering: Lingering | null = null;
  pendingEvents: Map<string, PendingEvents> | null = null;
  pendingEventCount = 0;
  /** Events seen in SYN_SENT: they belong to the coming tcp.connect. */
  synEvents: KernelSpanEvent[] | null = null;
  synCtx: TraceContext | null = null;
  srttUs: number | null = null;
  /** With `orphans`: the exchange the socket's next context-less span joins. */
  exchange: Exchange | null = null;

  constructor(cookie: bigint) {
    this.cookie = cookie;
  }
}

/** A context as a Map key (pending events): its ids, or '' for none. */
export function contextKey(ctx: TraceContext | null): string {
  return ctx ? ctx.traceId + ctx.spanId : '';
}

/** contextKey(a) === contextKey(b), without making either key (the flags do not count). */
export function sameContext(a: TraceContext | null, b: TraceContext | null): boolean {
  if (a === b) return true;
  return a !== null && b !== null && a.spanId === b.spanId && a.traceId === b.traceId;
}

export class SocketCorrelator {
  readonly counters: CorrelatorCounters = {
    records: 0,
    recordsByType: { accept: 0, connect: 0, send: 0, recv: 0, retransmit: 0, reset: 0, close: 0 },
    spans: 0,
    orphanSpans: 0,
    exchanges: 0,
    unsampledSpans: 0,
    acceptsOfDroppedExchanges: 0,
    incompleteSpans: 0,
    evictedLru: 0,
    evictedIdle: 0,
    processExits: 0,
    lateEvents: 0,
    eventsDropped: 0,
    closeUnknown: 0,
  };

  readonly #emit: (span: KernelSpan) => void;
  readonly #orphans: boolean;
  readonly #maxSockets: number;
  readonly #idleNs: bigint;
  readonly #lingerNs: bigint;
  readonly #maxPendingEvents: number;
  readonly #clock: (() => bigint) | null;
  readonly #exchangeIds: () => TraceContext;
  /** The exchange each context-less span belongs to, until it is finished. */
  readonly #exchangeOf = new WeakMap<KernelSpan, Exchange>();
  readonly #orphansByPid = new Map<number, number>();
  /**
   * Insertion order = recency order, to the idle check's period: a socket is
   * moved to the end when first touched after an idle check (see #touch).
   */
  readonly #sockets = new Map<bigint, SocketState>();
  /** Idle checks so far: a socket touched since the last one is not moved again. */
  #epoch = 0;
  /** Lingering sends in deadline order (deadlines come from a monotonic clock). */
  #lingerQueue: Lingering[] = [];
  #lingerHead = 0;
  #recordsNowNs = 0n;
  #nextIdleCheckNs = 0n;

  constructor(options: SocketCorrelatorOptions) {
    this.#emit = options.emit;
    this.#orphans = options.orphans ?? false;
    this.#maxSockets = options.maxSockets ?? KspanLimit.KSPAN_MAX_SOCKETS;
    this.#idleNs = options.idleTimeoutNs ?? 300_000_000_000n;
    this.#lingerNs = options.lingerNs ?? 1_000_000_000n;
    this.#maxPendingEvents = options.maxPendingEvents ?? 256;
    const clock = options.clock ?? (() => process.hrtime.bigint());
    this.#clock = clock === 'records' ? null : clock;
    if (options.exchangeIds) {
      this.#exchangeIds = options.exchangeIds;
    } else {
      const ids = new IdSource();
      this.#exchangeIds = () => ({ traceId: ids.hex(16), spanId: ids.hex(8), traceFlags: 1 });
    }
  }

  /** Spans with no context per target pid (what `counters.orphanSpans` adds up). */
  get orphanSpansByPid(): ReadonlyMap<number, number> {
    return this.#orphansByPid;
  }

  /** Sockets with state right now. */
  get socketCount(): number {
    return this.#sockets.size;
  }

  /** The correlator's current time (the clock, or the latest record in 'records' mode). */
  now(): bigint {
    return this.#clock ? this.#clock() : this.#recordsNowNs;
  }

  push(r: KernelRecord): void {
    const c = this.counters;
    c.records++;
    c.recordsByType[r.type]++;
    if (r.tsNs > this.#recordsNowNs) this.#recordsNowNs = r.tsNs;
    const now = this.now();

    if (r.type === 'close') {
      const st = this.#sockets.get(r.cookie);
      if (st) this.#close(st, r);
      else c.closeUnknown++;
    } else {
      const st = this.#touch(r, now);
      switch (r.type) {
        case 'accept': this.#onAccept(st, r); break;
        case 'connect': this.#onConnect(st, r); break;
        case 'send': this.#onSend(st, r, now); break;
        case 'recv': this.#onRecv(st, r); break;
        case 'retransmit': this.#onEvent(st, r, retransmitEvent(r)); break;
        case 'reset': this.#onEvent(st, r, resetEvent(r)); break;
      }
    }
    // Holds end at the record stream's own time: a late retransmit read behind
    // other records of the same drain, stamped before its hold's end, still finds
    // the held span. tick() ends holds at the clock's time (live: after the rings
    // were drained).
    this.#expire(now, r.tsNs < now ? r.tsNs : now);
  }

  /** Ends lingering spans and idle sockets; call it on a timer when records are sparse. */
  tick(now: bigint = this.now()): void {
    this.#nextIdleCheckNs = 0n;
    this.#expire(now);
  }

  /** The target process exited: end the open spans of its sockets, marked incomplete. */
  processExited(pid: number): void {
    this.counters.processExits++;
    for (const st of this.#sockets.values()) {
      if (st.pid === pid) this.#evict(st, 'process_exit');
    }
  }

  /** End everything (agent shutdown): open spans are marked incomplete. */
  flush(reason: IncompleteReason = 'shutdown'): void {
    for (const st of this.#sockets.values()) this.#evict(st, reason);
    this.#drainLinger(null);
  }

  // ---- per record type ----

  #onAccept(st: SocketState, r: KernelRecord): void {
    st.role = 'server';
    st.roleKnown = true;
    if (st.pendingAccept || st.pendingRequest) this.#resolveRequest(st, null, null, true);
    const handshake = r.startNs > 0n && r.startNs <= r.tsNs;
    st.pendingAccept = {
      startNs: handshake ? r.startNs : r.tsNs,
      endNs: r.tsNs,
      queueNs: handshake ? r.tsNs - r.startNs : null,
      tid: r.tid,
      pid: r.pid,
      ctx: r.context,
    };
  }

  #onConnect(st: SocketState, r: KernelRecord): void {
    st.role = 'client';
    st.roleKnown = true;
    const start = r.startNs > 0n && r.startNs <= r.tsNs ? r.startNs : r.tsNs;
    const span = this.#span(st, 'tcp.connect', r.context, start, r.tsNs, r.tid, r.pid);
    const reason = connectErrorName(r.errno);
    if (reason) {
      span.error = `connect failed: ${reason}`;
      span.errorType = reason;
    }
    if (st.synEvents) {
      for (const ev of st.synEvents) addEvent(span, ev);
      st.pendingEventCount -= st.synEvents.length;
      st.synEvents = null;
      st.synCtx = null;
    }
    this.#attachPending(st, r.context, span, false);
    this.#finish(span);
  }

  /** Rule D1: the accept's exchange stayed in the kernel. */
  #dropAcceptOfDropped(st: SocketState, r: KernelRecord): void {
    if (!r.afterDropped || !st.pendingAccept) return;
    st.pendingAccept = null;
    this.counters.acceptsOfDroppedExchanges++;
  }

  #onSend(st: SocketState, r: KernelRecord, now: bigint): void {
    this.#dropAcceptOfDropped(st, r);
    if (st.role === 'server') {
      if (st.pendingRequest || st.pendingAccept) this.#resolveRequest(st, r.context, null, false);
      if (r.context) st.answered = r.context;
    }
    // Built before the held send ends: a send that continues it joins its exchange (E3).
    const span = this.#span(st, 'tcp.send', r.context, r.startNs, r.tsNs, r.tid, r.pid);
    this.#endLinger(st);
    span.bytes = r.bytes;
    span.calls = r.calls;
    span.fallback = r.fallback;
    if (r.flushed) span.incomplete = 'flushed';
    this.#attachPending(st, r.context, span, true);
    if (st.role === 'client') st.lastSend = { ctx: r.context, endNs: r.tsNs, used: false };
    if (this.#lingerNs <= 0n || r.flushed || r.sentAcked) {
      this.#finish(span);
      return;
    }
    const lg: Lingering = { state: st, span, ctx: r.context, deadline: now + this.#lingerNs };
    st.lingering = lg;
    this.#lingerQueue.push(lg);
  }

  #onRecv(st: SocketState, r: KernelRecord): void {
    this.#dropAcceptOfDropped(st, r);
    // A recv record means the socket has turned to writing again (or is closing):
    // the previous send's data is acknowledged (rule R1).
    this.#endLinger(st);
    if (st.role === 'server') {
      let p = st.pendingRequest;
      if (!p) {
        p = st.pendingRequest = {
          startNs: r.startNs,
          endNs: r.tsNs,
          bytes: 0,
          calls: 0,
          tid: r.tid,
          pid: r.pid,
          fallback: false,
          flushed: false,
          ownCtx: null,
        };
      }
      if (r.startNs < p.startNs) p.startNs = r.startNs;
      if (r.tsNs > p.endNs) p.endNs = r.tsNs;
      p.bytes += r.bytes;
      p.calls += r.calls;
      p.fallback ||= r.fallback;
      p.flushed ||= r.flushed;
      if (r.context && !sameContext(r.context, st.answered)) p.ownCtx = r.context;
      return;
    }
    const ls = st.lastSend;
    const parent = r.context ?? ls?.ctx ?? null;
    let start = r.startNs;
    let wait: bigint | null = null;
    if (ls && !ls.used && sameContext(ls.ctx, parent) && ls.endNs <= r.startNs) {
      wait = r.startNs - ls.endNs;
      start = ls.endNs;
      ls.used = true;
    }
    const span = this.#span(st, 'tcp.recv', parent, start, r.tsNs, r.tid, r.pid);
    span.bytes = r.bytes;
    span.calls = r.calls;
    span.waitNs = wait;
    span.fallback = r.fallback;
    if (r.flushed) span.incomplete = 'flushed';
    this.#attachPending(st, parent, span, false);
    this.#finish(span);
  }

  #onEvent(st: SocketState, r: KernelRecord, ev: KernelSpanEvent): void {
    if (r.tcpState === TCP_SYN_SENT) {
      if (!this.#reserveEvent(st)) return;
      (st.synEvents ??= []).push(ev);
      st.synCtx ??= r.context;
      return;
    }
    const lg = st.lingering;
    if (lg && sameContext(lg.ctx, r.context)) {
      addEvent(lg.span!, ev);
      return;
    }
    if (!this.#reserveEvent(st)) return;
    const key = contextKey(r.context);
    st.pendingEvents ??= new Map();
    let pe = st.pendingEvents.get(key);
    if (!pe) st.pendingEvents.set(key, (pe = { ctx: r.context, events: [] }));
    pe.events.push(ev);
  }

  #close(st: SocketState, r: KernelRecord): void {
    this.#dropAcceptOfDropped(st, r);
    if (r.srttUs > 0) st.srttUs = r.srttUs;
    this.#sockets.delete(st.cookie);
    this.#endSocket(st, null);
  }

  // ---- building and handing out spans ----

  /**
   * Closes the server's pending request (rules S2–S4): under `responder` when the
   * response has a context, else under the request's own context.
   */
  #resolveRequest(
    st: SocketState,
    responder: TraceContext | null,
    incomplete: IncompleteReason | null,
    attachEvents: boolean,
  ): void {
    const p = st.pendingRequest;
    const a = st.pendingAccept;
    st.pendingRequest = null;
    st.pendingAccept = null;
    const parent = responder ?? p?.ownCtx ?? a?.ctx ?? null;
    if (a) {
      const span = this.#span(st, 'tcp.accept', parent, a.startNs, a.endNs, a.tid, a.pid);
      span.acceptQueueNs = a.queueNs;
      if (incomplete && !p) span.incomplete = incomplete;
      if (attachEvents && !p) this.#attachPending(st, parent, span, false);
      this.#finish(span);
    }
    if (p) {
      const span = this.#span(st, 'tcp.recv', parent, p.startNs, p.endNs, p.tid, p.pid);
      span.bytes = p.bytes;
      span.calls = p.calls;
      span.fallback = p.fallback;
      span.incomplete = incomplete ?? (p.flushed ? 'flushed' : null);
      if (attachEvents) this.#attachPending(st, parent, span, false);
      this.#finish(span);
    }
  }

  /** Moves the events waiting for `ctx` onto `span` (retransmits only onto a send). */
  #attachPending(st: SocketState, ctx: TraceContext | null, span: KernelSpan, takeRetransmits: boolean): void {
    if (!st.pendingEvents) return;
    const key = contextKey(ctx);
    const pe = st.pendingEvents.get(key);
    if (!pe) return;
    const keep: KernelSpanEvent[] = [];
    for (const ev of pe.events) {
      if (ev.name === 'tcp.retransmit' && !takeRetransmits) keep.push(ev);
      else addEvent(span, ev);
    }
    st.pendingEventCount -= pe.events.length - keep.length;
    if (keep.length) pe.events = keep;
    else if (st.pendingEvents.delete(key) && st.pendingEvents.size === 0) st.pendingEvents = null;
  }

  #reserveEvent(st: SocketState): boolean {
    if (st.pendingEventCount >= this.#maxPendingEvents) {
      this.counters.eventsDropped++;
      return false;
    }
    st.pendingEventCount++;
    return true;
  }

  #span(
    st: SocketState,
    name: KernelSpanName,
    parent: TraceContext | null,
    startNs: bigint,
    endNs: bigint,
    tid: number,
    pid: number,
  ): KernelSpan {
    const span = newKernelSpan({
      name,
      parent,
      startNs,
      endNs: endNs < startNs ? startNs : endNs,
      cookie: st.cookie,
      pid: pid || st.pid,
      tid,
      family: st.family,
      local: st.local,
      peer: st.peer,
      role: st.role,
      srttUs: st.srttUs,
    });
    if (parent === null && this.#orphans && name !== 'tcp.exchange') this.#joinExchange(st, span);
    return span;
  }

  /** Puts a context-less span under the socket's exchange (rules E1, E2). */
  #joinExchange(st: SocketState, span: KernelSpan): void {
    const phase = exchangePhase(st.role, span.name);
    let ex = st.exchange;
    // A responded exchange is left to end when its spans are finished.
    if (ex && (ex.done || (ex.responded && phase === 'request'))) ex = st.exchange = null;
    if (!ex) {
      ex = st.exchange = {
        state: st,
        ctx: this.#exchangeIds(),
        startNs: span.startNs,
        endNs: span.endNs,
        pid: span.pid,
        tid: span.tid,
        open: 0,
        responded: false,
        incomplete: null,
        done: false,
      };
    }
    if (phase === 'response') ex.responded = true;
    ex.open++;
    if (span.startNs < ex.startNs) ex.startNs = span.startNs;
    if (span.endNs > ex.endNs) ex.endNs = span.endNs;
    if (!ex.tid) ex.tid = span.tid;
    span.parent = ex.ctx;
    span.localParent = true;
    this.#exchangeOf.set(span, ex);
  }

  /** Emits an exchange's root (rule E3). */
  #endExchange(ex: Exchange): void {
    ex.done = true;
    const st = ex.state;
    if (st.exchange === ex) st.exchange = null;
    const root = this.#span(st, 'tcp.exchange', null, ex.startNs, ex.endNs, ex.tid, ex.pid);
    root.self = ex.ctx;
    root.incomplete = ex.incomplete;
    if (root.incomplete) this.counters.incompleteSpans++;
    this.counters.exchanges++;
    this.counters.spans++;
    this.#emit(root);
  }

  /** Hands a finished span out, or counts why not (orphan, unsampled). */
  #finish(span: KernelSpan): void {
    const c = this.counters;
    if (span.events.length > 1) span.events.sort((x, y) => (x.tsNs < y.tsNs ? -1 : x.tsNs > y.tsNs ? 1 : 0));
    const ex = this.#exchangeOf.get(span);
    if (span.parent === null || ex) {
      c.orphanSpans++;
      this.#orphansByPid.set(span.pid, (this.#orphansByPid.get(span.pid) ?? 0) + 1);
      if (!this.#orphans) return;
    } else if ((span.parent.traceFlags & 1) === 0) {
      c.unsampledSpans++;
      return;
    }
    if (span.incomplete) c.incompleteSpans++;
    c.spans++;
    this.#emit(span);
    if (!ex) return;
    this.#exchangeOf.delete(span);
    ex.open--;
    ex.incomplete ??= span.incomplete;
    if (ex.open === 0 && ex.responded) this.#endExchange(ex);
  }

  // ---- socket state, lingering, eviction ----

  #touch(r: KernelRecord, now: bigint): SocketState {
    let st = this.#sockets.get(r.cookie);
    if (st) {
      // Moved once per idle-check period, not on every record: the order is then
      // recency to within that period (idle checks run at most 1 s apart while
      // records come), which is all eviction and the idle check need, and the Map
      // is not made to delete and insert on every record.
      if (st.epoch !== this.#epoch) {
        this.#sockets.delete(r.cookie);
        this.#sockets.set(r.cookie, st);
      }
    } else {
      if (this.#sockets.size >= this.#maxSockets) {
        const oldest = this.#sockets.values().next().value!;
        this.counters.evictedLru++;
        this.#evict(oldest, 'evicted');
      }
      st = new SocketState(r.cookie);
      this.#sockets.set(r.cookie, st);
    }
    st.epoch = this.#epoch;
    st.lastSeenNs = now;
    if (r.pid) st.pid = r.pid;
    if (r.local.port || r.peer.port) {
      st.family = r.family;
      if (st.local.port !== r.local.port || st.local.address !== r.local.address) st.local = r.local;
      if (st.peer.port !== r.peer.port || st.peer.address !== r.peer.address) st.peer = r.peer;
    }
    if (r.role) {
      if (!st.roleKnown || st.role !== r.role) st.role = r.role;
      st.roleKnown = true;
    } else if (!st.roleKnown) {
      // Opened before kspan saw accept/connect: take the lower port as the server's.
      st.role = r.local.port && r.peer.port && r.local.port > r.peer.port ? 'client' : 'server';
    }
    return st;
  }

  #evict(st: SocketState, reason: IncompleteReason): void {
    this.#sockets.delete(st.cookie);
    this.#endSocket(st, reason);
  }

  /** Ends everything a socket holds; `incomplete` marks spans the kernel had not ended. */
  #endSocket(st: SocketState, incomplete: IncompleteReason | null): void {
    if (st.pendingRequest || st.pendingAccept) this.#resolveRequest(st, null, incomplete, true);
    this.#endLinger(st);
    if (st.synEvents) {
      st.pendingEvents ??= new Map();
      const key = contextKey(st.synCtx);
      const pe = st.pendingEvents.get(key);
      if (pe) pe.events.push(...st.synEvents);
      else st.pendingEvents.set(key, { ctx: st.synCtx, events: st.synEvents });
      st.synEvents = null;
    }
    if (st.pendingEvents) {
      for (const pe of st.pendingEvents.values()) {
        if (!pe.events.length) continue;
        const first = pe.events.reduce((m, e) => (e.tsNs < m ? e.tsNs : m), pe.events[0].tsNs);
        const last = pe.events.reduce((m, e) => (e.tsNs > m ? e.tsNs : m), pe.events[0].tsNs);
        const name = pe.events.some((e) => e.name === 'tcp.reset') ? 'tcp.reset' : 'tcp.retransmit';
        const span = this.#span(st, name, pe.ctx, first, last, 0, st.pid);
        for (const ev of pe.events) addEvent(span, ev);
        this.counters.lateEvents += pe.events.length;
        this.#finish(span);
      }
      st.pendingEvents = null;
      st.pendingEventCount = 0;
    }
    if (st.exchange && !st.exchange.done && st.exchange.open === 0) this.#endExchange(st.exchange);
  }

  #endLinger(st: SocketState): void {
    const lg = st.lingering;
    if (!lg) return;
    st.lingering = null;
    const span = lg.span!;
    lg.span = null;
    lg.state = null;
    if (span.srttUs === null) span.srttUs = st.srttUs;
    this.#finish(span);
  }

  /** Ends the holds due by `lingerNow` (default `now`) and, once a second, the sockets idle at `now`. */
  #expire(now: bigint, lingerNow = now): void {
    this.#drainLinger(lingerNow);
    if (now < this.#nextIdleCheckNs) return;
    // Idle sockets sit at the front of the recency order. Within one period the
    // order is that of first touch, so a socket idle for long enough can sit
    // behind one touched later in its period: it goes at the next check.
    for (const st of this.#sockets.values()) {
      if (st.lastSeenNs + this.#idleNs > now) break;
      this.counters.evictedIdle++;
      this.#evict(st, 'idle');
    }
    this.#epoch++;
    this.#nextIdleCheckNs = now + 1_000_000_000n;
  }

  #drainLinger(now: bigint | null): void {
    const q = this.#lingerQueue;
    while (this.#lingerHead < q.length) {
      const lg = q[this.#lingerHead];
      if (now !== null && lg.deadline > now && lg.state) break;
      this.#lingerHead++;
      if (lg.state) this.#endLinger(lg.state);
    }
    if (this.#lingerHead > 1024 && this.#lingerHead * 2 > q.length) {
      this.#lingerQueue = q.slice(this.#lingerHead);
      this.#lingerHead = 0;
    }
  }
}

/** Where a span falls in its socket's request/response exchange (rule E2). */
function exchangePhase(role: 'server' | 'client', name: KernelSpanName): 'request' | 'response' | 'other' {
  switch (name) {
    case 'tcp.accept':
    case 'tcp.connect':
      return 'request';
    case 'tcp.recv':
      return role === 'server' ? 'request' : 'response';
    case 'tcp.send':
      return role === 'server' ? 'response' : 'request';
    default:
      return 'other';
  }
}

function retransmitEvent(r: KernelRecord): KernelSpanEvent {
  return { name: 'tcp.retransmit', tsNs: r.tsNs, tcpState: r.tcpState, resetSent: false, errno: r.errno };
}

function resetEvent(r: KernelRecord): KernelSpanEvent {
  return { name: 'tcp.reset', tsNs: r.tsNs, tcpState: r.tcpState, resetSent: r.resetSent, errno: 0 };
}

function addEvent(span: KernelSpan, ev: KernelSpanEvent): void {
  span.events.push(ev);
  if (ev.name === 'tcp.retransmit') {
    span.retransmits++;
  } else if (!span.error) {
    span.error = ev.resetSent ? 'connection reset (sent)' : 'connection reset by peer';
    span.errorType = 'reset';
  }
}
