/**
 * Churn without leaks. `kspan events` traces (1) a server answering 10 000
 * short connections, (2) 1 000 short-lived publishing processes and 1 000
 * threads that come and go, each making a connection under its own context.
 * Every record is there (exact counts and ids), and afterwards the agent's BPF
 * maps hold what they held before (entry counts read with bpftool through the
 * agent's own fds), its open fds are the same number, and its V8 heap after a
 * full GC (through its inspector) and its resident memory have not grown beyond
 * bounds far below what a per-connection leak would cost.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { buildFixture, INCLUDE_FLAG, THREAD_CTX_HEADER } from '../helpers/build-fixture.ts';
import { cleanExit, KSPAN_BIN, parseEventLine, type EventLine } from '../helpers/kspan-cli.ts';
import { ProcessGroup, type Proc } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { connLoopPath, startServer } from '../helpers/tcp-fixtures.ts';
import { waitFor } from '../helpers/timeouts.ts';
import { agentMapCounts, agentMaps, heapAfterGc, mapU64Keys, INSPECT_OPTION, inspectorUrl, restingFds, rssKiB } from '../helpers/agent-resources.ts';

/**
 * The maps whose entries follow the targets and their sockets. accept_pending is
 * not among them: it notes every passive open on the machine at its handshake
 * (the owner is known only at accept) until the socket is destroyed, so other
 * processes' connections come and go in it; the test looks for its own
 * connections' cookies there instead.
 */
const MAPS = ['targets', 'socks', 'io_inflight', 'node_layouts', 'idle_queued'] as const;

function churnDir(): string {
  return buildFixture({
    name: 'churn',
    sources: ['test/fixtures/churn/churn_publisher.c', 'test/fixtures/churn/churn_server.c', 'test/fixtures/tcp/io.h', 'test/fixtures/tls/otel_ctx_writer.c', THREAD_CTX_HEADER],
    steps: [
      { out: 'churn_publisher', cmd: ['gcc', '-O2', '-Wall', '-Wno-unused-function', '-rdynamic', INCLUDE_FLAG, `-I${join(import.meta.dirname, '../fixtures/tcp')}`, '{churn_publisher.c}', '{otel_ctx_writer.c}', '-o', 'churn_publisher', '-lpthread'] },
      { out: 'churn_server', cmd: ['gcc', '-O2', '-Wall', '-Wno-unused-function', `-I${join(import.meta.dirname, '../fixtures/tcp')}`, '{churn_server.c}', '-o', 'churn_server'] },
    ],
  });
}

const events = (p: Proc): EventLine[] => p.lines.filter((l) => l.startsWith('{')).map(parseEventLine);
const countType = (p: Proc, type: string) => p.lines.reduce((n, l) => n + (l.startsWith(`{"type":"${type}"`) ? 1 : 0), 0);

/** Resident memory may grow this much at most over the churn (a 1 KiB-per-connection leak is 10 MiB). */
const RSS_SLACK_KIB = 8 * 1024;
/**
 * V8 grows its young generation (up to 3 × 16 MiB of semi-spaces) as allocation
 * goes on, which a leak check would take for a leak: the agent runs with 1 MiB
 * semi-spaces here, so what grows is what is kept.
 */
