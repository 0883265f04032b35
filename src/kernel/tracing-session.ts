/**
 * One tracing session: the kernel programs (TcpTracer) plus the thread-context
 * reader that tells BPF where each target keeps its active span. Targets are
 * re-checked every `refreshMs` (a cheap /proc/PID/maps fingerprint), so a
 * process that starts publishing, dlopens the publishing library or execs after
 * kspan started is picked up. Used by `kspan events`, `run` and `record`.
 */
import {
  ThreadContextReader,
  type TargetContext,
  type ThreadContextReaderStats,
} from '../context/thread-context-reader.ts';
import { pidKey } from './map-keys.ts';
import { encodeNodeLayoutValue } from '../context/nodejs/node-layout.ts';
import type { IoPath } from './kernel-features.ts';
import type { KernelRecord } from '../records/kernel-record.ts';
import type { FeatureOff } from './programs.ts';
import { TcpTracer, type TracerCounters } from './tcp-tracer.ts';

export interface TracingSessionOptions {
  ioPath?: IoPath;
  onRecord: (r: KernelRecord) => void;
  /** Called once per target and again when its description changes. */
  onTarget?: (t: TargetContext) => void;
  onDecodeError?: (err: unknown) => void;
  /** A target that could not be examined (it stays traced, without context). */
  onTargetError?: (pid: number, err: unknown) => void;
  /** A target exited (noticed on the refresh timer); it is no longer traced. */
  onTargetExit?: (pid: number) => void;
  refreshMs?: number;
  /** See TcpTracerOptions.maxSockets. */
  maxSockets?: number;
  /** See TcpTracerOptions.onFeatureOff: an optional feature this kernel cannot give. */
  onFeatureOff?: (off: FeatureOff) => void;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class TracingSession {
  readonly tracer: TcpTracer;
  readonly reader: ThreadContextReader;
  readonly #opts: TracingSessionOptions;
  #timer: NodeJS.Timeout | undefined;

  private constructor(tracer: TcpTracer, opts: TracingSessionOptions) {
    this.tracer = tracer;
    this.#opts = opts;
    const nodeLayouts = tracer.object.map('node_layouts');
    this.reader = new ThreadContextReader({
      setLocation: (pid, loc) => tracer.setContextLocation(pid, loc),
      deleteLocation: (pid) => tracer.clearContextLocation(pid),
      setNodeLayout: (pid, layout) => nodeLayouts.update(pidKey(pid), encodeNodeLayoutValue(layout)),
      deleteNodeLayout: (pid) => void nodeLayouts.delete(pidKey(pid)),
      onTarget: opts.onTarget,
    });
  }

  static open(opts: TracingSessionOptions): TracingSession {
    const tracer = TcpTracer.open({
      ioPath: opts.ioPath,
      onRecord: opts.onRecord,
      onDecodeError: opts.onDecodeError,
      maxSockets: opts.maxSockets,
      onFeatureOff: opts.onFeatureOff,
    });
    return new TracingSession(tracer, opts);
  }

  get ioPath(): IoPath {
    return this.tracer.ioPath;
  }

  addPid(pid: number): void {
    this.tracer.addPid(pid);
    this.#track(pid);
  }

  removePid(pid: number): void {
    this.tracer.removePid(pid);
    this.reader.untrack(pid);
  }

  #track(pid: number): void {
    try {
      this.reader.track(pid);
    } catch (err) {
      this.#opts.onTargetError?.(pid, err);
    }
  }

  start(): void {
    this.tracer.start();
    this.#timer = setInterval(() => this.refresh(), this.#opts.refreshMs ?? 2000);
    this.#timer.unref();
  }

  /** Re-checks every target: context location, Resource, and whether it still runs. */
  refresh(): void {
    for (const pid of this.tracer.pids) {
      if (!alive(pid)) {
        this.removePid(pid);
        this.#opts.onTargetExit?.(pid);
        continue;
      }
      this.#track(pid);
    }
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
    await this.tracer.stop(onRecord);
  }
}
