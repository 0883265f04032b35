/**
 * Binds the self-metrics to a running agent: BPF run-time statistics turned on
 * for its lifetime, and every metric read from the session's and the span
 * pipeline's own counters at each scrape or push.
 */
import type { Logger } from '../core/logger.ts';
import type { TracingSession } from '../kernel/tracing-session.ts';
import type { SpanPipeline } from '../spans/span-pipeline.ts';
import type { AgentSnapshot } from './agent-metrics.ts';
import { BpfProgramStats } from './bpf-program-stats.ts';
import type { AgentMetrics } from './metrics-server.ts';

export interface AgentObserver {
  /** Takes the programs' last reading: call it before the session stops (its programs are closed then). */
  beforeStop(): void;
  /** Pushes the final values, closes the endpoint, turns the statistics off. */
  close(): Promise<void>;
}

export function observeAgent(
  metrics: AgentMetrics,
  agent: { session: TracingSession; pipeline: SpanPipeline; orphans: boolean },
  log: Logger,
): AgentObserver {
  const { session, pipeline } = agent;
  const programs = BpfProgramStats.enable();
  if (!programs.enabled) {
    log.warn(
      { err: programs.enableError },
      'BPF run-time statistics are off (BPF_ENABLE_STATS needs CAP_SYS_ADMIN): kspan.bpf.program.* are not reported; ' +
        'grant CAP_SYS_ADMIN or set sysctl kernel.bpf_stats_enabled=1',
    );
  }
  const obj = session.tracer.object;
  programs.watch(obj, obj.programNames.filter((n) => obj.autoload(n)));
  metrics.observe((): AgentSnapshot => {
    const counters = session.counters();
    return {
      kernel: counters,
      context: counters.context,
      spans: pipeline.stats(),
      exportQueueCapacity: pipeline.exports.maxQueueSize,
      orphansExported: agent.orphans,
      targets: { traced: session.tracer.pids.length, ...session.tracer.targetStats },
      programs: programs.read(),
      bpfStatsEnabled: programs.enabled,
      cpu: process.cpuUsage(),
      rssBytes: process.memoryUsage.rss(),
    };
  });
  return {
    beforeStop: () => programs.freeze(),
    close: async () => {
      await metrics.shutdown();
      programs.close();
    },
  };
}
