/**
 * The native workload: bench/fixtures/native_server.c (keep-alive HTTP/1.1, one
 * thread per connection, an OTEP 4947 context published around each 512 B
 * answer) loaded by `wrk -t1 -c16` with a fresh traceparent per request
 * (bench/traceparent.lua), the sampled flag on 10 % of requests or on all of
 * them. Alternating rounds of: untraced; the floor; `kspan run` at 10 % and at
 * 100 % sampled; `kspan run --io-hooks syscalls` (the fallback path) at 10 %.
 *
 *   node bench/native.ts [--seconds 5] [--rounds 3] [--connections 16]
 */
import { parseArgs } from 'node:util';
import { ProcessGroup } from '../test/helpers/processes.ts';
import { enableBpfStats, Floor, median, startNativeServer, startReceiver, TRACEPARENT_LUA, wrkAsync } from './harness.ts';
import { type Mode, pairedRatio, type ProgCost, progMedians, runRounds, type Sample, spread, sumCounters } from './rounds.ts';

export interface NativeOptions {
  seconds: number;
  rounds: number;
  connections: number;
  /** Ctx.warmupSeconds (bench/rounds.ts): default DEFAULT_WARMUP_SECONDS. */
  warmupSeconds?: number;
  log: (line: string) => void;
}

/** kspan's configurations: name → (flags, one request in N sampled). */
export const NATIVE_KSPAN = {
  'kspan 10 %': { args: [] as string[], every: 10 },
  'kspan 100 %': { args: [] as string[], every: 1 },
  'kspan fallback 10 %': { args: ['--io-hooks', 'syscalls'], every: 10 },
} as const;
export type NativeKspanMode = keyof typeof NATIVE_KSPAN;

export function nativeModes(connections: number): Mode[] {
  const wrkArgs = ['-t1', `-c${connections}`, '-s', TRACEPARENT_LUA];
  return [
    // Untraced and the floor do not read the context: the sampled share does not matter to them.
    { key: 'untraced', kind: 'untraced', wrkArgs, scriptArgs: ['10'] },
    { key: 'floor', kind: 'floor', wrkArgs, scriptArgs: ['10'] },
    ...Object.entries(NATIVE_KSPAN).map(([key, c]): Mode => ({ key, kind: 'kspan', agentArgs: [...c.args], wrkArgs, scriptArgs: [String(c.every)] })),
  ];
}

/** A program on the scheduler hooks: kspan's (`on_sched_*`) or the floor's (bpf/bench.bpf.c). */
export function isSchedProgram(name: string): boolean {
  return name.startsWith('on_sched_') || name === 'floor_switch' || name === 'floor_wakeup';
}

/**
 * The BPF time of the socket programs alone, kspan's or the floor's: every
 * program but the scheduler's, whose per-switch costs bench/sched-cost.ts
 * measures apart.
 */
export function socketProgramsNsPerReq(progs: readonly ProgCost[]): number {
  return progs.filter((p) => !isSchedProgram(p.name)).reduce((a, p) => a + p.nsPerReq, 0);
}

export function summarizeNative(samples: Record<string, Sample[]>) {
  const untraced = samples.untraced;
  const floor = samples.floor;
  const side = (key: string) => {
    const s = samples[key];
    const out: Record<string, unknown> = {
      rps: spread(s.map((x) => x.rps)),
      throughputRatio: pairedRatio(s, untraced, (x) => x.rps),
      p99Ratio: pairedRatio(s, untraced, (x) => x.p99ms),
      serverCpuUsPerReq: median(s.map((x) => x.serverCpuUsPerReq)),
    };
    if (s[0].bpf) {
      out.bpfNsPerReq = spread(s.map((x) => x.bpf!.nsPerReq));
      out.bpfRatioToFloor = pairedRatio(s, floor, (x) => x.bpf!.nsPerReq);
      // The socket hooks alone, against the floor's socket hooks alone.
      out.bpfSocketNsPerReq = spread(s.map((x) => socketProgramsNsPerReq(x.bpf!.progs)));
      out.bpfSocketRatioToFloor = pairedRatio(s, floor, (x) => socketProgramsNsPerReq(x.bpf!.progs));
      out.progs = progMedians(s);
    }
    if (s[0].agent) {
      out.agentCpuMsPer1000Req = spread(s.map((x) => x.agent!.cpuMsPer1000Req));
      out.receiverCpuMsPer1000Req = spread(s.map((x) => x.agent!.receiverCpuMsPer1000Req));
      out.warmupCpuMsPer1000Req = median(s.map((x) => x.agent!.warmupCpuMsPer1000Req));
      out.counters = sumCounters(s);
      out.rssIdle = median(s.map((x) => x.agent!.rssIdle));
      out.rssSteady = median(s.map((x) => x.agent!.rssSteady));
      out.rssMax = Math.max(...s.map((x) => x.agent!.rssMax));
    }
    return out;
  };
  return Object.fromEntries(Object.keys(samples).map((k) => [k, side(k)]));
}

/** Runs the native workload's rounds; the caller owns the statistics switch. */
export async function nativeBench(opts: NativeOptions) {
  const group = new ProcessGroup();
  const floor = Floor.open();
  try {
    const server = await startNativeServer(group);
    floor.addPid(server.pid);
    const receiver = await startReceiver(group);
    await wrkAsync(['-t1', `-c${opts.connections}`, '-d1s', '-s', TRACEPARENT_LUA], `http://127.0.0.1:${server.port}/`, ['10']); // warm-up
    const modes = nativeModes(opts.connections);
    const samples = await runRounds({ group, server, receiver, floor, log: opts.log, warmupSeconds: opts.warmupSeconds }, modes, opts.rounds, opts.seconds, 'native');
    return { connections: opts.connections, seconds: opts.seconds, rounds: opts.rounds, summary: summarizeNative(samples), samples };
  } finally {
    floor.close();
    await group.killAll();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { seconds: { type: 'string', default: '5' }, rounds: { type: 'string', default: '3' }, connections: { type: 'string', default: '16' } } });
  const stats = enableBpfStats();
  try {
    const r = await nativeBench({ seconds: Number(values.seconds), rounds: Number(values.rounds), connections: Number(values.connections), log: (l) => process.stderr.write(l + '\n') });
    console.log(JSON.stringify(r.summary, null, 2));
  } finally {
    stats.close();
  }
}
