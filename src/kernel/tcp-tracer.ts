/**
 * The kernel side of kspan as one object: loads bpf/.output/kspan.bpf.o with the
 * programs this kernel supports, attaches them, keeps the traced-PID map, reads
 * the ring buffer into KernelRecords, and on stop flushes every open send/recv
 * aggregate left in the kernel so no byte is missing.
 */
import { fileURLToPath } from 'node:url';
import { faultRejectedPrograms, testRingBytes, TUNING } from '../core/config.ts';
import { KspanError, VerifierError, verifierLogLastLine } from '../core/errors.ts';
import { timed } from '../core/startup-timing.ts';
import {
  decodeKspanFlushArgs,
  encodeKspanTarget,
  KSPAN_TARGET_SIZE,
  KspanTlsKind,
  type KspanTlsLoc,
  decodeKspanSock,
  encodeKspanFlushArgs,
  KSPAN_FLUSH_ARGS_SIZE,
  KspanCounter,
  KspanEventFlag,
  KspanLimit,
  KspanTargetFlag,
  KSPAN_EVENT_SIZE,
  type KspanAgg,
  type KspanEvent,
  type KspanSock,
  type KspanSockAgg,
  KSPAN_SPAN_ATTRS_SIZE,
  decodeKspanSpanAttrs,
} from '../records/abi.generated.ts';
import { BpfObject } from './bpf-object.ts';
import { chooseIoPath, hasBpfMemAlloc, type IoPath, kernelHooks } from './kernel-features.ts';
import { essentialLossError, hasOtherVariant, planPrograms, programSpec, PROGRAMS, type Feature, type FeatureOff, type KernelHooks, type ProgramPlan, type Refusal } from './programs.ts';
import type { CallKind } from '../uprobes/uprobe-spec.ts';
import { libbpf } from './native.ts';
import { RingBufferReader } from './ring-buffer.ts';
import { pidKey, u32Key, u64Value } from './map-keys.ts';
import { decodeRecords, fromEvent } from '../records/decoder.ts';
import type { KernelRecord } from '../records/kernel-record.ts';
import { OFF_CPU_EVENT_NS, type SchedRingRecord } from '../records/sched-record.ts';
import { SchedRing } from './sched-ring.ts';

const NO_LOCATION: KspanTlsLoc = { offset: 0n, module: 0n, kind: KspanTlsKind.KSPAN_TLS_NONE, scheme: 0, dtv_layout: 0 };

/** What every target's `targets` entry says besides where its span lives. */
export interface TargetPolicy {
  /** Records of unsampled contexts leave the kernel too (default: they stay, counted in KSPAN_C_UNSAMPLED). */
  keepUnsampled?: boolean;
  /** Of connections with no context, the fraction whose records leave the kernel, decided per connection
   * from its cookie (default 1: all; the rest are counted in KSPAN_C_ORPHAN_SKIPPED). */
  orphanRatio?: number;
}

/** A target selected in both selection slots (bpf/discovery.bpf.h): whatever the policy in force. */
export const SEL_BOTH = 3;

function targetValue(loc: KspanTlsLoc, policy: TargetPolicy, sel = SEL_BOTH): Buffer {
  const buf = Buffer.alloc(KSPAN_TARGET_SIZE);
  const ratio = policy.orphanRatio ?? 1;
  const orphanKeep = ratio >= 1 ? 0xffffffff : Math.max(0, Math.floor(ratio * 2 ** 32));
  const flags = policy.keepUnsampled ? KspanTargetFlag.KSPAN_T_KEEP_UNSAMPLED : 0;
  encodeKspanTarget({ loc, orphan_keep: orphanKeep, flags, sel }, new DataView(buf.buffer, buf.byteOffset, buf.length), 0);
  return buf;
}

/**
 * When the idle flush runs for a given idle time: every `tickMs` (half the idle
 * time, within TUNING's bounds), and `guardNs`, how far past one run's cutoff
 * the next run's may go (bpf/kspan.bpf.c, flush_cutoff()): a fifth more than a
 * tick, so a run a little late does not lag. A hook claims a socket quiet for
 * longer than about the idle time less that guard; the guard is kept below the
 * idle time so that sockets in use need no claim.
 */
