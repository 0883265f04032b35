/**
 * End-to-end cost of `kspan run` on an HTTP service: a Node 24 service (NodeSDK +
 * http instrumentation + kspan/publisher, SDK spans discarded;
 * test/fixtures/nodejs/traced-server.cjs) loaded by wrk, in rounds that alternate
 * between untraced and traced by `bin/kspan run --pid <service>` exporting over
 * OTLP gRPC to a receiver in its own process. One service process serves every
 * round, so the two sides differ only by the agent.
 *
 * Two loads:
 * - paced: about 10 k req/s. Plain wrk has no -R (that is wrk2), so each of
 *   `pacedConnections` connections waits a random 0-20 ms before each request (a
 *   Lua delay()); the rate is what that achieves, reported per side.
 * - saturated: `saturatedConnections` connections back to back: the most the
 *   service does, and what the agent takes from it on this machine's cores.
 *
 * Per side: throughput and wrk's p50/p99 latency (ratios traced/untraced, paired
 * by round); per traced round, from /proc/PID/stat and the agent's exit log:
 * agent CPU (utime+stime) per 1000 requests, the service's own CPU per request
 * (BPF runs in its syscalls), kernel records per request, spans exported, and lost
 * records (ring buffer full, socket table full, undecodable, export drops).
 *
 *   node bench/agent.ts [seconds=5] [rounds=5] [pacedConnections=110] [saturatedConnections=8]
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KSPAN_BIN } from '../test/helpers/kspan-cli.ts';
import { ProcessGroup, type Proc } from '../test/helpers/processes.ts';
import { REPO_ROOT } from '../test/helpers/build-fixture.ts';
import { startTracedServer, type TracedServer } from '../test/helpers/traced-server.ts';
import { cpuSeconds, runWrk, type WrkResult } from './wrk.ts';

const seconds = Number(process.argv[2] ?? 5);
const rounds = Number(process.argv[3] ?? 5);
const pacedConnections = Number(process.argv[4] ?? 110);
const saturatedConnections = Number(process.argv[5] ?? 8);

type Load = 'paced' | 'saturated';

function wrk(server: TracedServer, load: Load, secs: number, pacer: string): WrkResult {
  const args = ['-t1', `-d${secs}s`];
  if (load === 'paced') args.push(`-c${pacedConnections}`, '-s', pacer);
  else args.push(`-c${saturatedConnections}`);
  return runWrk(args, `http://127.0.0.1:${server.port}/ids`);
}

/** The OTLP gRPC receiver in its own process (counting spans off the wire, no decoding). */
async function startReceiver(group: ProcessGroup): Promise<{ proc: Proc; endpoint: string; count(): Promise<number> }> {
  const proc = group.start(process.execPath, [join(REPO_ROOT, 'test/helpers/otlp-receiver.ts'), '--no-decode'], {
    stdio: ['pipe', 'pipe', 'pipe', 'ipc'],
  });
  const port = JSON.parse((await proc.waitLine(/^\{"port":\d+\}$/))[0]).port as number;
  const count = () =>
    new Promise<number>((resolve) => {
      proc.child.once('message', (m: { spans: number }) => resolve(m.spans));
      proc.child.send('count');
    });
  return { proc, endpoint: `http://127.0.0.1:${port}`, count };
}

interface AgentExit {
  kernel: Record<string, number | Record<string, number>>;
  spans: {
    correlator: { records: number; spans: number; orphanSpans: number };
    export: { exported: number; droppedQueueFull: number; droppedFailed: number; droppedShutdown: number };
  };
  msg: string;
}

interface Round extends WrkResult {
  serverCpuUsPerReq: number;
  agent?: {
    cpuMsPer1000Req: number;
    records: number;
    recordsPerReq: number;
    spansExported: number;
    spansReceived: number;
    lost: Record<string, number>;
    stopMs: number;
    receiverCpuMsPer1000Req: number;
  };
}

async function untracedRound(server: TracedServer, load: Load, pacer: string): Promise<Round> {
  const cpu0 = cpuSeconds(server.pid);
  const r = wrk(server, load, seconds, pacer);
  return { ...r, serverCpuUsPerReq: ((cpuSeconds(server.pid) - cpu0) * 1e6) / r.requests };
}

