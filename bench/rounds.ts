/**
 * Alternating rounds over one HTTP service: each round runs wrk once per mode
 * (untraced; the floor; `kspan run` with given flags), the order rotating from
 * round to round so drift (the VM's neighbours) hits every mode alike. Each run
 * measures throughput and latency (wrk), the service's CPU per request, the BPF
 * time per request (the kernel's run-time statistics, summed over the floor's or
 * the agent's programs, over the wrk run exactly), and for kspan the agent's CPU
 * per 1000 requests, its RSS (idle before the load, steady and peak under it),
 * its BPF maps' kernel memory and the counters of its exit log.
 */
import type { ProcessGroup } from '../test/helpers/processes.ts';
import type { WrkResult } from './wrk.ts';
import {
  cpuSeconds,
  type AgentCounters,
  type Floor,
  type MapInfo,
  mapsOf,
  median,
  progNames,
  progStats,
  type Receiver,
  RssSampler,
  rssBytes,
  sleep,
  startAgent,
  statsDelta,
  wrkAsync,
} from './harness.ts';

/**
 * The warm-up run's default length. The agent's CPU per request falls for about
 * its first 6 s under the native load at 10 % sampled, while V8 compiles (3 s
 * runs back to back: 2.4, 1.7, 1.25, 1.1, 1.1 ms per 1000 requests; 352, 99,
 * 22, 14 functions optimized; BENCHMARKS.md, "The agent's first seconds under
 * load"), so a measured run after 6 s of it prices the agent as it runs for
 * hours.
 */
export const DEFAULT_WARMUP_SECONDS = 6;

export interface Mode {
  key: string;
  kind: 'untraced' | 'floor' | 'kspan';
  /** `kspan run` flags beyond --pid and --otlp-endpoint. */
  agentArgs?: string[];
  /** wrk's options (before the URL). */
  wrkArgs: string[];
  /** The wrk script's arguments (after `--`). */
  scriptArgs?: string[];
}

export interface ProgCost {
  name: string;
  nsPerRun: number;
  runsPerReq: number;
  nsPerReq: number;
}

export interface Sample extends WrkResult {
  mode: string;
  round: number;
  serverCpuUsPerReq: number;
  /** BPF time over the wrk run (floor or kspan), per request. */
  bpf?: { nsPerReq: number; progs: ProgCost[] };
  agent?: {
    cpuMsPer1000Req: number;
    /**
     * The OTLP receiver's CPU over the same run (test/helpers/otlp-receiver.ts,
     * the local stand-in for a Collector): on the same two cores, the service
     * loses it too.
     */
    receiverCpuMsPer1000Req: number;
    /** Bytes: after the agent traces the target, before the load. */
    rssIdle: number;
    rssSteady: number;
    rssMax: number;
    /** The agent's CPU over the warm-up run, per 1000 of its requests (0 without a warm-up). */
    warmupCpuMsPer1000Req: number;
    /** Requests of the warm-up run: its spans are in the exit counters too. */
    warmupRequests: number;
    maps: MapInfo[];
    counters: AgentCounters;
    spansReceived: number;
  };
}

export interface Ctx {
  group: ProcessGroup;
  server: { pid: number; port: number };
  receiver: Receiver;
  /** Needed by floor modes only. */
  floor?: Floor;
  /** The wrk URL path (default /). */
  path?: string;
  /**
   * Seconds of the same load the agent runs before its measured run (default
   * DEFAULT_WARMUP_SECONDS; 0 for none): V8 compiles the agent's functions in its
   * first seconds under load, a cost a deployed agent pays once, which the
   * measured run would otherwise charge to its requests. Reported apart
   * (`warmupCpuMsPer1000Req`).
   */
  warmupSeconds?: number;
  log: (line: string) => void;
}

function bpfCost(before: Map<number, { id: number; runNs: number; runs: number }>, after: typeof before, names: Map<number, string>, requests: number) {
  const d = statsDelta(before, after);
  const byName = new Map<string, { runNs: number; runs: number }>();
  for (const p of d) {
    const name = names.get(p.id) ?? `prog ${p.id}`;
    const acc = byName.get(name) ?? { runNs: 0, runs: 0 };
    acc.runNs += p.runNs;
    acc.runs += p.runs;
    byName.set(name, acc);
  }
  const progs = [...byName].map(([name, s]) => ({
    name,
    nsPerRun: s.runs ? s.runNs / s.runs : 0,
    runsPerReq: s.runs / requests,
    nsPerReq: s.runNs / requests,
  }));
  progs.sort((a, b) => b.nsPerReq - a.nsPerReq);
  return { nsPerReq: d.reduce((a, p) => a + p.runNs, 0) / requests, progs };
}

