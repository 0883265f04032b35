/**
 * `kspan run`: the agent. Kernel records of the selected processes → socket
 * correlator → kernel spans under the targets' own spans → OTLP (or, with no
 * endpoint configured, trees on the terminal). Stops after --duration, on
 * SIGINT/SIGTERM, or once every target has exited: flushes the kernel's open
 * aggregates, ends every open span, drains the export queue, then exits 0, or
 * 3 when records or spans were lost.
 */
import type { SpanExporter } from '@opentelemetry/sdk-trace';
import { DEFAULT_SPOOL_DIR, loadConfig, type RunConfig, TUNING } from '../core/config.ts';
import { SpanSpool } from '../export/spool.ts';
import { KernelClock } from '../kernel/clock.ts';
import { idleFlushTiming, type TracerCounters } from '../kernel/tcp-tracer.ts';
import { drainRings } from '../kernel/ring-buffer.ts';
import type { Logger } from '../core/logger.ts';
import { contextAttributes } from '../spans/context-attributes.ts';
import { exportSpansLost, exportTarget, type ExportCounters } from '../export/export-pipeline.ts';
import { SpanPipeline } from '../spans/span-pipeline.ts';
import { OrphanNotices, type Notice } from '../spans/orphan-notices.ts';
import { TargetResources } from '../export/target-resources.ts';
import { containerResource } from '../discovery/process-facts.ts';
import type { TracingSession } from '../kernel/tracing-session.ts';
import { logStartup, openSession, recordsLost, refreshClock, trimMallocHeap, TARGETS_GONE, waitForStop } from './options.ts';
import { CallSpanBuilder } from '../spans/call-spans.ts';
import { uprobeSpecs } from '../uprobes/uprobe-spec.ts';
import type { AgentMetrics } from '../metrics/metrics-server.ts';
import { observeAgent, type AgentObserver } from '../metrics/agent-observer.ts';
import { EXIT } from './usage.ts';
import { onceKernelSymbols } from '../kernel/kallsyms-file.ts';

export interface AgentHandle {
  session: TracingSession;
  pipeline: SpanPipeline;
  /** Flushes everything; resolves once exported, with how many records and spans were lost. */
  stop(): Promise<{ lost: number }>;
}

export interface AgentExtras {
  /** Spans go here instead of OTLP or the console (embedding: `kspan demo`). */
  exporter?: SpanExporter;
  /** Every target has exited and its sockets closed: the caller should stop the agent. */
  onTargetsGone?: () => void;
  /** Self-metrics (--metrics-listen, --metrics-otlp-endpoint); the agent shuts them down when it stops. */
  metrics?: AgentMetrics;
}

/** An embedding caller's options: the targets, and flag values checked like the command line's. */
export interface AgentOptions extends AgentExtras {
  pids: readonly number[];
  otlpEndpoint?: string;
  otlpProtocol?: string;
}

