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
import type { IoPath } from './kernel-features.ts';
import type { KernelRecord } from '../records/kernel-record.ts';
import type { SchedRecord } from '../records/sched-record.ts';
import type { FeatureOff } from './programs.ts';
import { TcpTracer, type TargetPolicy, type TracerCounters } from './tcp-tracer.ts';
import { UPROBE_ENTRY, UprobeTracer, type UprobeTracerOptions } from '../uprobes/uprobe-tracer.ts';

export interface TracingSessionOptions {
  /** Processes traced from the start; each must be running (KSPAN_ERR_TARGET otherwise). */
  pids?: readonly number[];
  ioPath?: IoPath;
  onRecord: (r: KernelRecord) => void;
  /** Scheduler records (thread.sched); without it the scheduler programs are not loaded. */
  onSchedRecord?: (r: SchedRecord) => void;
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
  /** See TcpTracerOptions.policy: sampling and orphans, decided in the kernel. */
  policy?: TargetPolicy;
  /** See TcpTracerOptions.onFeatureOff: an optional feature this kernel cannot give. */
  onFeatureOff?: (off: FeatureOff) => void;
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
  }

  /** Checks the targets, then loads and attaches the programs and starts tracing `pids` (records flow after start()). */
  static open(opts: TracingSessionOptions): TracingSession {
    assertTargetsRunning(opts.pids ?? []);
    const tracer = TcpTracer.open({
      ioPath: opts.ioPath,
      onRecord: opts.onRecord,
      onSchedRecord: opts.onSchedRecord,
      onDecodeError: opts.onDecodeError,
      onRingError: opts.onRingError,
      maxSockets: opts.maxSockets,
      policy: opts.policy,
      onFeatureOff: opts.onFeatureOff,
    });
    const session = new TracingSession(tracer, opts);
    for (const pid of opts.pids ?? []) session.addPid(pid);
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
    this.uprobes?.start();
    this.#timer = setInterval(() => this.refresh(), this.#opts.refreshMs ?? TUNING.targetRefreshMs);
    this.#timer.unref();
  }

  /** Re-checks every target: context location, Resource, and whether it still runs. */
  refresh(): void {
    this.tracer.pruneIdleQueue();
    for (const pid of this.tracer.pids) {
      if (!processRunning(pid)) {
        this.removePid(pid);
        this.#gone.add(pid);
        this.#opts.onTargetExit?.(pid);
        continue;
      }
      this.#track(pid);
    }
    if (!this.tracer.pids.length && this.#gone.size && !this.#opts.waitForTargets && !this.#lingerTimer) this.#lingerThenReport();
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
  counters(): TracerCounters & { context: ThreadContextReaderStats } {
    return { ...this.tracer.counters(), context: { ...this.reader.stats } };
  }

  /** The features this kernel could not give (switched off, each with what is lost). */
  get featuresOff(): readonly FeatureOff[] {
    return this.tracer.plan.off;
  }

  async stop(onRecord?: (r: KernelRecord) => void): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    if (this.#lingerTimer) clearTimeout(this.#lingerTimer);
    this.#goneReported = true;
    await this.uprobes?.stop();
    await this.tracer.stop(onRecord);
  }
}