/** One wrk run of `seconds` in `mode`. */
export async function measure(ctx: Ctx, mode: Mode, seconds: number, round: number): Promise<Sample> {
  const url = `http://127.0.0.1:${ctx.server.port}${ctx.path ?? '/'}`;
  const wrk = () => wrkAsync([...mode.wrkArgs, `-d${seconds}s`], url, mode.scriptArgs);
  if (mode.kind === 'untraced') {
    const cpu0 = cpuSeconds(ctx.server.pid);
    const r = await wrk();
    return { ...r, mode: mode.key, round, serverCpuUsPerReq: ((cpuSeconds(ctx.server.pid) - cpu0) * 1e6) / r.requests };
  }
  if (mode.kind === 'floor') {
    const floor = ctx.floor;
    if (!floor) throw new Error(`mode ${mode.key}: no floor loaded`);
    floor.attach();
    try {
      const before = floor.stats();
      const cpu0 = cpuSeconds(ctx.server.pid);
      const r = await wrk();
      const cpu = cpuSeconds(ctx.server.pid) - cpu0;
      return { ...r, mode: mode.key, round, serverCpuUsPerReq: (cpu * 1e6) / r.requests, bpf: bpfCost(before, floor.stats(), floor.names, r.requests) };
    } finally {
      floor.detach();
    }
  }
  const received0 = await ctx.receiver.count();
  const agent = await startAgent(ctx.group, ctx.server.pid, ctx.receiver.endpoint, mode.agentArgs);
  let stopped = false;
  try {
    await sleep(300); // the first target scan and the first idle flush are not the load
    const rssIdle = rssBytes(agent.pid);
    const warm = await warmUp(ctx, mode, url, agent.pid);
    const names = progNames([...progStats(agent.pid).keys()]);
    const rss = new RssSampler(agent.pid);
    const before = progStats(agent.pid);
    const agentCpu0 = cpuSeconds(agent.pid);
    const receiverCpu0 = cpuSeconds(ctx.receiver.proc.pid);
    const cpu0 = cpuSeconds(ctx.server.pid);
    const r = await wrk();
    const after = progStats(agent.pid);
    const serverCpu = cpuSeconds(ctx.server.pid) - cpu0;
    const { steady, max } = rss.stop();
    const agentCpu = (await settledCpu(agent.pid)) - agentCpu0;
    // The receiver has taken the run's last export once the agent has settled.
    const receiverCpu = cpuSeconds(ctx.receiver.proc.pid) - receiverCpu0;
    const maps = mapsOf(agent.pid);
    stopped = true;
    const counters = await agent.stop();
    return {
      ...r,
      mode: mode.key,
      round,
      serverCpuUsPerReq: (serverCpu * 1e6) / r.requests,
      bpf: bpfCost(before, after, names, r.requests),
      agent: {
        cpuMsPer1000Req: (agentCpu * 1e6) / r.requests,
        receiverCpuMsPer1000Req: (receiverCpu * 1e6) / r.requests,
        rssIdle,
        rssSteady: steady,
        rssMax: max,
        warmupCpuMsPer1000Req: warm.cpuMsPer1000Req,
        warmupRequests: warm.requests,
        maps,
        counters,
        spansReceived: (await ctx.receiver.count()) - received0,
      },
    };
  } finally {
    if (!stopped) agent.proc.child.kill('SIGKILL');
  }
}

/** The warm-up run of a kspan round (Ctx.warmupSeconds), until the agent has caught up with it. */
async function warmUp(ctx: Ctx, mode: Mode, url: string, agentPid: number): Promise<{ cpuMsPer1000Req: number; requests: number }> {
  const seconds = ctx.warmupSeconds ?? DEFAULT_WARMUP_SECONDS;
  if (seconds <= 0) return { cpuMsPer1000Req: 0, requests: 0 };
  const cpu0 = cpuSeconds(agentPid);
  const r = await wrkAsync([...mode.wrkArgs, `-d${seconds}s`], url, mode.scriptArgs);
  const cpu = (await settledCpu(agentPid)) - cpu0;
  return { cpuMsPer1000Req: (cpu * 1e6) / r.requests, requests: r.requests };
}

