/**
 * What the long-running commands share: the stop signal, the tracing session
 * with its logging, loss counting, file error wording.
 */
import { getSystemErrorMessage } from 'node:util';
import { TUNING, type RunConfig, type SELECTION } from '../core/config.ts';
import { selectionFromSettings } from '../discovery/selectors.ts';
import { reloadPolicy } from '../policy/policy-config.ts';
import { PolicyWatcher } from '../policy/policy-watcher.ts';
import type { Logger } from '../core/logger.ts';
import { startupTimings } from '../core/startup-timing.ts';
import type { KernelClock } from '../kernel/clock.ts';
import { setLibbpfLogSink } from '../kernel/libbpf-log.ts';
import { c } from '../kernel/native.ts';
import type { TracerCounters } from '../kernel/tcp-tracer.ts';
import { TracingSession, type TracingSessionOptions } from '../kernel/tracing-session.ts';
import { warnFeatureOff } from './kernel-warnings.ts';

/** setTimeout's longest delay (2^31 − 1 ms, 24.8 days); a longer one fires at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export interface Timers<H> {
  setTimeout(fn: () => void, ms: number): H;
  clearTimeout(handle: H): void;
}

/** Calls `fn` once after `ms`, however long: delays past setTimeout's limit are chained. Returns a cancel. */
export function after<H = NodeJS.Timeout>(
  ms: number,
  fn: () => void,
  timers: Timers<H> = { setTimeout, clearTimeout } as unknown as Timers<H>,
): () => void {
  let handle: H;
  const arm = (left: number) => {
    const step = Math.min(left, MAX_TIMER_MS);
    handle = timers.setTimeout(() => (left > step ? arm(left - step) : fn()), step);
  };
  arm(ms);
  return () => timers.clearTimeout(handle);
}

export type StopSignal = Promise<string> & {
  /** Stops now, for `why` (every target exited, the output failed). */
  end(why: string): void;
  /** Removes the handlers and the timer (the command failed before it started). */
  cancel(): void;
};

/** Resolves after `seconds`, on SIGINT/SIGTERM, or on end(), whichever comes first, with the reason. */
export function waitForStop(seconds: number | undefined): StopSignal {
  let cancelTimer = () => {};
  let finish: (why: string) => void = () => {};
  const onInt = () => finish('SIGINT');
  const onTerm = () => finish('SIGTERM');
  const cleanup = () => {
    cancelTimer();
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  };
  const promise = new Promise<string>((resolve) => {
    finish = (why) => {
      // The signal handlers stay: one SIGTERM or SIGINT while kspan is flushing
      // and exporting (it stopped on its own, say, when its targets exited) does
      // not kill it half-way; a second one quits at once, losing what was not
      // yet exported (exit 130).
      cancelTimer();
      let more = 0;
      finish = () => {
        if (++more >= 2) process.exit(130);
      };
      resolve(why);
    };
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    if (seconds !== undefined) cancelTimer = after(seconds * 1000, () => finish('duration'));
  });
  return Object.assign(promise, { end: (why: string) => finish(why), cancel: cleanup });
}

export type TracingConfig = Pick<RunConfig, (typeof SELECTION)[number] | 'config' | 'ioHooks' | 'maxSockets' | 'socketTable' | 'waitForTargets' | 'orphansRatio'> & {
  unsampled?: boolean;
  noSched?: boolean;
  offCpuEventMs?: number;
};

export type SessionHooks = Pick<TracingSessionOptions, 'onRecord' | 'onSchedRecord' | 'onTarget' | 'onTargetExit' | 'onTargetsGone' | 'uprobes'>;

/** Debug: how long each start-up phase took, and what each loaded program cost the verifier. */
export function logStartup(log: Logger, session: TracingSession): void {
  if (log.isLevelEnabled('debug')) log.debug({ ms: startupTimings(), verified_insns: session.tracer.verifiedInsns() }, 'start-up');
}

/**
 * Re-measures the kernel clock's offset every TUNING.clockRefreshMs, so that a
 * step of the realtime clock misplaces kernel times for a second at most; a move
 * of a millisecond or more is logged. The caller clears the timer.
 */
export function refreshClock(clock: KernelClock, log: Logger): NodeJS.Timeout {
  const timer = setInterval(() => {
    const moved = clock.refresh();
    if (moved >= TUNING.clockStepLogNs || -moved >= TUNING.clockStepLogNs) {
      log.info({ movedNs: Number(moved) }, 'the realtime clock moved against the monotonic one: kernel times follow it');
    }
  }, TUNING.clockRefreshMs);
  timer.unref();
  return timer;
}

/**
 * Gives the pages of glibc's free heap chunks back every TUNING.mallocTrimMs
 * (0: never). free() returns memory only from the top of a heap; what the
 * export's and gRPC's transient buffers leave free in the middle stays
 * resident otherwise. The caller clears the timer.
 */
export function trimMallocHeap(): NodeJS.Timeout | undefined {
  if (!TUNING.mallocTrimMs) return undefined;
  const timer = setInterval(() => c.mallocTrim(0), TUNING.mallocTrimMs);
  timer.unref();
  return timer;
}

/**
 * The tracing session of run, events and record: the targets checked first
 * (KSPAN_ERR_TARGET), then the programs loaded and attached; libbpf's messages,
 * features the kernel cannot give, refused records, unreadable contexts and
 * exited targets logged.
 */