export function idleFlushTiming(idleNs: bigint): { tickMs: number; guardNs: bigint } {
  const idleMs = Number(idleNs / 1_000_000n);
  const tickMs = Math.min(TUNING.idleFlushTickMs, Math.max(TUNING.idleFlushTickMinMs, Math.floor(idleMs / 2)));
  return { tickMs, guardNs: BigInt(tickMs) * 1_200_000n };
}

/** pruneIdleQueue() does nothing this soon after a flushIdle(). */
const PRUNE_AFTER_FLUSH_MS = 1000;

export const DEFAULT_OBJECT = fileURLToPath(new URL('../../bpf/.output/kspan.bpf.o', import.meta.url));

/** Test-only fault injection (faultRejectedPrograms): these load as socket filters, which the verifier rejects with a real log. */
const BPF_PROG_TYPE_SOCKET_FILTER = 1;

export interface TcpTracerOptions {
  objectPath?: string;
  /** Force an I/O path (tests, old kernels); default: what the kernel has. */
  ioPath?: IoPath;
  /** Ring buffer size in bytes (power of two, ≥ page size); default KSPAN_RING_BYTES. */
  ringBytes?: number;
  /** Sockets whose state the kernel keeps at once (default KSPAN_MAX_SOCKETS); beyond, records are lost and counted. */
  maxSockets?: number;
  /**
   * How the kernel holds the socket table: 'on-use' (an element allocated per
   * traced socket, freed when it closes) or 'preallocated' (every slot at load).
   * Default: 'on-use' where the kernel has the BPF memory allocator (6.1+), else
   * 'preallocated'.
   */
  socketTable?: SocketTableAllocation;
  /** The kernel's hooks (tests: prototypes of another kernel); default: probed. */
  hooks?: KernelHooks;
  /** Sampling and orphan choices for every target. */
  policy?: TargetPolicy;
  /** Told once per optional feature the kernel could not give (switched off; kspan runs on). */
  onFeatureOff?: (off: FeatureOff) => void;
  onRecord: (r: KernelRecord) => void;
  /** Scheduler records (bpf/sched.bpf.h); without it, or with noSched, the scheduler programs are not loaded. */
  onSchedRecord?: (r: SchedRingRecord) => void;
  /** Shortest off-CPU interval that makes an OffCpuRecord (default OFF_CPU_EVENT_NS; 0: none). */
  offCpuEventNs?: bigint;
  /** Leave the scheduler programs out (`--no-sched`). */
  noSched?: boolean;
  /**
   * The kinds of function spans asked for (src/uprobes/): the uprobe programs of
   * kinds not asked for are not loaded, and none when the list is empty (they are
   * a third of the verifier's work at start). Undefined: all of them load.
   */
  uprobeKinds?: readonly CallKind[];
  /** A record the decoder refused (counted, never silent). */
  onDecodeError?: (err: unknown) => void;
  /** The ring reader's own failures (a failed epoll_wait, a throwing handler): counted, then told here. */
  onRingError?: (err: unknown) => void;
}

export type SocketTableAllocation = 'on-use' | 'preallocated';

/** BPF_F_NO_PREALLOC (uapi/linux/bpf.h). */
const BPF_F_NO_PREALLOC = 1;

/**
 * The socket table's allocation: asked for, else on use where hash map elements
 * come from the BPF memory allocator (safe in tracing programs), else preallocated.
 */
export function socketTableAllocation(asked: SocketTableAllocation | undefined, memAlloc: () => boolean): SocketTableAllocation {
  return asked ?? (memAlloc() ? 'on-use' : 'preallocated');
}

export type TracerCounters = Record<keyof typeof KspanCounter, number> & {
  decode_errors: number;
  /** Ring reader: records whose handler threw, and failed epoll waits (retried). */
  ring_handler_errors: number;
  ring_wait_errors: number;
  /**
   * Runs the kernel skipped, by program (only those with some): the hook fired
   * while the same program was already running on that CPU (a softirq
   * interrupting it), so whatever that run would have recorded is lost.
   */
  skipped_runs: Record<string, number>;
};

