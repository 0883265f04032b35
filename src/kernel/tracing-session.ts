/**
 * One tracing session: the kernel programs (TcpTracer) plus the thread-context
 * reader that tells BPF where each target keeps its active span. Targets are
 * re-checked every `refreshMs` (a cheap /proc/PID/maps fingerprint), so a
 * process that starts publishing, dlopens the publishing library or execs after
 * kspan started is picked up. Used by `kspan events`, `run` and `record`.
 *
 * Targets must exist at the start (KSPAN_ERR_TARGET, before the kernel is
 * touched). One that exits is dropped (onTargetExit); once every target has
 * exited and the kernel's socket table is empty (their last sockets closed, their
 * close records delivered) or TUNING.targetsGoneLingerMs passed, onTargetsGone
 * tells the command to stop, unless it waits for targets added later.
 */
import { readFileSync } from 'node:fs';
import {
  ThreadContextReader,
  type TargetContext,
  type ThreadContextReaderStats,
} from '../context/thread-context-reader.ts';
import { pidKey } from './map-keys.ts';
import { encodeNodeLayoutValue } from '../context/nodejs/node-layout.ts';
import { TUNING } from '../core/config.ts';
import { KspanError } from '../core/errors.ts';
import { timed } from '../core/startup-timing.ts';
import type { IoPath } from './kernel-features.ts';
import type { KernelRecord } from '../records/kernel-record.ts';
import type { SchedRingRecord } from '../records/sched-record.ts';
import type { FeatureOff } from './programs.ts';
import { TcpTracer, type SocketTableAllocation, type TargetPolicy, type TracerCounters } from './tcp-tracer.ts';
import { ProcessDiscovery, type DiscoveryStats } from '../discovery/process-discovery.ts';
import { NO_CRITERIA, needsDiscovery, type Selection } from '../discovery/selectors.ts';
import { UPROBE_ENTRY, UprobeTracer, type UprobeTracerOptions } from '../uprobes/uprobe-tracer.ts';

export interface TracingSessionOptions {
  /** Processes traced from the start; each must be running (KSPAN_ERR_TARGET otherwise). */
  pids?: readonly number[];
  ioPath?: IoPath;
  onRecord: (r: KernelRecord) => void;
  /** Scheduler records (thread.sched); without it the scheduler programs are not loaded. */
  onSchedRecord?: (r: SchedRingRecord) => void;
  /** Shortest off-CPU interval that makes an OffCpuRecord (default 1 ms; 0: none). */
  offCpuEventNs?: bigint;
  /** Called once per target and again when its description changes. */
  onTarget?: (t: TargetContext) => void;
  onDecodeError?: (err: unknown) => void;
  /** See TcpTracerOptions.onRingError: a failed ring buffer wait or a throwing handler (counted). */
  onRingError?: (err: unknown) => void;
  /** A target that could not be examined (it stays traced, without context). */
  onTargetError?: (pid: number, err: unknown) => void;
  /** A target exited (noticed on the refresh timer); it is no longer traced. */
  onTargetExit?: (pid: number) => void;
  /** Every target has exited and their sockets are gone (or the linger passed). Not called with waitForTargets. */
  onTargetsGone?: () => void;
  /** Keep going with no targets left (for targets added later); default false. */
  waitForTargets?: boolean;
  /** Default TUNING.targetRefreshMs. */
  refreshMs?: number;
  /** Default TUNING.targetsGoneLingerMs. */
  lingerMs?: number;
  /** See TcpTracerOptions.maxSockets. */
  maxSockets?: number;
  /** See TcpTracerOptions.socketTable. */
  socketTable?: SocketTableAllocation;
  /** See TcpTracerOptions.policy: sampling and orphans, decided in the kernel. */
  policy?: TargetPolicy;
  /** See TcpTracerOptions.onFeatureOff: an optional feature this kernel cannot give. */
  onFeatureOff?: (off: FeatureOff) => void;
  /** Which processes to trace beyond `pids`: --all and the selectors (src/discovery/); implies waitForTargets. */
  selection?: Selection;
  /** A process became a target (selected, or a target's child), or stopped being one (deselected). */
  onSelect?: (pid: number, why: string) => void;
  onDeselect?: (pid: number, why: string) => void;
  /** Find targets by the selection even when it is only --pid (a policy file may add selectors later). */
  discover?: boolean;
  /** Function spans (src/uprobes/): what to probe in every target, and where calls and problems go. */
  uprobes?: Pick<UprobeTracerOptions, 'specs' | 'onCall' | 'onProbeError' | 'onNotFound'>;
}

