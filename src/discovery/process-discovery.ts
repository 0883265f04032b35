/**
 * Discovery: which processes are targets, kept current without polling /proc.
 *
 * At start (watch mode: --all or a selector other than --pid), /proc is scanned
 * once and every process judged (src/discovery/selectors.ts). After that the
 * kernel says what changed, through the `proc_events` ring
 * (bpf/discovery.bpf.h):
 *
 *   EXEC   a new image: a target's location is re-resolved; another process is
 *          judged (the kernel forgot whether it was ruled out)
 *   FORK   a target's child, already a target in the kernel: known here too
 *   EXIT   a target's last thread exited; the kernel deleted its entries, and
 *          its state here is freed (counted in `forgotten`)
 *   CHECK  a process not traced opened a connection after its mappings
 *          changed (a library dlopen'ed, an OTEL_CTX mapping made): judged again
 *
 * A process ruled out (excluded, or matching no selector) is marked `ignore`
 * in `proc_seen`, so the kernel stops asking until it execs.
 *
 * A policy swap (swap()) writes the new selection into the selection slot not in
 * force, flips `sel_epoch`, then clears the old slot: no hook ever sees both
 * policies, or neither (the slots are described in bpf/discovery.bpf.h).
 */
import type { BpfObject } from '../kernel/bpf-object.ts';
import { pidKey, u32Key } from '../kernel/map-keys.ts';
import { RingBufferReader } from '../kernel/ring-buffer.ts';
import type { TcpTracer } from '../kernel/tcp-tracer.ts';
import { ThreadContextReader } from '../context/thread-context-reader.ts';
import {
  decodeKspanProcEvent,
  encodeKspanDiscovery,
  encodeKspanProcSeen,
  KSPAN_DISCOVERY_SIZE,
  KSPAN_PROC_EVENT_SIZE,
  KSPAN_PROC_SEEN_SIZE,
  KspanDiscoveryFlag,
  KspanLimit,
  KspanProcEventType,
  type KspanProcEvent,
} from '../records/abi.generated.ts';
import { forgetPortTables, listPids, ownPidNamespace, readProcessFacts } from './process-facts.ts';
import { judge, needsDiscovery, type Selection, type Verdict } from './selectors.ts';

/** Counted for self-metrics; never reset. */
export interface DiscoveryStats {
  /** Processes that became targets because they were judged selected (scan, exec, check, swap). */
  found: number;
  /** Children of targets, made targets by the kernel on fork. */
  forked: number;
  /** Targets whose process exited: their state here and in the kernel freed. */
  forgotten: number;
  /** Targets a policy swap or an exec deselected. */
  deselected: number;
  /** Records read from the kernel, by type. */
  execs: number;
  checks: number;
  /** Processes ruled out (the kernel stops asking until they exec). */
  ignored: number;
  /** Policy swaps applied. */
  swaps: number;
}

export interface ProcessDiscoveryOptions {
  object: BpfObject;
  tracer: TcpTracer;
  /** Starts or re-checks a target's context (TracingSession's reader, errors reported). */
  track: (pid: number) => void;
  untrack: (pid: number) => void;
  selection: Selection;
  /** Watch mode even for a selection of pids only (a policy file may add selectors later). */
  watch?: boolean;
  /** Children of targets become targets on fork (default true). */
  followFork?: boolean;
  /** A process is sent for CHECK at most this often (default 1000 ms). */
  checkIntervalMs?: number;
  /** A target exited (the kernel said so). */
  onExit?: (pid: number) => void;
  /** A target was added (selected) or removed (deselected by exec or a swap). */
  onSelect?: (pid: number, why: string) => void;
  onDeselect?: (pid: number, why: string) => void;
  onRingError?: (err: unknown) => void;
}

const SEEN_IGNORE = (() => {
  const b = Buffer.alloc(KSPAN_PROC_SEEN_SIZE);
  encodeKspanProcSeen({ checked_ns: 0n, map_count: 0, ignore: 1 }, new DataView(b.buffer, b.byteOffset, b.length), 0);
  return b;
})();

