/**
 * `kspan run`: the agent. Kernel records of the selected processes → socket
 * correlator → kernel spans under the targets' own spans → OTLP (or, with no
 * endpoint configured, trees on the terminal). Stops after --duration or on
 * SIGINT/SIGTERM: flushes the kernel's open aggregates, ends every open span,
 * drains the export queue, then exits 0.
 */
import { parseArgs } from 'node:util';
import type { SpanExporter } from '@opentelemetry/sdk-trace';
import { KernelClock } from '../kernel/clock.ts';
import { setLibbpfLogSink } from '../kernel/libbpf-log.ts';
import type { Logger } from '../core/logger.ts';
import { contextAttributes } from '../spans/context-attributes.ts';
import { resolveExportTarget } from '../export/export-pipeline.ts';
import { SpanPipeline } from '../spans/span-pipeline.ts';
import { OrphanNotices, type Notice } from '../spans/orphan-notices.ts';
import { TargetResources } from '../export/target-resources.ts';
import { TracingSession } from '../kernel/tracing-session.ts';
import { warnFeatureOff } from './kernel-warnings.ts';
import { parseDuration, parseIoHooks, parseMaxSockets, parsePids, waitForStop } from './options.ts';

export const RUN_OPTIONS = {
  pid: { type: 'string', multiple: true },
  duration: { type: 'string' },
  orphans: { type: 'boolean', default: false },
  'otlp-endpoint': { type: 'string' },
  'otlp-protocol': { type: 'string' },
  console: { type: 'boolean', default: false },
  'io-hooks': { type: 'string', default: 'auto' },
  'idle-flush-ms': { type: 'string', default: '500' },
  'max-sockets': { type: 'string' },
} as const;

/** How often the kernel is asked to close idle aggregates, and the clock offset re-measured. */
const IDLE_FLUSH_TICK_MS = 250;
const CLOCK_REFRESH_MS = 60_000;

export interface AgentHandle {
  session: TracingSession;
  pipeline: SpanPipeline;
  stop(): Promise<void>;
}

export interface AgentOptions {
  pids: number[];
  /** Spans go here instead of OTLP or the console (embedding: `kspan demo`). */
  exporter?: SpanExporter;
  orphans?: boolean;
  otlpEndpoint?: string;
  otlpProtocol?: string;
  console?: boolean;
  ioHooks?: string;
  idleFlushMs?: number;
  maxSockets?: number;
}

/** Starts the agent on `pids`; `stop()` flushes everything and resolves when exported. */
export function startAgent(opts: AgentOptions, log: Logger): AgentHandle {
  setLibbpfLogSink((level, line) => log[level === 'warn' ? 'warn' : 'debug']({ libbpf: line }));
  const clock = new KernelClock();
  const target = resolveExportTarget({ endpoint: opts.otlpEndpoint, protocol: opts.otlpProtocol, console: opts.console });
  let session: TracingSession | undefined;
  const resources = new TargetResources((pid) => session?.reader.target(pid)?.process.resource);
  // Kept past the reader's untrack: spans ended at a target's exit still need its key map.
  const keyMaps = new Map<number, readonly string[]>();
  const keyMapFor = (pid: number) => keyMaps.get(pid) ?? session?.reader.target(pid)?.process.threadLocal?.keyMap;
  const notices = new OrphanNotices(opts.orphans ?? false);
  const tell = (n: Notice | null) => n && log[n.level](n.msg);
  const pipeline = new SpanPipeline({
    resourceFor: (pid) => resources.resourceFor(pid),
    extraAttributes: (k) => contextAttributes(k.parent, keyMapFor(k.pid)),
    clockOffsetNs: () => clock.offsetNs,
    target,
    exporter: opts.exporter,
    orphans: opts.orphans,
    logger: log,
  });
  session = TracingSession.open({
    ioPath: parseIoHooks(opts.ioHooks),
    maxSockets: opts.maxSockets,
    onRecord: (r) => pipeline.push(r),
    onTarget: (t) => {
      resources.set(t.pid, t.process.resource);
      if (t.process.threadLocal) keyMaps.set(t.pid, t.process.threadLocal.keyMap);
      else keyMaps.delete(t.pid);
      log.info({ pid: t.pid, scheme: t.scheme ?? 'none', model: t.model, reason: t.reason, service: t.process.resource['service.name'] }, 'target');
      tell(notices.target(t));
    },
    onTargetExit: (pid) => {
      log.info({ pid }, 'target exited');
      pipeline.processExited(pid);
      keyMaps.delete(pid);
    },
    onDecodeError: (err) => log.error({ err }, 'record dropped: decode failed'),
    onTargetError: (pid, err) => log.warn({ pid, err }, 'cannot read the target\'s trace context; tracing it without'),
    onFeatureOff: warnFeatureOff(log),
  });
  for (const pid of opts.pids) session.addPid(pid);
  session.start();
  const idleNs = BigInt(Math.round((opts.idleFlushMs ?? 500) * 1e6));
  const idleTimer = setInterval(() => session!.tracer.flushIdle(idleNs), IDLE_FLUSH_TICK_MS);
  const clockTimer = setInterval(() => clock.refresh(), CLOCK_REFRESH_MS);
  log.info({ pids: opts.pids, ioPath: session.ioPath, export: opts.exporter ? 'in-process' : target }, 'tracing');

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      clearInterval(idleTimer);
      clearInterval(clockTimer);
      await session!.stop((r) => pipeline.push(r));
      await pipeline.shutdown();
      const counters = session!.counters();
      const stats = pipeline.stats();
      for (const n of notices.atStop(pipeline.correlator.orphanSpansByPid)) tell(n);
      const lost = counters.KSPAN_C_RINGBUF_FULL + counters.KSPAN_C_SOCK_TABLE_FULL + counters.decode_errors +
        stats.export.droppedQueueFull + stats.export.droppedFailed + stats.export.droppedShutdown;
      const featuresOff = session!.featuresOff.map((f) => f.feature);
      log[lost ? 'warn' : 'info']({ kernel: counters, spans: stats, featuresOff }, lost ? 'stopped; data was lost' : 'stopped');
    })());
  return { session, pipeline, stop };
}

export async function runCommand(args: string[], log: Logger): Promise<number> {
  const { values } = parseArgs({ args, options: RUN_OPTIONS });
  const pids = parsePids(values.pid);
  const duration = parseDuration(values.duration);
  // Signal handlers go in before "tracing" is announced: a SIGTERM right after
  // it must still flush and exit 0.
  const stop = waitForStop(duration);
  let agent: AgentHandle;
  try {
    agent = startAgent(
      {
        pids,
        orphans: values.orphans,
        otlpEndpoint: values['otlp-endpoint'],
        otlpProtocol: values['otlp-protocol'],
        console: values.console,
        ioHooks: values['io-hooks'],
        idleFlushMs: Number(values['idle-flush-ms']),
        maxSockets: parseMaxSockets(values['max-sockets']),
      },
      log,
    );
  } catch (err) {
    stop.cancel();
    throw err;
  }
  const why = await stop;
  log.info({ why }, 'stopping');
  await agent.stop();
  return 0;
}
