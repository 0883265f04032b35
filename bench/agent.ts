/**
 * End-to-end cost of `kspan run` on a Node 24 HTTP service (NodeSDK + http
 * instrumentation + kspan/publisher, SDK spans discarded;
 * test/fixtures/nodejs/traced-server.cjs, `GET /ids`) loaded by wrk, in rounds
 * that alternate between untraced, the floor (bpf/bench.bpf.c's counter on the
 * same hooks, filtered to the service's pid) and traced by
 * `bin/kspan run --pid <service>` exporting over OTLP gRPC to a receiver in its
 * own process. One service process serves every round, so the sides differ only
 * by what is attached to it.
 *
 * Two loads:
 * - paced: about 10 k req/s. Plain wrk has no -R (that is wrk2), so each of
 *   `pacedConnections` connections waits a random 0-20 ms before each request (a
 *   Lua delay()); the rate is what that achieves, reported per side.
 * - saturated: `saturatedConnections` connections back to back: the most the
 *   service does, and what the agent takes from it on this machine's cores.
 *
 * Per side: throughput and wrk's latency (ratios to untraced, paired by round),
 * the service's CPU per request, BPF ns per request (floor and kspan), and per
 * traced round the agent's CPU per 1000 requests, RSS and exit counters (see
 * rounds.ts).
 *
 *   node bench/agent.ts [seconds=5] [rounds=3] [pacedConnections=110] [saturatedConnections=8]
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProcessGroup } from '../test/helpers/processes.ts';
import { startTracedServer } from '../test/helpers/traced-server.ts';
import { enableBpfStats, EXIT_ON_STDIN_END, Floor, median, startReceiver, wrkAsync } from './harness.ts';
import { type Mode, pairedRatio, progMedians, runRounds, type Sample, spread, sumCounters } from './rounds.ts';

export interface NodeOptions {
  seconds: number;
  rounds: number;
  pacedConnections: number;
  saturatedConnections: number;
  /** Ctx.warmupSeconds (bench/rounds.ts): default DEFAULT_WARMUP_SECONDS. */
  warmupSeconds?: number;
  log: (line: string) => void;
}

const LOADS = ['paced', 'saturated'] as const;
const SIDES = ['untraced', 'floor', 'kspan'] as const;

function summarize(samples: Record<string, Sample[]>, load: (typeof LOADS)[number]) {
  const untraced = samples[`${load} untraced`];
  const floor = samples[`${load} floor`];
  const kspan = samples[`${load} kspan`];
  const side = (s: Sample[]) => ({
    rps: spread(s.map((x) => x.rps)),
    p50ms: median(s.map((x) => x.p50ms)),
    p99ms: median(s.map((x) => x.p99ms)),
    throughputRatio: pairedRatio(s, untraced, (x) => x.rps),
    p99Ratio: pairedRatio(s, untraced, (x) => x.p99ms),
    serverCpuUsPerReq: median(s.map((x) => x.serverCpuUsPerReq)),
  });
  const counters = sumCounters(kspan);
  return {
    untraced: side(untraced),
    floor: { ...side(floor), bpfNsPerReq: spread(floor.map((x) => x.bpf!.nsPerReq)) },
    kspan: {
      ...side(kspan),
      bpfNsPerReq: spread(kspan.map((x) => x.bpf!.nsPerReq)),
      bpfRatioToFloor: pairedRatio(kspan, floor, (x) => x.bpf!.nsPerReq),
      agentCpuMsPer1000Req: spread(kspan.map((x) => x.agent!.cpuMsPer1000Req)),
      warmupCpuMsPer1000Req: median(kspan.map((x) => x.agent!.warmupCpuMsPer1000Req)),
      agentCores: median(kspan.map((x) => (x.agent!.cpuMsPer1000Req * x.rps) / 1e6)),
      progs: progMedians(kspan),
      counters,
      recordsPerReq: counters.records / counters.requests,
      spansPerReq: counters.spansExported / counters.requests,
      rssIdle: median(kspan.map((x) => x.agent!.rssIdle)),
      rssSteady: median(kspan.map((x) => x.agent!.rssSteady)),
    },
  };
}

/** Runs the Node service's rounds; the caller owns the statistics switch. */
export async function nodeBench(opts: NodeOptions) {
  const group = new ProcessGroup();
  const floor = Floor.open();
  const dir = mkdtempSync(join(tmpdir(), 'kspan-bench-agent-'));
  let server: Awaited<ReturnType<typeof startTracedServer>> | undefined;
  try {
    const pacer = join(dir, 'pace.lua');
    // Random think times desynchronise the connections (a fixed delay makes bursts).
    writeFileSync(pacer, 'function delay() return math.random(0, 20) end\n');
    server = await startTracedServer(group, {
      publisher: 'path',
      nodeArgs: ['--import', EXIT_ON_STDIN_END],
      env: { FIXTURE_DISCARD_SPANS: '1' },
      serviceName: 'bench-agent',
    });
    floor.addPid(server.pid);
    const receiver = await startReceiver(group);
    const wrkArgs = {
      paced: ['-t1', `-c${opts.pacedConnections}`, '-s', pacer],
      saturated: ['-t1', `-c${opts.saturatedConnections}`],
    };
    await wrkAsync([...wrkArgs.saturated, '-d2s'], `http://127.0.0.1:${server.port}/ids`); // warm up (JIT, sockets)
    const modes: Mode[] = LOADS.flatMap((load) => SIDES.map((kind): Mode => ({ key: `${load} ${kind}`, kind, wrkArgs: wrkArgs[load] })));
    const samples = await runRounds({ group, server, receiver, floor, path: '/ids', log: opts.log, warmupSeconds: opts.warmupSeconds }, modes, opts.rounds, opts.seconds, 'node');
    return {
      node: process.version,
      seconds: opts.seconds,
      rounds: opts.rounds,
      pacedConnections: opts.pacedConnections,
      saturatedConnections: opts.saturatedConnections,
      paced: summarize(samples, 'paced'),
      saturated: summarize(samples, 'saturated'),
      samples,
    };
  } finally {
    floor.close();
    await group.killAll();
    server?.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const arg = (i: number, d: number) => Number(process.argv[2 + i] ?? d);
  const stats = enableBpfStats();
  try {
    const r = await nodeBench({
      seconds: arg(0, 5),
      rounds: arg(1, 3),
      pacedConnections: arg(2, 110),
      saturatedConnections: arg(3, 8),
      log: (l) => process.stderr.write(l + '\n'),
    });
    console.log(JSON.stringify({ ...r, samples: undefined }, null, 2));
  } finally {
    stats.close();
  }
}
