/**
 * For the discovery, selector and policy tests: the pre-fork server fixture
 * (test/fixtures/discovery/prefork_server.c) built as a publisher and as a
 * plain server, a one-line client, and the agent's BPF objects as the kernel
 * lists them (from /proc/PID/fdinfo, not from the agent's own word).
 */
import { execFileSync } from 'node:child_process';
import { connect } from 'node:net';
import { join } from 'node:path';
import { buildFixture, INCLUDE_FLAG, THREAD_CTX_HEADER } from './build-fixture.ts';
import { stopLine } from './kspan-cli.ts';
import { fdinfoTexts, type Proc, type ProcessGroup } from './processes.ts';

let dir: string | undefined;

/** The directory holding `pub_server` (publishes otel_thread_ctx_v1) and `plain_server` (publishes nothing). */
export function preforkDir(): string {
  dir ??= buildFixture({
    name: 'prefork-server',
    sources: ['test/fixtures/discovery/prefork_server.c', 'test/fixtures/tls/otel_ctx_writer.c', THREAD_CTX_HEADER],
    steps: [
      { out: 'pub_server', cmd: ['gcc', '-O2', '-Wall', '-rdynamic', INCLUDE_FLAG, '{prefork_server.c}', '{otel_ctx_writer.c}', '-o', 'pub_server'] },
      { out: 'plain_server', cmd: ['gcc', '-O2', '-Wall', '-DNO_PUBLISH', '{prefork_server.c}', '-o', 'plain_server'] },
    ],
  });
  return dir;
}

export interface Server {
  proc: Proc;
  port: number;
  workers: number[];
}

/** Starts `pub_server` or `plain_server` and waits for its port (and its workers, when it forks them at once). */
export async function startPrefork(group: ProcessGroup, which: 'pub_server' | 'plain_server', args: string[] = [], opts: { cwdCopy?: string } = {}): Promise<Server> {
  const bin = opts.cwdCopy ?? join(preforkDir(), which);
  const proc = group.start(bin, args);
  const port = Number((await proc.waitLine(/^port (\d+)$/))[1]);
  const n = args.includes('--workers') && !args.includes('--fork-on-stdin') ? Number(args[args.indexOf('--workers') + 1]) : 0;
  return { proc, port, workers: await waitWorkers(proc, n) };
}

/** The pids of the first `n` "worker PID" lines. */
export async function waitWorkers(proc: Proc, n: number): Promise<number[]> {
  for (let i = 0; i < 200 && proc.lines.filter((l) => l.startsWith('worker ')).length < n; i++) await new Promise((r) => setTimeout(r, 25));
  const pids = proc.lines.filter((l) => l.startsWith('worker ')).map((l) => Number(l.slice(7)));
  if (pids.length < n) throw new Error(`expected ${n} workers, saw ${pids.length}`);
  return pids.slice(0, n);
}

export interface Exchange {
  traceId: string;
  spanId: string;
  /** The pid that answered. */
  pid: number;
  /** The client's port: the server's records name it as their peer. */
  localPort: number;
  /** CLOCK_MONOTONIC (as bpf_ktime_get_ns) before connecting and after the answer. */
  startNs: bigint;
  endNs: bigint;
}

let seq = 0;
/** One connection: sends "<trace> <span>\n", reads "ok PID". */
export function request(port: number): Promise<Exchange> {
  const n = ++seq;
  const traceId = `${process.pid.toString(16).padStart(8, '0')}${'0'.repeat(16)}${n.toString(16).padStart(8, '0')}`;
  const spanId = `${'ab'.repeat(4)}${n.toString(16).padStart(8, '0')}`;
  const startNs = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port });
    let got = '';
    s.setEncoding('utf8');
    let localPort = 0;
    s.on('connect', () => {
      localPort = s.localPort ?? 0;
      s.write(`${traceId} ${spanId}\n`);
    });
    s.on('data', (d) => (got += d));
    s.on('error', reject);
    s.on('close', () => {
      const m = /^ok (\d+)/.exec(got);
      if (!m) return reject(new Error(`no answer from port ${port}: ${JSON.stringify(got)}`));
      resolve({ traceId, spanId, pid: Number(m[1]), localPort, startNs, endNs: process.hrtime.bigint() });
    });
  });
}

/** The ids of the BPF programs and maps a process holds open, from /proc/PID/fdinfo. */
export function heldBpfObjects(pid: number): { progIds: number[]; mapIds: number[] } {
  const progIds: number[] = [];
  const mapIds: number[] = [];
  for (const info of fdinfoTexts(pid)) {
    const p = /^prog_id:\s*(\d+)$/m.exec(info);
    if (p) progIds.push(Number(p[1]));
    const m = /^map_id:\s*(\d+)$/m.exec(info);
    if (m) mapIds.push(Number(m[1]));
  }
  return { progIds: [...new Set(progIds)].sort((a, b) => a - b), mapIds: [...new Set(mapIds)].sort((a, b) => a - b) };
}

/** The agent's map called `name` (bpftool's view). */
export function agentMapId(agentPid: number, name: string): number {
  for (const id of heldBpfObjects(agentPid).mapIds) {
    const m = JSON.parse(execFileSync('bpftool', ['map', 'show', 'id', String(id), '--json'], { encoding: 'utf8' })) as { name?: string };
    if (m.name === name) return id;
  }
  throw new Error(`agent ${agentPid} holds no map ${name}`);
}

/** The keys of a hash map, as u32 little-endian numbers (pids). */
export function mapPids(id: number): number[] {
  const out = JSON.parse(execFileSync('bpftool', ['map', 'dump', 'id', String(id), '--json'], { encoding: 'utf8', maxBuffer: 64 << 20 })) as { key: string[] }[];
  return out.map((e) => Buffer.from(e.key.map((b) => parseInt(b, 16))).readUInt32LE(0)).sort((a, b) => a - b);
}

/** The pino line saying `pid` became a target, and why (scan, exec, check, fork of P, policy). */
export function selectedLine(pid: number): RegExp {
  return new RegExp(`"target_pid":${pid},"why":"([^"]*)","msg":"target selected"`);
}

/** The discovery counters of the agent's stop line. */
export function discoveryCounters(stderr: readonly string[]): Record<string, number> {
  const line = stopLine<{ counters: { discovery: Record<string, number> } }>(stderr);
  if (!line) throw new Error(`no stop line:\n${stderr.slice(-5).join('\n')}`);
  return line.counters.discovery;
}