function portKey(port: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(port);
  return b;
}

export class ProcessDiscovery {
  readonly stats: DiscoveryStats = { found: 0, forked: 0, forgotten: 0, deselected: 0, execs: 0, checks: 0, ignored: 0, swaps: 0 };
  readonly #opts: ProcessDiscoveryOptions;
  readonly #obj: BpfObject;
  readonly #tracer: TcpTracer;
  readonly #ring: RingBufferReader;
  /** Reads a process's context without touching the maps: does it publish? */
  readonly #probe = new ThreadContextReader({ setLocation: () => {}, deleteLocation: () => {}, setNodeLayout: () => {} });
  #selection: Selection;
  #slot = 0;
  #watch: boolean;
  /** The agent's pid namespace, when not the initial one: the kernel reports pids as seen from it. */
  readonly #pidns = (() => {
    const ns = ownPidNamespace();
    return ns.initial ? { dev: 0n, ino: 0n } : ns;
  })();

  constructor(opts: ProcessDiscoveryOptions) {
    this.#opts = opts;
    this.#obj = opts.object;
    this.#tracer = opts.tracer;
    this.#selection = opts.selection;
    this.#watch = !!opts.watch || needsDiscovery(opts.selection);
    this.#ring = new RingBufferReader(opts.object.map('proc_events').fd, KspanLimit.KSPAN_PROC_RING_BYTES, (view, off, len) => {
      if (len < KSPAN_PROC_EVENT_SIZE) return;
      this.#onEvent(decodeKspanProcEvent(view, off));
    }, { onError: opts.onRingError });
    // Before any target is added: the pids in the maps are this namespace's.
    this.#writeConf();
  }

  /** Whether the agent runs in a pid namespace of its own (a sidecar's): the kernel then reports that namespace's pids. */
  get ownPidNamespace(): boolean {
    return this.#pidns.ino !== 0n;
  }

  get selection(): Selection {
    return this.#selection;
  }

  /** The selection slot in force (0 or 1), as `sel_epoch` holds it. */
  get slot(): number {
    return this.#slot;
  }

  /** The bit of the slot in force: what a newly selected target's entry carries. */
  get slotBit(): number {
    return 1 << this.#slot;
  }

  /** Watch mode: the kernel reports execs and connections of processes not traced. */
  get watching(): boolean {
    return this.#watch;
  }

  /** Writes the kernel's settings and the ports, starts reading, and (watch mode) scans /proc once. */
  start(): void {
    this.#writePorts(new Set(), new Set(this.#selection.include.ports), this.#slot);
    this.#writeConf();
    this.#ring.start(50);
    if (this.#watch) this.#scan();
  }

  /** Stops reading and unmaps the ring; idempotent (a second call must not touch the unmapped ring). */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#ring.stop();
    this.#ring.drain();
    this.#ring.close();
  }

  #stopped = false;

  #writeConf(): void {
    this.#writeConfFlags(this.#selection.include.ports.length ? KspanDiscoveryFlag.KSPAN_D_PORTS * this.slotBit : 0);
  }

  /** Each port's slot bits: `oldPorts` keep the slot in force, `newPorts` get `slot`. */
  #writePorts(oldPorts: ReadonlySet<number>, newPorts: ReadonlySet<number>, slot: number): void {
    const map = this.#obj.map('sel_ports');
    const inForce = this.slotBit;
    for (const port of new Set([...oldPorts, ...newPorts])) {
      const bits = (oldPorts.has(port) ? inForce : 0) | (newPorts.has(port) ? 1 << slot : 0);
      if (bits) map.update(portKey(port), Buffer.from([bits]));
      else map.delete(portKey(port));
    }
  }

  #ignore(pid: number): void {
    this.#obj.map('proc_seen').update(pidKey(pid), SEEN_IGNORE);
    this.stats.ignored++;
  }

  #facts(pid: number, selection: Selection, portMatched = false) {
    const ports = selection.include.ports.length > 0 || selection.exclude.ports.length > 0;
    return readProcessFacts(pid, { ports, portMatched });
  }

  /** Whether the process publishes now: a thread context kspan can read (OTEP 4947, the Node scheme), or an OTEL_CTX mapping (OTEP 4719). */
  #publishes(pid: number): boolean {
    try {
      const t = this.#probe.track(pid);
      return !!t?.loc || t?.process.mappingAddress !== undefined;
    } catch {
      return false;
    } finally {
      this.#probe.untrack(pid);
    }
  }

  /** Judges a process that is not a target, and acts on the verdict. */
  #consider(pid: number, why: string, portMatched = false): Verdict {
    if (pid === process.pid) return 'unmatched';
    const facts = this.#facts(pid, this.#selection, portMatched);
    const v = judge(this.#selection, facts);
    // A process gone before it was looked at is not ruled out: its pid may come back.
    if ((v === 'excluded' || v === 'unmatched') && facts.comm !== undefined) this.#ignore(pid);
    else if (v === 'selected' || (v === 'needs-context' && this.#publishes(pid))) this.#select(pid, this.slotBit, why);
    return v;
  }

  #select(pid: number, sel: number, why: string): void {
    this.#tracer.addPid(pid, sel);
    this.stats.found++;
    this.#opts.track(pid);
    this.#opts.onSelect?.(pid, why);
  }

  #deselect(pid: number, why: string): void {
    this.#tracer.removePid(pid);
    this.#opts.untrack(pid);
    this.stats.deselected++;
    this.#opts.onDeselect?.(pid, why);
  }

  #scan(): void {
    for (const pid of listPids()) {
      if (this.#isTarget(pid)) continue;
      this.#consider(pid, 'scan');
    }
    forgetPortTables();
  }

  #isTarget(pid: number): boolean {
    return this.#tracer.selectionOf(pid) !== undefined;
  }

  #onEvent(ev: KspanProcEvent): void {
    switch (ev.type) {
      case KspanProcEventType.KSPAN_P_EXEC: {
        this.stats.execs++;
        if (this.#isTarget(ev.pid)) {
          const v = this.#watch ? judge(this.#selection, this.#facts(ev.pid, this.#selection)) : 'selected';
          if (v === 'excluded' || v === 'unmatched') this.#deselect(ev.pid, 'exec');
          else this.#opts.track(ev.pid);
        } else if (this.#watch) {
          this.#consider(ev.pid, 'exec');
        }
        forgetPortTables();
        return;
      }
      case KspanProcEventType.KSPAN_P_FORK: {
        const sel = this.#tracer.selectionOf(ev.ppid) ?? this.slotBit;
        this.stats.forked++;
        this.#tracer.adoptPid(ev.pid, sel, ev.ppid);
        this.#opts.track(ev.pid);
        this.#opts.onSelect?.(ev.pid, `fork of ${ev.ppid}`);
        return;
      }
      case KspanProcEventType.KSPAN_P_EXIT: {
        if (!this.#isTarget(ev.pid)) return;
        this.#tracer.forgetPid(ev.pid);
        this.#opts.untrack(ev.pid);
        this.stats.forgotten++;
        this.#opts.onExit?.(ev.pid);
        return;
      }
      case KspanProcEventType.KSPAN_P_CHECK: {
        this.stats.checks++;
        if (this.#isTarget(ev.pid)) this.#opts.track(ev.pid);
        else this.#consider(ev.pid, 'check', this.#selection.include.ports.length > 0);
        forgetPortTables();
        return;
      }
    }
  }

  /**
   * Puts `next` in force. Every process is judged again (one /proc scan); the
   * targets of `next` get the other slot's bit, ports too; then `sel_epoch`
   * flips in one store, and the old slot's bits are cleared. Returns the
   * CLOCK_MONOTONIC times just before and after the flip.
   */
  swap(next: Selection): { flipBeforeNs: bigint; flipAfterNs: bigint; added: number[]; removed: number[] } {
    this.#watch ||= needsDiscovery(next);
    const old = this.#selection;
    const a = this.slotBit;
    const b = 1 << (1 - this.#slot);
    const keep = (v: Verdict, pid: number) => v === 'selected' || (v === 'needs-context' && (this.#isTarget(pid) || this.#publishes(pid)));
    this.#writePorts(new Set(old.include.ports), new Set(next.include.ports), 1 - this.#slot);
    const added: number[] = [];
    const ignore: number[] = [];
    const targets = new Set(this.#tracer.pids);
    for (const pid of listPids()) {
      if (pid === process.pid) continue;
      const v = judge(next, this.#facts(pid, next));
      if (targets.has(pid)) {
        const sel = this.#tracer.selectionOf(pid) ?? a;
        this.#tracer.setSelection(pid, (sel & a) | (keep(v, pid) ? b : 0));
      } else if (keep(v, pid)) {
        this.#tracer.addPid(pid, b);
        this.#opts.track(pid);
        added.push(pid);
      } else if (v === 'excluded' || v === 'unmatched') {
        ignore.push(pid);
      }
    }
    forgetPortTables();
    // The flip: one 4-byte store. Ports follow the slot bits; the CHECK filter
    // flag is written for both slots first, so it is right on either side.
    this.#selection = next;
    const portsFlag = (old.include.ports.length ? KspanDiscoveryFlag.KSPAN_D_PORTS * a : 0) | (next.include.ports.length ? KspanDiscoveryFlag.KSPAN_D_PORTS * b : 0);
    this.#writeConfFlags(portsFlag);
    const epoch = Buffer.alloc(4);
    epoch.writeUInt32LE(1 - this.#slot);
    const flipBeforeNs = process.hrtime.bigint();
    this.#obj.map('sel_epoch').update(u32Key(0), epoch);
    const flipAfterNs = process.hrtime.bigint();
    this.#slot = 1 - this.#slot;
    // The old slot is no longer read: clear it.
    const removed: number[] = [];
    for (const pid of this.#tracer.pids) {
      const sel = (this.#tracer.selectionOf(pid) ?? 0) & b;
      if (sel) this.#tracer.setSelection(pid, sel);
      else {
        removed.push(pid);
        this.#deselect(pid, 'policy');
      }
    }
    this.#writePorts(new Set(), new Set(next.include.ports), this.#slot);
    for (const key of this.#obj.map('sel_ports').keys()) if (!next.include.ports.includes(key.readUInt16LE(0))) this.#obj.map('sel_ports').delete(key);
    this.#writeConf();
    const seen = this.#obj.map('proc_seen');
    for (const key of seen.keys()) seen.delete(key);
    for (const pid of ignore) this.#ignore(pid);
    for (const pid of added) this.#opts.onSelect?.(pid, 'policy');
    this.stats.found += added.length;
    this.stats.swaps++;
    return { flipBeforeNs, flipAfterNs, added, removed };
  }

  #writeConfFlags(portsFlag: number): void {
    const flags =
      (this.#opts.followFork === false ? 0 : KspanDiscoveryFlag.KSPAN_D_FOLLOW_FORK) | (this.#watch ? KspanDiscoveryFlag.KSPAN_D_WATCH : 0) | portsFlag;
    const b = Buffer.alloc(KSPAN_DISCOVERY_SIZE);
    const intervalNs = BigInt(this.#opts.checkIntervalMs ?? 1000) * 1_000_000n;
    const ns = { pidns_dev: this.#pidns.dev, pidns_ino: this.#pidns.ino };
    encodeKspanDiscovery({ check_interval_ns: intervalNs, flags, ...ns }, new DataView(b.buffer, b.byteOffset, b.length), 0);
    this.#obj.map('discovery').update(u32Key(0), b);
  }
}