/** False once `pid` has exited: no such process, or a zombie nobody reaped yet. */
export function processRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    // "pid (comm) S ...": the state follows the last ')' (comm may hold one).
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const state = stat[stat.lastIndexOf(')') + 2];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** KSPAN_ERR_TARGET naming every pid that is not a running process. */
export function assertTargetsRunning(pids: readonly number[]): void {
  const missing = pids.filter((pid) => !processRunning(pid));
  if (!missing.length) return;
  throw new KspanError(
    'KSPAN_ERR_TARGET',
    `${missing.map((pid) => `--pid ${pid}`).join(', ')}: no such process${missing.length > 1 ? 'es' : ''}`,
    { hint: 'give the pid of a running process, e.g. from ps -e; kspan traces processes that run when it starts' },
  );
}

export class TracingSession {
  readonly tracer: TcpTracer;
  readonly reader: ThreadContextReader;
  /** Function spans; null when none are asked for or the kernel refused the programs (feature `uprobes` off). */
  readonly uprobes: UprobeTracer | null;
  readonly #opts: TracingSessionOptions;
  #timer: NodeJS.Timeout | undefined;
  /** Targets that exited, while no target is left. */
  readonly #gone = new Set<number>();
  #lingerTimer: NodeJS.Timeout | undefined;
  #goneReported = false;
  /** Processes followed as they exec, fork and exit; absent when the kernel lacks the sched_process tracepoints. */
  readonly discovery: ProcessDiscovery | undefined;

  private constructor(tracer: TcpTracer, opts: TracingSessionOptions) {
    this.tracer = tracer;
    this.#opts = opts;
    const u = opts.uprobes;
    this.uprobes = u?.specs.length && tracer.plan.load(UPROBE_ENTRY)
      ? new UprobeTracer({ ...u, object: tracer.object, loaded: (p) => tracer.plan.load(p), onDecodeError: opts.onDecodeError, onRingError: opts.onRingError })
      : null;
    const nodeLayouts = tracer.object.map('node_layouts');
    this.reader = new ThreadContextReader({
      setLocation: (pid, loc) => tracer.setContextLocation(pid, loc),
      deleteLocation: (pid) => tracer.clearContextLocation(pid),
      setNodeLayout: (pid, layout) => nodeLayouts.update(pidKey(pid), encodeNodeLayoutValue(layout)),
      deleteNodeLayout: (pid) => void nodeLayouts.delete(pidKey(pid)),
      onTarget: opts.onTarget,
    });
    const selection = opts.selection ?? { all: false, include: { ...NO_CRITERIA, pids: opts.pids ?? [] }, exclude: NO_CRITERIA };
    if (tracer.plan.load('on_proc_exec') && tracer.plan.load('on_proc_fork') && tracer.plan.load('on_proc_exit')) {
      this.discovery = new ProcessDiscovery({
        object: tracer.object,
        tracer,
        selection,
        watch: opts.discover,
        track: (pid) => this.#track(pid),
        untrack: (pid) => {
          this.reader.untrack(pid);
          this.uprobes?.untrack(pid);
        },
        // Told on the next refresh tick: the process's sockets close (and their records
        // arrive) after its exit tracepoint, and spans still need its key map until then.
        onExit: (pid) => this.#exitsSeen.add(pid),
        onSelect: (pid, why) => {
          this.#gone.clear();
          opts.onSelect?.(pid, why);
        },
        onDeselect: opts.onDeselect,
        onRingError: opts.onRingError,
      });
    } else if (needsDiscovery(selection) || opts.discover) {
      tracer.stop().catch(() => {});
      throw new KspanError('KSPAN_ERR_KERNEL', '--all and the selectors other than --pid need the sched_process_exec/fork/exit BTF tracepoints, which this kernel refused', {
        hint: 'select processes with --pid; `kspan doctor` shows the features this kernel has',
      });
    }
  }

  /**
   * Puts a new selection and sampling policy in force without reloading a
   * program: the selection through the slots of bpf/discovery.bpf.h (never
   * both policies, never neither), then each target's sampling choices.
   */
  applyPolicy(selection: Selection, policy: TargetPolicy): ReturnType<ProcessDiscovery['swap']> {
    if (!this.discovery) throw new KspanError('KSPAN_ERR_KERNEL', 'a policy swap needs the discovery programs, which this kernel refused');
    const r = this.discovery.swap(selection);
    this.tracer.setPolicy(policy);
    return r;
  }

  /** Policy reloads applied and refused (set when a policy file is watched), for the counters. */
  policyStats: { applied: number; invalid: number } | undefined;

  /** Called once at stop (before the programs are detached). */
  onStop(fn: () => void): void {
    this.#closers.push(fn);
  }

  readonly #closers: (() => void)[] = [];

  /** Whether targets are found by selectors (not only the --pid list): then kspan waits for targets to come. */
  get discovering(): boolean {
    return !!this.discovery?.watching;
  }