/** Starts the agent; `stop()` flushes everything and resolves when exported. */
export function startAgent(opts: AgentOptions | (RunConfig & AgentExtras), log: Logger): AgentHandle {
  const config: RunConfig =
    'command' in opts
      ? opts
      : loadConfig('run', { flags: { pids: opts.pids.map(String), otlpEndpoint: opts.otlpEndpoint, otlpProtocol: opts.otlpProtocol } });
  const clock = new KernelClock();
  const target = exportTarget(config);
  let session: TracingSession | undefined;
  const resources = new TargetResources((pid) => session?.reader.target(pid)?.process.resource);
  // Kept past the reader's untrack: spans ended at a target's exit still need its key map.
  const keyMaps = new Map<number, readonly string[]>();
  const keyMapFor = (pid: number) => keyMaps.get(pid) ?? session?.reader.target(pid)?.process.threadLocal?.keyMap;
  const notices = new OrphanNotices(config.orphans);
  const spool = openSpool(config, target.kind === 'otlp' && !opts.exporter, log);
  const tell = (n: Notice | null) => n && log[n.level](n.msg);
  // The idle flush runs on the correlator's tick when their periods agree (the
  // default, 250 ms): one wake-up of the agent for both, each costing it some
  // hundred microseconds of CPU on a VM (BENCHMARKS.md, "The agent's wake-ups
  // while idle"). It goes first, then the rings are drained, so the tick sees
  // the records the flush made.
  const idleNs = BigInt(config.idleFlushMs) * 1_000_000n;
  const flushTickMs = idleFlushTiming(idleNs).tickMs;
  const tickMs = TUNING.correlatorTickMs;
  let flushOnTick = false;
  const pipeline = new SpanPipeline({
    resourceFor: (pid) => resources.resourceFor(pid),
    extraAttributes: (k) => contextAttributes(k.parent, keyMapFor(k.pid)),
    clockOffsetNs: () => clock.offsetNs,
    target,
    exporter: opts.exporter,
    orphans: config.orphans,
    // The kernel keeps no more sockets than this, so records never name more:
    // the correlator's table has the same bound.
    correlator: { maxSockets: config.maxSockets },
    logger: log,
    spool,
    kernelSymbols: onceKernelSymbols(log),
    beforeTick: () => {
      if (flushOnTick) session!.tracer.flushIdle(idleNs);
      drainRings();
    },
    tickMs,
  });
  const calls = new CallSpanBuilder({
    resourceFor: (pid) => resources.resourceFor(pid),
    clockOffsetNs: () => clock.offsetNs,
    probe: (id) => session?.uprobes?.probe(id),
    orphans: config.orphans,
  });
  try {
    session = openSession(config, log, {
      uprobes: {
        specs: uprobeSpecs(config.uprobePresets, config.uprobes),
        onCall: (c) => {
          const span = calls.build(c);
          if (span) pipeline.pushSpan(span);
        },
        onProbeError: (err) => log.warn({ err }, err.message),
        onNotFound: (spec, pid) => log.warn({ target_pid: pid, uprobe: spec }, `--uprobe ${spec.binary}:${spec.symbol}: no file process ${pid} maps defines it (looked again every check)`),
      },
      onRecord: (r) => pipeline.push(r),
      onSchedRecord: (r) => pipeline.pushSched(r),
      onTarget: (t) => {
        // The cgroup's container.id / k8s.pod.uid, for the Collector's k8sattributes; the target's own Resource wins.
        resources.set(t.pid, { ...containerResource(t.pid), ...t.process.resource });
        if (t.process.threadLocal) keyMaps.set(t.pid, t.process.threadLocal.keyMap);
        else keyMaps.delete(t.pid);
        log.info({ target_pid: t.pid, scheme: t.scheme ?? 'none', model: t.model, reason: t.reason, service: t.process.resource['service.name'] }, 'target');
        tell(notices.target(t));
      },
      onTargetExit: (pid) => {
        pipeline.processExited(pid);
        keyMaps.delete(pid);
      },
      onTargetsGone: opts.onTargetsGone,
    });
  } catch (err) {
    void pipeline.shutdown();
    void opts.metrics?.shutdown();
    throw err;
  }
  const observer: AgentObserver | undefined = opts.metrics && observeAgent(opts.metrics, { session, pipeline, orphans: config.orphans }, log);
  session.start();
  logStartup(log, session);
  flushOnTick = flushTickMs === tickMs;
  const idleTimer = flushOnTick ? undefined : setInterval(() => session!.tracer.flushIdle(idleNs), flushTickMs);
  const clockTimer = refreshClock(clock, log);
  const trimTimer = trimMallocHeap();
  log.info({ target_pids: config.pids, ioPath: session.ioPath, socketTable: session.tracer.socketTable, featuresOff: session.featuresOff.map((f) => f.feature), export: opts.exporter ? 'in-process' : target }, 'tracing');

  let stopping: Promise<{ lost: number }> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      clearInterval(idleTimer);
      flushOnTick = false;
      clearInterval(clockTimer);
      clearInterval(trimTimer);
      observer?.beforeStop();
      await session!.stop((r) => pipeline.push(r));
      await pipeline.shutdown();
      await observer?.close();
      const counters = session!.counters();
      const stats = pipeline.stats();
      for (const n of notices.atStop(pipeline.correlator.orphanSpansByPid)) tell(n);
      const spooled = spool && { ...spool.counters, pendingSpans: spool.pendingSpans, dir: spool.dir };
      const featuresOff = session!.featuresOff.map((f) => f.feature);
      const uprobes = session!.uprobes ? { ...session!.uprobes.stats, calls: calls.counters } : undefined;
      const stopped = { kernel: counters, spans: stats, spool: spooled ?? undefined, uprobes, featuresOff };
      const lost = runDataLost(stopped);
      log[lost ? 'warn' : 'info'](stopped, lost ? 'stopped; data was lost' : 'stopped');
      return { lost };
    })());
  return { session, pipeline, stop };
}

/** The spool, when --spool or --spool-dir asks for one and spans go to OTLP. Throws KSPAN_ERR_SPOOL. */
function openSpool(config: RunConfig, otlp: boolean, log: Logger): SpanSpool | undefined {
  if (!config.spool && !config.spoolDir) return undefined;
  if (!otlp) {
    log.warn('spool: spans go to the terminal, not to OTLP: nothing is spooled');
    return undefined;
  }
  const spool = new SpanSpool({ dir: config.spoolDir ?? DEFAULT_SPOOL_DIR, maxBytes: config.spoolMaxMb * 1024 * 1024, logger: log });
  const c = spool.counters;
  if (c.recoveredSpans || c.tornSegments) {
    log.info({ spans: c.recoveredSpans, requests: c.recoveredRecords, tornSegments: c.tornSegments, tornBytes: c.tornBytes, dir: spool.dir }, 'spool: spans left by an earlier run are sent first');
  }
  return spool;
}

/**
 * What `kspan run`'s stop line counts as lost, from the line's own fields: the kernel's records,
 * function-call records it could not decode, spans not exported, and torn spool segments.
 */
export function runDataLost(stop: RunStopCounts): number {
  return recordsLost(stop.kernel) + (stop.uprobes?.decodeErrors ?? 0) + exportSpansLost(stop.spans.export) + (stop.spool?.tornSegments ?? 0);
}

/** The fields of `kspan run`'s stop line that count losses. */
export interface RunStopCounts {
  kernel: TracerCounters;
  spans: { export: ExportCounters };
  uprobes?: { decodeErrors: number };
  spool?: { tornSegments: number };
}

export async function runCommand(config: RunConfig, log: Logger): Promise<number> {
  // Signal handlers go in before "tracing" is announced: a SIGTERM right after
  // it must still flush and exit 0.
  const stop = waitForStop(config.duration);
  let agent: AgentHandle;
  try {
    // Bound before the kernel is touched: a port in use fails the start.
    const metrics = config.metricsListen || config.metricsOtlpEndpoint
      ? await (await import('../metrics/metrics-server.ts')).AgentMetrics.start({ listen: config.metricsListen, otlpEndpoint: config.metricsOtlpEndpoint, otlpIntervalMs: config.metricsOtlpIntervalMs, log })
      : undefined;
    agent = startAgent({ ...config, metrics, onTargetsGone: () => stop.end(TARGETS_GONE) }, log);
  } catch (err) {
    stop.cancel();
    throw err;
  }
  const why = await stop;
  log.info({ why }, 'stopping');
  const { lost } = await agent.stop();
  return lost ? EXIT.dataLost : EXIT.ok;
}