export class TcpTracer {
  readonly ioPath: IoPath;
  /** How the kernel holds the socket table. */
  readonly socketTable: SocketTableAllocation;
  /** Which programs loaded, and why each other one did not; `plan.off` lists the losses. */
  readonly plan: ProgramPlan;
  readonly #obj: BpfObject;
  readonly #ring: RingBufferReader;
  readonly #pids = new Set<number>();
  #policy: TargetPolicy;
  /** Per target: its selection slots and the location last given (for rewriting its entry). */
  readonly #entries = new Map<number, { sel: number; loc: KspanTlsLoc }>();
  #decodeErrors = 0;
  #stopped = false;
  /** The idle-flush variant that loaded, if any. */
  readonly #flushProgram: string | undefined;
  /** The socket table's size: one flush takes as many runs as it needs to look at every slot. */
  readonly #maxSockets: number;
  #finalCounters: TracerCounters | undefined;
  /** The scheduler programs' ring, when they loaded. */
  readonly #sched: SchedRing | undefined;
  readonly #onSchedRecord: ((r: SchedRingRecord) => void) | undefined;
  /** When flushIdle() last ran (performance.now()). */
  #flushedAt = -Infinity;

  private constructor(obj: BpfObject, plan: ProgramPlan, opts: TcpTracerOptions, socketTable: SocketTableAllocation) {
    this.#obj = obj;
    this.socketTable = socketTable;
    this.ioPath = plan.ioPath;
    this.plan = plan;
    this.#policy = opts.policy ?? {};
    this.#flushProgram = ['flush_idle', 'flush_idle_walk'].find((n) => plan.load(n));
    this.#maxSockets = opts.maxSockets ?? KspanLimit.KSPAN_MAX_SOCKETS;
    const ring = obj.map('events');
    const onRecord = opts.onRecord;
    this.#ring = new RingBufferReader(ring.fd, opts.ringBytes ?? KspanLimit.KSPAN_RING_BYTES, (view, off, len) => {
      if (len < KSPAN_EVENT_SIZE) {
        this.#decodeErrors++;
        opts.onDecodeError?.(new Error(`short record: ${len} bytes`));
        return;
      }
      try {
        decodeRecords(view, off, onRecord);
      } catch (err) {
        this.#decodeErrors++;
        opts.onDecodeError?.(err);
      }
    }, { onError: opts.onRingError });
    this.#onSchedRecord = opts.onSchedRecord;
    if (plan.load('on_sched_switch') && opts.onSchedRecord) {
      this.#sched = new SchedRing(obj, {
        onRecord: opts.onSchedRecord,
        onDecodeError: (err) => {
          this.#decodeErrors++;
          opts.onDecodeError?.(err);
        },
        onRingError: opts.onRingError,
      });
    }
  }

  /**
   * Loads and attaches what this kernel can run. The plan (src/kernel/programs.ts)
   * picks each hook's variant from the kernel's tracepoint prototypes. When the
   * kernel still refuses a program of an optional feature, that feature is
   * switched off (onFeatureOff) and the load starts again without it; a refused
   * essential program gives way to its hook's next variant, or, with none left,
   * stops kspan with the verifier's log. A load interrupted
   * by a signal is retried. Each attempt uses a new object.
   */
  static open(opts: TcpTracerOptions): TcpTracer {
    const ringBytes = opts.ringBytes ?? testRingBytes();
    if (ringBytes !== undefined) opts = { ...opts, ringBytes };
    const hooks = opts.hooks ?? timed('kernel_hooks', () => kernelHooks());
    const ioPath = chooseIoPath(opts.ioPath, hooks);
    const rejected = new Map<string, Refusal>();
    const faulty = faultRejectedPrograms();
    const disabled = new Set<string>(opts.noSched || !opts.onSchedRecord ? ['sched'] : []);
    for (const f of unaskedUprobeFeatures(opts.uprobeKinds)) disabled.add(f);
    for (let interrupted = 0; ;) {
      const plan = timed('plan', () => planPrograms(hooks, ioPath, rejected, PROGRAMS, disabled));
      const essential = plan.off.find((f) => f.grade === 'essential');
      if (essential) throw essentialLossError(essential, ioPath, opts.ioPath !== undefined);
      try {
        const tracer = TcpTracer.#openOnce(opts, plan, faulty);
        for (const off of plan.off) opts.onFeatureOff?.(off);
        return tracer;
      } catch (err) {
        if (err instanceof KspanError && err.code === 'KSPAN_ERR_BPF_INTERRUPTED' && ++interrupted < 5) continue;
        const refusal = programRefusal(err);
        // An optional program is switched off; an essential one gives way to its hook's next variant, if it has one.
        const retry = refusal && !rejected.has(refusal.program) && (programSpec(refusal.program)?.grade === 'optional' || hasOtherVariant(refusal.program));
        if (!retry) {
          throw floorError(err) ?? err;
        }
        const { program, ...why } = refusal;
        rejected.set(program, why);
      }
    }
  }

  static #openOnce(opts: TcpTracerOptions, plan: ProgramPlan, faulty: ReadonlySet<string>): TcpTracer {
    const obj = timed('object_open', () => BpfObject.open(opts.objectPath ?? DEFAULT_OBJECT));
    try {
      for (const name of obj.programNames) {
        if (!programSpec(name)) throw new KspanError('KSPAN_ERR_BPF_OBJECT', `program "${name}" of ${obj.path} is not in kspan's program table`);
        obj.setAutoload(name, plan.load(name));
        if (faulty.has(name)) obj.setProgramType(name, BPF_PROG_TYPE_SOCKET_FILTER);
      }
      obj.setMaxEntries('events', opts.ringBytes ?? KspanLimit.KSPAN_RING_BYTES);
      if (opts.maxSockets !== undefined) obj.setMaxEntries('socks', opts.maxSockets);
      const socketTable = socketTableAllocation(opts.socketTable, hasBpfMemAlloc);
      if (socketTable === 'on-use') obj.addMapFlags('socks', BPF_F_NO_PREALLOC);
      // The idle flush's queue holds each socket once; only the queued variant reads it.
      obj.setMaxEntries('idle_queue', plan.load('flush_idle') ? (opts.maxSockets ?? KspanLimit.KSPAN_MAX_SOCKETS) : 1);
      if (!plan.load('on_sched_switch')) {
        // Unused: the smallest maps the kernel takes.
        obj.setMaxEntries('sched_threads', 1);
        obj.setMaxEntries('sched_events', 4096);
      }
      timed('verifier_load', () => obj.load());
      // Without the queued flush, the hooks queue nothing (bpf/kspan.bpf.c, idle_watch()).
      if (!plan.load('flush_idle')) obj.map('idle_queued').update(u32Key(0), u64Value(BigInt(KspanLimit.KSPAN_IDLE_NO_QUEUE)));
      if (plan.load('on_sched_switch')) SchedRing.configure(obj, opts.offCpuEventNs ?? OFF_CPU_EVENT_NS);
      timed('attach', () => obj.attachAll());
      return new TcpTracer(obj, plan, opts, socketTable);
    } catch (err) {
      obj.close();
      throw err;
    }
  }

  /** Starts delivering records (epoll wake-ups; never blocks the event loop). */
  start(): void {
    this.#ring.start(TUNING.ringIdleMs);
    this.#sched?.start();
  }

  /** Whether the scheduler programs run (thread.sched spans). */
  get sched(): boolean {
    return this.#sched !== undefined;
  }

  /** Traces `pid` (no thread context until setContextLocation), in the selection slots `sel`. Idempotent. */
  addPid(pid: number, sel = SEL_BOTH): void {
    if (this.#obj.map('targets').insert(pidKey(pid), targetValue(NO_LOCATION, this.#policy, sel))) this.targetStats.found++;
    else this.setSelection(pid, sel);
    this.#entries.set(pid, { sel, loc: this.#entries.get(pid)?.loc ?? NO_LOCATION });
    this.#pids.add(pid);
  }

  /** A target the kernel made itself (`parent`'s child, on fork): known from now on, with the parent's location. */
  adoptPid(pid: number, sel: number, parent: number): void {
    const loc = this.#entries.get(parent)?.loc ?? NO_LOCATION;
    this.#entries.set(pid, { sel, loc });
    this.#pids.add(pid);
    this.#obj.map('targets').update(pidKey(pid), targetValue(loc, this.#policy, sel));
    this.targetStats.found++;
  }

  /** A target whose entry the kernel deleted itself (its process exited): forgotten here too. */
  forgetPid(pid: number): void {
    this.#obj.map('targets').delete(pidKey(pid));
    this.#pids.delete(pid);
    this.#entries.delete(pid);
    this.targetStats.forgotten++;
  }

  removePid(pid: number): void {
    if (this.#obj.map('targets').delete(pidKey(pid))) this.targetStats.forgotten++;
    this.#pids.delete(pid);
    this.#entries.delete(pid);
  }

  /** The selection slots of `pid`'s entry (bpf/discovery.bpf.h); false when it is not traced. */
  setSelection(pid: number, sel: number): boolean {
    const e = this.#entries.get(pid) ?? { sel, loc: NO_LOCATION };
    e.sel = sel;
    this.#entries.set(pid, e);
    return this.#obj.map('targets').replace(pidKey(pid), targetValue(e.loc, this.#policy, sel));
  }

  selectionOf(pid: number): number | undefined {
    return this.#entries.get(pid)?.sel;
  }

  /** New sampling and orphan choices, written into every target's entry (each entry changes at once). */
  setPolicy(policy: TargetPolicy): void {
    this.#policy = policy;
    for (const [pid, e] of this.#entries) this.#obj.map('targets').replace(pidKey(pid), targetValue(e.loc, policy, e.sel));
  }

  /** Processes added to the `targets` map since start, and removed from it (self-metrics). */
  readonly targetStats = { found: 0, forgotten: 0 };

  /** Where `pid`'s threads keep their span; false when `pid` is not traced. */
  setContextLocation(pid: number, loc: KspanTlsLoc): boolean {
    const e = this.#entries.get(pid);
    if (e) e.loc = loc;
    return this.#obj.map('targets').replace(pidKey(pid), targetValue(loc, this.#policy, e?.sel));
  }

  clearContextLocation(pid: number): void {
    this.setContextLocation(pid, NO_LOCATION);
  }

  get pids(): number[] {
    return [...this.#pids];
  }

  /** The BPF object, for readers that add their own maps (thread context). */
  get object(): BpfObject {
    return this.#obj;
  }

  /** Loss and fault counters summed over CPUs, plus records the decoder refused. */
  counters(): TracerCounters {
    const ring = { decode_errors: this.#decodeErrors, ring_handler_errors: this.#ring.stats.handlerErrors, ring_wait_errors: this.#ring.stats.waitErrors };
    if (this.#finalCounters) return { ...this.#finalCounters, ...ring };
    const map = this.#obj.map('counters');
    const ncpu = libbpf().numPossibleCpus();
    const out = { ...ring, skipped_runs: this.skippedRuns() } as TracerCounters;
    for (const [name, idx] of Object.entries(KspanCounter)) {
      if (name === 'KSPAN_C_MAX') continue;
      const v = map.lookup(u32Key(idx), 8 * ncpu);
      let sum = 0n;
      for (let i = 0; v && i < ncpu; i++) sum += v.readBigUInt64LE(8 * i);
      out[name as keyof typeof KspanCounter] = Number(sum);
    }
    return out;
  }

  /** Per loaded program, the runs the kernel skipped (recursion misses), when any. */
  skippedRuns(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const name of this.#obj.programNames) {
      if (!this.plan.load(name)) continue;
      const misses = this.#obj.programInfo(name)?.recursionMisses ?? 0n;
      if (misses > 0n) out[name] = Number(misses);
    }
    return out;
  }

  /** Per loaded program, the instructions the verifier processed to accept it (the load's cost; 0 before 5.16). */
  verifiedInsns(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const name of this.#obj.programNames) {
      if (this.plan.load(name)) out[name] = this.#obj.programInfo(name)?.verifiedInsns ?? 0;
    }
    return out;
  }

  /**
   * Closes send/recv aggregates idle for `idleNs` (the kernel emits them, flagged
   * idle). Returns how many. Call it on a timer so a quiet keep-alive connection
   * does not hold its last response back.
   */
  flushIdle(idleNs: bigint): number {
    this.#flushedAt = performance.now();
    return this.#runFlush(idleNs);
  }

  #runFlush(idleNs: bigint): number {
    if (this.#stopped || !this.#flushProgram) return 0;
    const args = Buffer.alloc(KSPAN_FLUSH_ARGS_SIZE);
    const view = new DataView(args.buffer, args.byteOffset, args.length);
    let flushed = 0;
    const guardNs = idleFlushTiming(idleNs).guardNs;
    // One run looks at KSPAN_FLUSH_BATCH queued sockets; more runs for the rest.
    for (let run = 0; run <= this.#maxSockets / KspanLimit.KSPAN_FLUSH_BATCH; run++) {
      encodeKspanFlushArgs({ idle_ns: idleNs, guard_ns: guardNs, flushed: 0n, more: 0n }, view, 0);
      this.#obj.run(this.#flushProgram, args);
      const out = decodeKspanFlushArgs(view, 0);
      flushed += Number(out.flushed);
      if (!out.more) break;
    }
    return flushed;
  }


  /**
   * Takes closed sockets out of the idle flush's queue without flushing anything
   * (every aggregate counts as busy: idle_ns is the whole time since boot).
   * Commands that never flush idle aggregates (events, record) call this on a
   * timer; otherwise each socket ever queued would hold its slot until the
   * queue is full (KSPAN_C_IDLE_QUEUE_FULL).
   */
  pruneIdleQueue(): void {
    // A command that flushes idle aggregates on a timer (run) empties the queue already.
    if (performance.now() - this.#flushedAt < PRUNE_AFTER_FLUSH_MS) return;
    // bpf_ktime_get_ns() and process.hrtime are both CLOCK_MONOTONIC: the cutoff is ~0.
    this.#runFlush(process.hrtime.bigint());
  }

  get ringStats() {
    return this.#ring.stats;
  }

  /**
   * Detaches every program, delivers what is left in the ring, then emits the
   * send/recv aggregates still open in the kernel (flagged `flushed`).
   */
  async stop(onRecord?: (r: KernelRecord) => void): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#ring.stop();
    await this.#sched?.stop();
    this.#obj.detachAll();
    this.#ring.drain();
    const emit = onRecord ?? (() => {});
    for (const rec of this.openAggregates()) emit(rec);
    if (this.#sched) {
      this.#sched.drain();
      for (const rec of this.#sched.openAggregates()) this.#onSchedRecord?.(rec);
      this.#sched.close();
    }
    this.#finalCounters = this.counters();
    this.#ring.close();
    this.#obj.close();
  }

  /** The open aggregates in the `socks` map, as records. */
  openAggregates(): KernelRecord[] {
    const socks = this.#obj.map('socks');
    const attrs = this.#obj.map('span_attrs');
    // The socket table keeps a span's ids; its attribute bytes wait in `span_attrs` (bpf/kspan.h).
    const withAttrs = (a: KspanSockAgg): KspanAgg => {
      const ctx = { ...a.ref, attrs_size: 0, attrs: new Uint8Array(KspanLimit.KSPAN_CTX_ATTRS_MAX) };
      const v = a.ref.valid && a.ref.attrs_size ? attrs.lookup(Buffer.concat([a.ref.trace_id, a.ref.span_id])) : null;
      if (v) Object.assign(ctx, decodeKspanSpanAttrs(new DataView(v.buffer, v.byteOffset, KSPAN_SPAN_ATTRS_SIZE), 0));
      return { first_ns: a.first_ns, last_ns: a.last_ns, bytes: a.bytes, tid: a.tid, calls: a.calls, dir: a.dir, flags: a.flags, ctx };
    };
    const out: KernelRecord[] = [];
    for (const key of socks.keys()) {
      const v = socks.lookup(key);
      if (!v) continue;
      const st = decodeKspanSock(new DataView(v.buffer, v.byteOffset, v.length), 0);
      const cookie = key.readBigUInt64LE(0);
      if (st.pend.dir) out.push(aggregateRecord(cookie, st, withAttrs(st.pend)));
      if (st.agg.dir) out.push(aggregateRecord(cookie, st, withAttrs(st.agg)));
    }
    return out;
  }
}

/** An aggregate still in the kernel's socket state, as a `flushed` record. */
function aggregateRecord(cookie: bigint, st: KspanSock, agg: KspanAgg): KernelRecord {
  const none = { first_ns: 0n, last_ns: 0n, bytes: 0n, tid: 0, calls: 0, dir: 0, flags: 0, ctx: agg.ctx };
  const socket: KspanEvent = {
    ts_ns: 0n, start_ns: 0n, cookie, bytes: 0n, bytes_sent: 0n, bytes_received: 0n, pid: st.pid, tid: 0,
    calls: 0, retransmits: 0, srtt_us: 0, error: 0, type: 0, family: st.family,
    flags: st.role | KspanEventFlag.KSPAN_F_FLUSHED, tcp_state: 0, lport: st.lport, rport: st.rport,
    laddr: st.laddr, raddr: st.raddr, ctx: agg.ctx, prev: none,
  };
  return fromEvent(socket, agg);
}

/** The uprobe features whose programs nobody asked for: all of them without function spans, else the presets' own return programs not asked for. */
export function unaskedUprobeFeatures(kinds: readonly CallKind[] | undefined): Feature[] {
  if (!kinds) return [];
  if (!kinds.length) return ['uprobes', 'uprobe-dns', 'uprobe-tls'];
  return (['dns', 'tls'] as const).filter((k) => !kinds.includes(k)).map((k): Feature => `uprobe-${k}`);
}

/** The program a load or attach failure names, and why (with what to grant, when a privilege was lacking). */
function programRefusal(err: unknown): ({ program: string } & Refusal) | undefined {
  if (err instanceof VerifierError) return { program: err.program, reason: `rejected by the verifier: ${verifierLogLastLine(err.log)}` };
  if (!(err instanceof KspanError) || typeof err.details?.program !== 'string') return undefined;
  const cause = err.cause instanceof Error ? err.cause.message : 'no reason given';
  const attaching = typeof err.details.section === 'string';
  // A privilege refusal keeps what to grant (bpf-object.ts attachRefusedHint).
  const privilege = err.code === 'KSPAN_ERR_PRIVILEGE' && err.hint ? err.hint : undefined;
  return {
    program: err.details.program,
    reason: `${attaching ? 'could not attach' : 'refused by the kernel'} (${cause}${privilege ? `: ${privilege}` : ''})`,
    ...(privilege ? { privilege } : {}),
  };
}

/**
 * Kernels below kspan's floor refuse a helper an essential program calls (before
 * 5.12: bpf_get_socket_cookie in tp_btf programs; before 5.11:
 * bpf_get_current_task_btf): say that, rather than "verifier rejected".
 */
function floorError(err: unknown): KspanError | undefined {
  if (!(err instanceof VerifierError)) return undefined;
  const m = /unknown func (\w+)#\d+|program of this type cannot use helper (\w+)#\d+/.exec(err.log);
  if (!m) return undefined;
  const helper = m[1] ?? m[2];
  return new KspanError('KSPAN_ERR_KERNEL', `this kernel lacks the BPF helper ${helper} for program "${err.program}"`, {
    hint: 'kspan needs Linux 5.12 or later (bpf_get_socket_cookie in tp_btf programs); see `kspan doctor`',
    cause: err,
    details: { program: err.program, helper, log: err.log },
  });
}