const AGENT_ENV = { ...process.env, NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --max-semi-space-size=1 ${INSPECT_OPTION}`.trim() };
/** What the agent's heap may keep beyond its size after the first round, after a full GC (a 100-byte-per-connection leak is 800 KiB). */
const HEAP_SLACK = 256 * 1024;

describe('churn without leaks', e2eOptions(), () => {
  const group = new ProcessGroup();
  after(() => group.killAll());

  test('10 000 short connections: every record, then the maps, fds and memory of the start', async () => {
    const ROUNDS = 5;
    const PER_ROUND = 2000;
    const total = ROUNDS * PER_ROUND;
    // One connection more than made: the server stays (a target) until the test ends it.
    const server = await startServer(group, ['--conns', String(total + 1), '--requests', '1', '--req-bytes', '10', '--resp-bytes', '20']);
    const kspan = group.start(KSPAN_BIN, ['events', '--no-sched', '--pid', String(server.proc.pid)], { env: AGENT_ENV });
    await kspan.waitStderr(/"msg":"tracing"/, 20_000);
    server.proc.send('go');
    const client = group.start(connLoopPath(), ['--port', String(server.port), '--conns', String(PER_ROUND), '--requests', '1', '--req-bytes', '10', '--resp-bytes', '20']);

    const round = async (k: number) => {
      client.send('go');
      await client.waitLine(new RegExp(`^done ${k * PER_ROUND}$`), 60_000);
      // Every close record read: nothing of these connections is left in flight.
      await waitFor(() => countType(kspan, 'close'), (n) => n === k * PER_ROUND, 30_000, `${k * PER_ROUND} close records`);
    };
    // Closed sockets leave the idle queue at the next target refresh (every 2 s).
    const settled = () => waitFor(() => agentMapCounts(kspan.pid, MAPS), (m) => m.idle_queued === 0 && m.socks === 0, 30_000, 'the idle queue to empty');
    await round(1);
    const inspector = inspectorUrl(kspan.stderr);
    const base = { maps: await settled(), fds: await restingFds(kspan.pid), heap: await heapAfterGc(inspector), rss: rssKiB(kspan.pid) };
    assert.deepEqual(base.maps, { targets: 1, socks: 0, io_inflight: 0, node_layouts: 0, idle_queued: 0 });
    for (let k = 2; k <= ROUNDS; k++) await round(k);
    const end = { maps: await settled(), fds: await restingFds(kspan.pid), heap: await heapAfterGc(inspector), rss: rssKiB(kspan.pid) };

    assert.deepEqual(end.maps, base.maps, 'the maps hold what they held after the first round');
    const accepted = new Set(events(kspan).filter((e) => e.type === 'accept').map((e) => BigInt(e.cookie)));
    assert.equal(accepted.size, total);
    const pending = mapU64Keys(agentMaps(kspan.pid).get('accept_pending')!);
    assert.deepEqual(pending.filter((c) => accepted.has(c)), [], 'no accepted connection of the test is left in accept_pending');
    assert.equal(end.fds, base.fds, 'open fds');
    assert.ok(end.heap - base.heap <= HEAP_SLACK, `the heap after GC grew ${end.heap - base.heap} B over ${total - PER_ROUND} connections (from ${base.heap} B)`);
    assert.ok(end.rss - base.rss <= RSS_SLACK_KIB, `RSS grew ${end.rss - base.rss} KiB over ${total - PER_ROUND} connections (from ${base.rss} KiB)`);

    server.proc.child.kill('SIGTERM');
    const { code } = await kspan.exited;
    assert.equal(code, cleanExit(kspan.stderr), kspan.stderr.slice(-2).join('\n'));
    const evs = events(kspan);
    const by = (t: string) => evs.filter((e) => e.type === t);
    assert.deepEqual([by('accept').length, by('recv').length, by('send').length, by('close').length], [total, total, total, total]);
    assert.equal(new Set(by('close').map((e) => e.cookie)).size, total, 'one close per connection');
    assert.ok(by('recv').every((e) => e.bytes === 10) && by('send').every((e) => e.bytes === 20));
  });

  test('1 000 short-lived publishing processes and 1 000 threads that come and go: every context, then the maps, fds and memory of the first half', async () => {
    // Two publishers of 500 processes and 500 threads each, one after the other:
    // the agent is measured after the first (warmed up) and after the second.
    const PROCS = 500;
    const THREADS = 500;
    const dir = churnDir();
    const peer = group.start(join(dir, 'churn_server'), ['--conns', String(2 * (PROCS + THREADS))]);
    const port = Number((await peer.waitLine(/^port (\d+)$/))[1]);
    const pubs: { proc: Proc; children: number[] }[] = [];
    for (let i = 0; i < 2; i++) {
      const proc = group.start(join(dir, 'churn_publisher'), ['--port', String(port), '--procs', String(PROCS), '--threads', String(THREADS), '--base', String(i * PROCS)]);
      await proc.waitLine(/^ready$/, 30_000);
      const children = proc.lines.map((l) => /^child (\d+)$/.exec(l)).filter((m) => m !== null).map((m) => Number(m![1]));
      assert.equal(children.length, PROCS);
      pubs.push({ proc, children });
    }
    const pids = pubs.flatMap((p) => [p.proc.pid, ...p.children]);
    const kspan = group.start(KSPAN_BIN, ['events', '--no-sched', ...pids.flatMap((p) => ['--pid', String(p)])], { env: AGENT_ENV });
    await kspan.waitStderr(/"msg":"tracing"/, 60_000);
    assert.deepEqual(agentMapCounts(kspan.pid, MAPS), { targets: 2 * PROCS + 2, socks: 0, io_inflight: 0, node_layouts: 0, idle_queued: 0 });

    /** Runs publisher i, then waits until the agent has read its closes and dropped its exited children. */
    const churn = async (i: number) => {
      pubs[i].proc.send('go');
      await pubs[i].proc.waitLine(/^done$/, 60_000);
      await waitFor(() => countType(kspan, 'close'), (n) => n === (i + 1) * (PROCS + THREADS), 30_000, 'every close record');
      // Exited children leave the targets map, and closed sockets the idle queue, at the next refresh (every 2 s).
      return waitFor(() => agentMapCounts(kspan.pid, MAPS), (m) => m.targets === 2 * PROCS + 2 - (i + 1) * PROCS && m.idle_queued === 0 && m.socks === 0, 30_000, 'the exited children to leave');
    };
    const firstMaps = await churn(0);
    assert.deepEqual(firstMaps, { targets: PROCS + 2, socks: 0, io_inflight: 0, node_layouts: 0, idle_queued: 0 });
    const inspector = inspectorUrl(kspan.stderr);
    const base = { fds: await restingFds(kspan.pid), heap: await heapAfterGc(inspector), rss: rssKiB(kspan.pid) };
    const endMaps = await churn(1);
    assert.deepEqual(endMaps, { ...firstMaps, targets: 2 }, 'only the two parents are still targets; no socket state left');
    assert.equal(await restingFds(kspan.pid), base.fds, 'open fds');
    const heap = await heapAfterGc(inspector);
    const rss = rssKiB(kspan.pid);
    assert.ok(heap - base.heap <= HEAP_SLACK, `the heap after GC grew ${heap - base.heap} B over the second half (from ${base.heap} B)`);
    assert.ok(rss - base.rss <= RSS_SLACK_KIB, `RSS grew ${rss - base.rss} KiB over the second half (from ${base.rss} KiB)`);

    const sends = events(kspan).filter((e) => e.type === 'send');
    assert.equal(sends.length, 2 * (PROCS + THREADS));
    // Each send carries its process's or thread's own context: kind in byte 0, index in bytes 8..11.
    const ids = (kind: number, n: number) =>
      Array.from({ length: n }, (_, i) => {
        const idx = Buffer.alloc(4);
        idx.writeUInt32LE(i);
        return `0${kind}${'00'.repeat(7)}${idx.toString('hex')}${'00'.repeat(4)}`;
      });
    assert.deepEqual(sends.map((e) => e.trace_id).sort(), [...ids(1, 2 * PROCS), ...ids(2, 2 * THREADS)].sort());
    for (const e of sends) assert.equal(e.bytes, 8);
    for (const { proc, children } of pubs) {
      const mine = new Set(children);
      assert.equal(sends.filter((e) => mine.has(e.pid)).length, PROCS, 'one send from each child');
      const threads = sends.filter((e) => e.pid === proc.pid);
      assert.equal(threads.length, THREADS, 'one send from each thread of the parent');
      assert.ok(threads.every((e) => e.tid !== proc.pid), 'from threads, not the main thread');
    }
    for (const p of pubs) p.proc.child.stdin!.end();
    const { code } = await kspan.exited;
    assert.equal(code, cleanExit(kspan.stderr), kspan.stderr.slice(-2).join('\n'));
  });
});