  /** Checks the targets, then loads and attaches the programs and starts tracing `pids` (records flow after start()). */
  static open(opts: TracingSessionOptions): TracingSession {
    assertTargetsRunning(opts.pids ?? []);
    const tracer = TcpTracer.open({
      ioPath: opts.ioPath,
      onRecord: opts.onRecord,
      onSchedRecord: opts.onSchedRecord,
      offCpuEventNs: opts.offCpuEventNs,
      onDecodeError: opts.onDecodeError,
      onRingError: opts.onRingError,
      maxSockets: opts.maxSockets,
      socketTable: opts.socketTable,
      policy: opts.policy,
      onFeatureOff: opts.onFeatureOff,
      uprobeKinds: opts.uprobes?.specs.map((s) => s.kind) ?? [],
    });
    const session = new TracingSession(tracer, opts);
    // With selectors, the --pid list is one of them: the scan at start judges it.
    if (!session.discovering) timed('targets', () => { for (const pid of opts.pids ?? []) session.addPid(pid); });
    return session;
  }

  get ioPath(): IoPath {
    return this.tracer.ioPath;
  }

  addPid(pid: number): void {
    this.tracer.addPid(pid);
    this.#gone.clear();
    this.#track(pid);
  }

  removePid(pid: number): void {
    this.tracer.removePid(pid);
    this.reader.untrack(pid);
    this.uprobes?.untrack(pid);
  }

  #track(pid: number): void {
    try {
      this.reader.track(pid);
    } catch (err) {
      this.#opts.onTargetError?.(pid, err);
    }
    try {
      this.uprobes?.track(pid);
    } catch (err) {
      this.#opts.uprobes?.onProbeError?.(new KspanError('KSPAN_ERR_UPROBE', `cannot look for probed functions in process ${pid}`, {
        hint: 'its function spans are missing until the next check',
        cause: err,
      }));
    }
  }

  start(): void {
    this.tracer.start();
    timed('targets', () => this.discovery?.start());
    this.uprobes?.start();
    this.#timer = setInterval(() => this.refresh(), this.#opts.refreshMs ?? TUNING.targetRefreshMs);
    this.#timer.unref();
  }

  /** Targets whose exit the kernel reported (their state already freed), to tell on the next refresh. */
  readonly #exitsSeen = new Set<number>();

  /** Re-checks every target: context location, Resource, and whether it still runs. */
  refresh(): void {
    for (const pid of this.#exitsSeen) this.#exited(pid);
    this.#exitsSeen.clear();
    this.tracer.pruneIdleQueue();
    for (const pid of this.tracer.pids) {
      if (!processRunning(pid)) {
        this.removePid(pid);
        if (this.discovery) this.discovery.stats.forgotten++;
        this.#exited(pid);
        continue;
      }
      this.#track(pid);
    }
    // Every target gone: the command is told on this timer (a kernel EXIT freed their state at once).
    const waiting = this.#opts.waitForTargets || this.discovering;
    if (!this.tracer.pids.length && this.#gone.size && !waiting && !this.#lingerTimer) this.#lingerThenReport();
  }

  /** A target exited (its entries are gone): told at once. */
  #exited(pid: number): void {
    this.#gone.add(pid);
    this.#opts.onTargetExit?.(pid);
  }

  /** Waits (bounded) for the kernel's socket table to empty, then reports every target gone, once. */
  #lingerThenReport(): void {
    const deadline = performance.now() + (this.#opts.lingerMs ?? TUNING.targetsGoneLingerMs);
    const socks = this.tracer.object.map('socks');
    const check = () => {
      this.#lingerTimer = undefined;
      if (this.#goneReported || this.tracer.pids.length) return;
      if (socks.keys().length && performance.now() < deadline) {
        this.#lingerTimer = setTimeout(check, TUNING.targetsGoneCheckMs);
        return;
      }
      this.#goneReported = true;
      this.#opts.onTargetsGone?.();
    };
    check();
  }

  /** Loss and fault counters of the kernel side and of context resolution. */
  counters(): TracerCounters & { context: ThreadContextReaderStats; discovery?: DiscoveryStats; policy?: { applied: number; invalid: number } } {
    return {
      ...this.tracer.counters(),
      context: { ...this.reader.stats },
      ...(this.discovery ? { discovery: { ...this.discovery.stats } } : {}),
      ...(this.policyStats ? { policy: { ...this.policyStats } } : {}),
    };
  }

  /** The features this kernel could not give (switched off, each with what is lost). */
  get featuresOff(): readonly FeatureOff[] {
    return this.tracer.plan.off;
  }

  async stop(onRecord?: (r: KernelRecord) => void): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    if (this.#lingerTimer) clearTimeout(this.#lingerTimer);
    this.#goneReported = true;
    for (const fn of this.#closers.splice(0)) fn();
    await this.discovery?.stop();
    await this.uprobes?.stop();
    await this.tracer.stop(onRecord);
  }
}