/**
 * The agent's CPU time once it has caught up with the load: what it spends on a
 * run's requests includes exporting their spans after wrk stops. Polls until a
 * quarter second passes with at most one clock tick of CPU, 5 s at most.
 */
async function settledCpu(pid: number): Promise<number> {
  let last = cpuSeconds(pid);
  for (const deadline = performance.now() + 5000; performance.now() < deadline; ) {
    await sleep(250);
    const now = cpuSeconds(pid);
    if (now - last <= 0.01) return now;
    last = now;
  }
  return last;
}

const mb = (b: number) => (b / 2 ** 20).toFixed(0);

/** "; agent errors: …" when the agent logged any at level error (why a record was lost), else "". */
export function agentErrorsNote(c: Pick<AgentCounters, 'errors'>): string {
  return c.errors.length ? `; agent errors: ${c.errors.join(' | ')}` : '';
}

export function describe(s: Sample): string {
  let out = `${s.mode}: ${Math.round(s.rps)} req/s, p99 ${s.p99ms} ms`;
  if (s.bpf) out += `, BPF ${s.bpf.nsPerReq.toFixed(0)} ns/req`;
  if (s.agent) {
    const c = s.agent.counters;
    out += `, agent ${s.agent.cpuMsPer1000Req.toFixed(1)} ms CPU/1000 req (receiver ${s.agent.receiverCpuMsPer1000Req.toFixed(1)}), RSS ${mb(s.agent.rssIdle)}→${mb(s.agent.rssSteady)} MB (max ${mb(s.agent.rssMax)})`;
    out += `, spans made ${c.spansMade} exported ${c.spansExported} dropped ${c.spansDropped}, records lost ${c.recordsLost}`;
    out += agentErrorsNote(c);
  }
  return out;
}

/** `rounds` rounds of every mode, the order rotating by one each round. */
export async function runRounds(ctx: Ctx, modes: Mode[], rounds: number, seconds: number, label: string): Promise<Record<string, Sample[]>> {
  const out: Record<string, Sample[]> = Object.fromEntries(modes.map((m) => [m.key, []]));
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < modes.length; i++) {
      const mode = modes[(i + r) % modes.length];
      const s = await measure(ctx, mode, seconds, r);
      out[mode.key].push(s);
      ctx.log(`${label} round ${r + 1}/${rounds} ${describe(s)}`);
    }
  }
  return out;
}

/** Median over rounds of f(a)/f(b), a and b from the same round. */
export function pairedRatio(a: Sample[], b: Sample[], f: (s: Sample) => number): number {
  return median(a.map((s, i) => f(s) / f(b[i])));
}

/** Median and range over rounds. */
export function spread(xs: number[]): { median: number; min: number; max: number } {
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
}

/** Per-program costs, median per program name over the samples. */
export function progMedians(samples: Sample[]): ProgCost[] {
  const names = new Set(samples.flatMap((s) => s.bpf?.progs.map((p) => p.name) ?? []));
  const out = [...names].map((name) => {
    const ps = samples.map((s) => s.bpf?.progs.find((p) => p.name === name)).filter((p): p is ProgCost => !!p);
    return {
      name,
      nsPerRun: median(ps.map((p) => p.nsPerRun)),
      runsPerReq: median(ps.map((p) => p.runsPerReq)),
      nsPerReq: median(ps.map((p) => p.nsPerReq)),
    };
  });
  return out.sort((a, b) => b.nsPerReq - a.nsPerReq);
}

/** Exit counters summed over samples. */
export function sumCounters(samples: Sample[]) {
  const t = { requests: 0, records: 0, spansMade: 0, unsampledSpans: 0, unsampledInKernel: 0, spansExported: 0, spansReceived: 0, spansDropped: 0, recordsLost: 0, ringbufFull: 0, sockTableFull: 0, decodeErrors: 0 };
  for (const s of samples) {
    const c = s.agent!.counters;
    t.requests += s.requests + s.agent!.warmupRequests;
    t.records += c.records;
    t.spansMade += c.spansMade;
    t.unsampledSpans += c.unsampledSpans;
    t.unsampledInKernel += c.unsampledInKernel;
    t.spansExported += c.spansExported;
    t.spansReceived += s.agent!.spansReceived;
    t.spansDropped += c.spansDropped;
    t.recordsLost += c.recordsLost;
    t.ringbufFull += c.lostBy.ringbufFull;
    t.sockTableFull += c.lostBy.sockTableFull;
    t.decodeErrors += c.lostBy.decodeErrors;
  }
  return t;
}