export function openSession(config: TracingConfig, log: Logger, hooks: SessionHooks): TracingSession {
  setLibbpfLogSink((level, line) => log[level === 'warn' ? 'warn' : 'debug']({ libbpf: line }, 'libbpf'), { debug: log.isLevelEnabled('debug') });
  const session = TracingSession.open({
    pids: config.pids,
    selection: selectionFromSettings(config),
    discover: config.config !== undefined,
    onSelect: (pid, why) => log.info({ target_pid: pid, why }, 'target selected'),
    onDeselect: (pid, why) => log.info({ target_pid: pid, why }, 'target deselected'),
    ioPath: config.ioHooks === 'auto' ? undefined : config.ioHooks,
    maxSockets: config.maxSockets,
    socketTable: config.socketTable === 'auto' ? undefined : config.socketTable,
    waitForTargets: config.waitForTargets,
    policy: { keepUnsampled: config.unsampled ?? false, orphanRatio: config.orphansRatio },
    onRecord: hooks.onRecord,
    onSchedRecord: config.noSched ? undefined : hooks.onSchedRecord,
    offCpuEventNs: config.offCpuEventMs === undefined ? undefined : BigInt(config.offCpuEventMs) * 1_000_000n,
    onTarget: hooks.onTarget,
    onDecodeError: (err) => log.error({ err }, 'record dropped: decode failed'),
    onRingError: ringErrorLog(log),
    onTargetError: (pid, err) => log.warn({ target_pid: pid, err }, "cannot read the target's trace context; tracing it without"),
    onTargetExit: (pid) => {
      log.warn({ target_pid: pid }, 'target exited; no longer traced');
      hooks.onTargetExit?.(pid);
    },
    onTargetsGone: hooks.onTargetsGone,
    onFeatureOff: warnFeatureOff(log),
    uprobes: hooks.uprobes,
  });
  const reload = reloadPolicy(config as RunConfig);
  if (config.config && reload) watchPolicy(config.config, config, reload, session, log);
  return session;
}

/** Settings a reload cannot change: they shape what was loaded at start. */
const AT_START = ['ioHooks', 'maxSockets', 'socketTable', 'otlpEndpoint', 'otlpProtocol', 'console', 'orphans', 'idleFlushMs', 'logLevel', 'duration'] as const;

/** Swaps the policy file's selection and sampling in on SIGHUP or a change of the file. */
function watchPolicy(path: string, initial: TracingConfig, reload: () => TracingConfig, session: TracingSession, log: Logger): void {
  const watcher = new PolicyWatcher<TracingConfig>({
    path,
    reload,
    log,
    apply: (next, why) => {
      const r = session.applyPolicy(selectionFromSettings(next), { keepUnsampled: next.unsampled ?? false, orphanRatio: next.orphansRatio });
      log.info(
        { why, file: path, slot: session.discovery?.slot, added: r.added, removed: r.removed, flip_before_ns: String(r.flipBeforeNs), flip_after_ns: String(r.flipAfterNs) },
        'policy applied',
      );
      const before = initial as Record<string, unknown>;
      const after = next as Record<string, unknown>;
      const fixed = AT_START.filter((k) => k in after && JSON.stringify(after[k]) !== JSON.stringify(before[k]));
      if (fixed.length) log.warn({ settings: fixed }, 'these settings changed in the policy file take effect at the next start');
    },
  });
  watcher.start();
  session.policyStats = watcher.stats;
  session.onStop(() => watcher.close());
}

/**
 * The ring reader's failures at warn: the first at once, then at most one line
 * per `everyMs` with how many came since the last line (a failing epoll_wait is
 * retried every 20 ms). All of them are counted in ring_wait_errors and
 * ring_handler_errors, which the final log line carries.
 */
export function ringErrorLog(log: Pick<Logger, 'warn'>, everyMs = 10_000, now = () => performance.now()): (err: unknown) => void {
  let last = -Infinity;
  let failures = 0;
  return (err) => {
    failures++;
    const t = now();
    if (t - last < everyMs) return;
    log.warn({ err, failures }, 'ring buffer reader failed; reading goes on');
    last = t;
    failures = 0;
  };
}

/**
 * Records the kernel side lost: ring buffer full, socket table full, refused by
 * the decoder, and runs of a program the kernel skipped (each may have lost a
 * record: a retransmit, a reset, a close).
 */
export function recordsLost(c: TracerCounters): number {
  const skipped = Object.values(c.skipped_runs ?? {}).reduce((a, n) => a + n, 0);
  // Function calls that made no record (no room for the thread's calls, deeper than kept) are lost too;
  // so are process events, and a child that could not be made a target (targets missed or not freed).
  const discovery = c.KSPAN_C_PROC_RING_FULL + c.KSPAN_C_FORK_TABLE_FULL;
  return c.KSPAN_C_RINGBUF_FULL + c.KSPAN_C_SOCK_TABLE_FULL + c.KSPAN_C_CALL_TABLE_FULL + c.KSPAN_C_CALL_TOO_DEEP + c.KSPAN_C_SCHED_TABLE_FULL + c.decode_errors + skipped + discovery;
}

/** Why a command stopped, as its "stopping" line says. */
export const TARGETS_GONE = 'every target exited';

/** A file system error as words: `no space left on device (ENOSPC)`. */
export function describeFsError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (typeof e?.errno === 'number' && e.code) return `${getSystemErrorMessage(e.errno)} (${e.code})`;
  return err instanceof Error ? err.message : String(err);
}
