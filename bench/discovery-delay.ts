/**
 * How long after a publishing process's exec its requests are traced, with
 * `kspan events --all`: spawn the pre-fork server fixture (OTEP 4947 symbol in
 * the executable), connect in a loop from the moment it listens, and find the
 * first request whose response has a record under its span.
 *
 *   node bench/discovery-delay.ts [--runs N]
 *
 * Prints, per run and as median/max: spawn → listening, spawn → first traced
 * request, and how many requests before it were not traced.
 */
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { ProcessGroup } from '../test/helpers/processes.ts';
import { startEvents, stopEvents } from '../test/helpers/kspan-cli.ts';
import { preforkDir, request, type Exchange } from '../test/helpers/discovery-fixtures.ts';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '10' } } });
const runs = Number(values.runs);
const group = new ProcessGroup();
const dir = preforkDir();
const events = await startEvents(group, [], ['--all', '--exe', `${dir}/*`]);
const rows: { listenMs: number; tracedMs: number; untraced: number }[] = [];
try {
  for (let i = 0; i < runs; i++) {
    const spawnNs = process.hrtime.bigint();
    const srv = group.start(join(dir, 'pub_server'), []);
    const port = Number((await srv.waitLine(/^port (\d+)$/))[1]);
    const listenNs = process.hrtime.bigint();
    const xs: Exchange[] = [];
    for (let k = 0; k < 50; k++) xs.push(await request(port));
    srv.child.stdin!.end();
    await srv.exited;
    rows.push({ listenMs: Number(listenNs - spawnNs) / 1e6, tracedMs: NaN, untraced: 0, ...{ xs, spawnNs } } as never);
  }
} finally {
  await new Promise((r) => setTimeout(r, 300));
}
const all = await stopEvents(events);
await group.killAll();
const traced = new Set(all.filter((e) => e.type === 'send' && typeof e.trace_id === 'string').map((e) => e.trace_id));
for (const r of rows as (typeof rows[number] & { xs: Exchange[]; spawnNs: bigint })[]) {
  const first = r.xs.findIndex((x) => traced.has(x.traceId));
  r.untraced = first < 0 ? r.xs.length : first;
  r.tracedMs = first < 0 ? NaN : Number(r.xs[first].startNs - r.spawnNs) / 1e6;
  console.log(`spawn→listening ${r.listenMs.toFixed(2)} ms, spawn→first traced request ${r.tracedMs.toFixed(2)} ms, untraced before it: ${r.untraced}`);
}
const stat = (k: 'listenMs' | 'tracedMs') => {
  const v = rows.map((r) => r[k]).sort((a, b) => a - b);
  return `median ${v[Math.floor(v.length / 2)].toFixed(2)} ms, max ${v[v.length - 1].toFixed(2)} ms`;
};
console.log(`spawn→listening: ${stat('listenMs')}; spawn→first traced request: ${stat('tracedMs')}; runs with an untraced request: ${rows.filter((r) => r.untraced > 0).length}/${rows.length}`);
