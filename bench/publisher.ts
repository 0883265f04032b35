/**
 * What kspan/publisher costs a Node service: the same HTTP service (NodeSDK + http
 * instrumentation, spans discarded) run without and with
 * `--import kspan/publisher/register`, loaded in turn by wrk in one run. Reports
 * the server's CPU time per request (utime + stime from /proc/PID/stat over the
 * requests wrk completed), the added µs per request, and the ratio to the service
 * without the publisher; throughput and wrk's median latency alongside.
 *
 *   node bench/publisher.ts [seconds=5] [rounds=3] [connections=8]
 */
import { ProcessGroup } from '../test/helpers/processes.ts';
import { startTracedServer, type TracedServer } from '../test/helpers/traced-server.ts';
import { cpuSeconds, runWrk } from './wrk.ts';

const seconds = Number(process.argv[2] ?? 3);
const rounds = Number(process.argv[3] ?? 10);
const connections = Number(process.argv[4] ?? 8);

interface Run {
  requests: number;
  rps: number;
  p50ms: number;
  cpuUsPerReq: number;
}

function wrk(server: TracedServer, secs: number): Run {
  const cpu0 = cpuSeconds(server.pid);
  const { requests, rps, p50ms } = runWrk(['-t1', `-c${connections}`, `-d${secs}s`], `http://127.0.0.1:${server.port}/ids`);
  const cpu = cpuSeconds(server.pid) - cpu0;
  return { requests, rps, p50ms, cpuUsPerReq: (cpu * 1e6) / requests };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const group = new ProcessGroup();
try {
  const env = { FIXTURE_DISCARD_SPANS: '1' };
  const plain = await startTracedServer(group, { publisher: 'none', env, serviceName: 'bench' });
  const published = await startTracedServer(group, { publisher: 'path', env, serviceName: 'bench' });
  const runs: Record<'plain' | 'published', Run[]> = { plain: [], published: [] };
  wrk(plain, 2); // warm up both (JIT, sockets)
  wrk(published, 2);
  for (let r = 0; r < rounds; r++) {
    // Alternate the order so drift (thermal, noisy neighbours) hits both alike.
    const order = r % 2 === 0 ? (['plain', 'published'] as const) : (['published', 'plain'] as const);
    for (const which of order) runs[which].push(wrk(which === 'plain' ? plain : published, seconds));
  }
  const summary = (rs: Run[]) => ({
    cpuUsPerReq: median(rs.map((r) => r.cpuUsPerReq)),
    rps: median(rs.map((r) => r.rps)),
    p50ms: median(rs.map((r) => r.p50ms)),
  });
  const a = summary(runs.plain);
  const b = summary(runs.published);
  // Paired by round (back to back, order alternating): robust to the VM's drift.
  const diffs = runs.plain.map((p, i) => runs.published[i].cpuUsPerReq - p.cpuUsPerReq).sort((x, y) => x - y);
  const q = (f: number) => +diffs[Math.min(diffs.length - 1, Math.floor(f * diffs.length))].toFixed(2);
  console.log(
    JSON.stringify(
      {
        node: process.version,
        seconds,
        rounds,
        connections,
        without: a,
        with: b,
        addedUsPerRequest: q(0.5),
        addedUsPerRequestQuartiles: [q(0.25), q(0.75)],
        cpuRatio: +((a.cpuUsPerReq + q(0.5)) / a.cpuUsPerReq).toFixed(3),
        throughputRatio: +(b.rps / a.rps).toFixed(3),
        runs,
      },
      null,
      2,
    ),
  );
} finally {
  await group.killAll();
}