async function tracedRound(
  group: ProcessGroup,
  server: TracedServer,
  receiver: Awaited<ReturnType<typeof startReceiver>>,
  load: Load,
  pacer: string,
): Promise<Round> {
  const received0 = await receiver.count();
  const agent = group.start(KSPAN_BIN, ['run', '--pid', String(server.pid), '--otlp-endpoint', receiver.endpoint, '--log-level', 'info']);
  await agent.waitStderr(/"msg":"tracing"/, 30_000);
  await agent.waitStderr(/"msg":"target"/, 10_000);
  const agentCpu0 = cpuSeconds(agent.pid);
  const receiverCpu0 = cpuSeconds(receiver.proc.pid);
  const cpu0 = cpuSeconds(server.pid);
  const r = wrk(server, load, seconds, pacer);
  const agentCpu = cpuSeconds(agent.pid) - agentCpu0;
  const serverCpu = cpuSeconds(server.pid) - cpu0;
  const receiverCpu = cpuSeconds(receiver.proc.pid) - receiverCpu0;
  const t0 = performance.now();
  agent.child.kill('SIGTERM');
  const { code } = await agent.exited;
  const stopMs = performance.now() - t0;
  if (code !== 0) throw new Error(`kspan run exited ${code}:\n${agent.stderr.join('\n')}`);
  const line = agent.stderr.find((l) => /"msg":"stopped/.test(l));
  if (!line) throw new Error(`no exit counters:\n${agent.stderr.join('\n')}`);
  const exit = JSON.parse(line) as AgentExit;
  const k = exit.kernel as Record<string, number>;
  const e = exit.spans.export;
  const records = exit.spans.correlator.records;
  return {
    ...r,
    serverCpuUsPerReq: (serverCpu * 1e6) / r.requests,
    agent: {
      cpuMsPer1000Req: (agentCpu * 1e3 * 1000) / r.requests,
      records,
      recordsPerReq: records / r.requests,
      spansExported: e.exported,
      spansReceived: (await receiver.count()) - received0,
      lost: {
        ringbufFull: k.KSPAN_C_RINGBUF_FULL,
        sockTableFull: k.KSPAN_C_SOCK_TABLE_FULL,
        decodeErrors: k.decode_errors,
        exportQueueFull: e.droppedQueueFull,
        exportFailed: e.droppedFailed,
        exportShutdown: e.droppedShutdown,
      },
      stopMs,
      receiverCpuMsPer1000Req: (receiverCpu * 1e3 * 1000) / r.requests,
    },
  };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const r3 = (x: number) => +x.toFixed(3);

function side(rs: Round[]) {
  return {
    rps: Math.round(median(rs.map((r) => r.rps))),
    meanMs: median(rs.map((r) => r.meanMs)),
    p50ms: median(rs.map((r) => r.p50ms)),
    p99ms: median(rs.map((r) => r.p99ms)),
    serverCpuUsPerReq: r3(median(rs.map((r) => r.serverCpuUsPerReq))),
  };
}

function summarize(untraced: Round[], traced: Round[]) {
  const ratio = (f: (r: Round) => number) => r3(median(traced.map((t, i) => f(t) / f(untraced[i]))));
  const agents = traced.map((t) => t.agent!);
  const lostTotal = agents.reduce((a, x) => a + Object.values(x.lost).reduce((b, y) => b + y, 0), 0);
  return {
    untraced: side(untraced),
    traced: side(traced),
    // traced / untraced, paired by round (back to back), median over rounds
    throughputRatio: ratio((r) => r.rps),
    meanLatencyRatio: ratio((r) => r.meanMs),
    p50Ratio: ratio((r) => r.p50ms),
    p99Ratio: ratio((r) => r.p99ms),
    serverCpuRatio: ratio((r) => r.serverCpuUsPerReq),
    agentCpuMsPer1000Req: r3(median(agents.map((a) => a.cpuMsPer1000Req))),
    receiverCpuMsPer1000Req: r3(median(agents.map((a) => a.receiverCpuMsPer1000Req))),
    agentCores: r3(median(traced.map((t) => (t.agent!.cpuMsPer1000Req * t.rps) / 1e6))),
    recordsPerReq: r3(median(agents.map((a) => a.recordsPerReq))),
    spansPerReq: r3(median(traced.map((t) => t.agent!.spansExported / t.requests))),
    spansExportedEqualsReceived: agents.every((a) => a.spansExported === a.spansReceived),
    lostRecordsTotal: lostTotal,
  };
}

const group = new ProcessGroup();
const dir = mkdtempSync(join(tmpdir(), 'kspan-bench-agent-'));
try {
  const pacer = join(dir, 'pace.lua');
  // Random think times desynchronise the connections (a fixed delay makes bursts).
  writeFileSync(pacer, 'function delay() return math.random(0, 20) end\n');
  const server = await startTracedServer(group, { publisher: 'path', env: { FIXTURE_DISCARD_SPANS: '1' }, serviceName: 'bench-agent' });
  const receiver = await startReceiver(group);
  wrk(server, 'saturated', 2, pacer); // warm up (JIT, sockets)
  const results: Record<Load, { untraced: Round[]; traced: Round[] }> = {
    paced: { untraced: [], traced: [] },
    saturated: { untraced: [], traced: [] },
  };
  for (let r = 0; r < rounds; r++) {
    for (const load of ['paced', 'saturated'] as const) {
      // Alternate which side goes first, so drift (noisy neighbours) hits both alike.
      const order = r % 2 === 0 ? (['untraced', 'traced'] as const) : (['traced', 'untraced'] as const);
      for (const side of order) {
        const round = side === 'untraced' ? await untracedRound(server, load, pacer) : await tracedRound(group, server, receiver, load, pacer);
        results[load][side].push(round);
        process.stderr.write(`round ${r + 1}/${rounds} ${load} ${side}: ${Math.round(round.rps)} req/s, p50 ${round.p50ms} ms, p99 ${round.p99ms} ms` +
          (round.agent ? `, agent ${round.agent.cpuMsPer1000Req.toFixed(1)} ms CPU/1000 req, ${round.agent.recordsPerReq.toFixed(3)} records/req, lost ${JSON.stringify(round.agent.lost)}` : '') + '\n');
      }
    }
  }
  console.log(JSON.stringify({
    node: process.version,
    kernel: execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim(),
    cpus: Number(execFileSync('nproc', { encoding: 'utf8' })),
    seconds,
    rounds,
    pacedConnections,
    saturatedConnections,
    paced: summarize(results.paced.untraced, results.paced.traced),
    saturated: summarize(results.saturated.untraced, results.saturated.traced),
    rounds_: results,
  }, null, 2));
} finally {
  await group.killAll();
  rmSync(dir, { recursive: true, force: true });
}
