/**
 * kspan events --all on the real kernel: processes found as they start (exec),
 * fork and exit, with no /proc polling after the scan at start. The fixtures
 * (test/fixtures/discovery/prefork_server.c) are narrowed with --exe to this
 * test's build directory, so other publishers on the machine stay out.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { createServer, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { startEvents, stopEvents, type EventLine } from '../helpers/kspan-cli.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { buildTlsFixtures, startPublisher, TLS_VARIANTS } from '../helpers/tls-fixtures.ts';
import { agentMapId, mapPids, preforkDir, request, selectedLine, startPrefork, waitWorkers, type Exchange, discoveryCounters } from '../helpers/discovery-fixtures.ts';

const records = (evs: EventLine[], pid: number, type: string) => evs.filter((e) => e.pid === pid && e.type === type);

/** Every exchange has exactly one recv and one send record on the server, under its own span, with its bytes. */
function assertTraced(evs: EventLine[], exchanges: Exchange[]) {
  for (const x of exchanges) {
    const recv = evs.filter((e) => e.type === 'recv' && e.pid === x.pid && e.trace_id === x.traceId);
    const send = evs.filter((e) => e.type === 'send' && e.pid === x.pid && e.trace_id === x.traceId);
    // The request is read before the span starts (no context): its recv has none; the answer is under the span.
    assert.equal(send.length, 1, `one send under ${x.traceId} from ${x.pid}`);
    assert.equal(send[0].span_id, x.spanId);
    assert.equal(send[0].bytes, `ok ${x.pid}\n`.length);
    assert.equal(recv.length, 0);
  }
}

describe('kspan events --all', e2eOptions(), () => {
  const group = new ProcessGroup();
  after(() => group.killAll());

  test('a publisher started after kspan is traced from its first request after discovery; a non-publisher is ignored', async () => {
    const dir = preforkDir();
    const events = await startEvents(group, [], ['--all', '--exe', `${dir}/*`]);
    const pub = await startPrefork(group, 'pub_server');
    const plain = await startPrefork(group, 'plain_server');
    const why = (await events.waitStderr(selectedLine(pub.proc.pid), 10_000))[1];
    assert.equal(why, 'exec', 'found at its exec: the symbol is in the executable');
    const traced: Exchange[] = [];
    const ignored: Exchange[] = [];
    for (let i = 0; i < 3; i++) {
      traced.push(await request(pub.port));
      ignored.push(await request(plain.port));
    }
    // The plain server's connections asked the agent to look again (CHECK): still no context, still ignored.
    await new Promise((r) => setTimeout(r, 500));
    pub.proc.child.stdin!.end();
    plain.proc.child.stdin!.end();
    await Promise.all([pub.proc.exited, plain.proc.exited]);
    await events.waitStderr(new RegExp(`"target_pid":${pub.proc.pid},"msg":"target exited; no longer traced"`), 10_000);
    const all = await stopEvents(events);
    const targets = all.filter((e) => e.type === 'target');
    assert.deepEqual(targets.map((t) => [t.pid, t.scheme]), [[pub.proc.pid, 'otel_thread_ctx_v1']]);
    assert.equal(all.filter((e) => e.pid === plain.proc.pid).length, 0, 'nothing of the non-publisher');
    assert.ok(!events.stderr.some((l) => selectedLine(plain.proc.pid).test(l)), 'the non-publisher was never selected');
    assert.equal(records(all, pub.proc.pid, 'accept').length, 3);
    assert.equal(records(all, pub.proc.pid, 'close').length, 3);
    assertTraced(all, traced);
    const counters = discoveryCounters(events.stderr);
    assert.equal(counters.found, 1);
    assert.equal(counters.forgotten, 1);
  });

  test('a process that dlopens its publishing library after its exec is found at its next connection (CHECK), no polling', async () => {
    const dir = buildTlsFixtures();
    const v = TLS_VARIANTS.find((x) => x.name === 'dlopen-general-dynamic')!;
    // Acks each 4-byte round; the first only once the agent selected the process, so rounds 1.. come after.
    const sockets: Socket[] = [];
    let selected: Promise<unknown> = Promise.resolve();
    const server = createServer((s) => {
      sockets.push(s);
      s.on('data', (d) => {
        for (let i = 0; i < d.length; i += 4) void selected.then(() => s.writable && s.write('k'));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const events = await startEvents(group, [], ['--all', '--exe', `${dir}/${v.exe}`]);
    let child: ChildProcess | undefined;
    const starting = startPublisher(dir, v, { threads: 1, connect: port, rounds: 4, loadOnStdin: true, onSpawn: (c) => (child = c) });
    starting.catch(() => {});
    try {
      // Its exec is judged first (it does not publish yet); then the library comes.
      await new Promise((r) => setTimeout(r, 2000));
      child!.stdin!.write('l');
      const pub = await starting;
      selected = events.waitStderr(selectedLine(pub.pid), 20_000);
      pub.go();
      await pub.waitLine(/^done 0$/, 20_000);
      assert.equal((await events.waitStderr(selectedLine(pub.pid), 10_000))[1], 'check');
      await new Promise((r) => setTimeout(r, 300));
      const all = await stopEvents(events);
      const target = all.find((e) => e.type === 'target' && e.pid === pub.pid)!;
      assert.deepEqual([target.scheme, target.model], ['otel_thread_ctx_v1', v.model]);
      const t = pub.threads[0];
      const spanOf = (round: number) => t.spanId.slice(0, 14) + ((parseInt(t.spanId.slice(14), 16) + round) & 0xff).toString(16).padStart(2, '0');
      for (let round = 1; round < 4; round++) {
        const send = all.filter((e) => e.type === 'send' && e.pid === pub.pid && e.span_id === spanOf(round));
        assert.equal(send.length, 1, `round ${round}: one send under its span`);
        assert.equal(send[0].trace_id, t.traceId);
        assert.equal(send[0].bytes, 4);
      }
      await pub.stop();
    } finally {
      child?.kill('SIGKILL');
      for (const s of sockets) s.destroy();
      server.close();
    }
  });

  test('forked workers of a target are targets from their fork (in the kernel); exited ones are forgotten and the maps shrink back', async () => {
    const dir = preforkDir();
    // Started before kspan: found by the scan at start. Its workers fork later.
    const srv = await startPrefork(group, 'pub_server', ['--workers', '2', '--fork-on-stdin']);
    const events = await startEvents(group, [], ['--all', '--exe', `${dir}/*`]);
    assert.equal((await events.waitStderr(selectedLine(srv.proc.pid), 10_000))[1], 'scan');
    const agent = events.pid;
    const targetsId = agentMapId(agent, 'targets');
    const layoutsId = agentMapId(agent, 'node_layouts');
    assert.deepEqual(mapPids(targetsId), [srv.proc.pid]);
    const layoutsBefore = mapPids(layoutsId);

    srv.proc.send('fork');
    const workers = await waitWorkers(srv.proc, 2);
    for (const w of workers) assert.equal((await events.waitStderr(selectedLine(w), 10_000))[1], `fork of ${srv.proc.pid}`);
    assert.deepEqual(mapPids(targetsId), [srv.proc.pid, ...workers].sort((a, b) => a - b));
    const exchanges: Exchange[] = [];
    for (let i = 0; i < 8; i++) exchanges.push(await request(srv.port));
    const answered = new Set(exchanges.map((x) => x.pid));
    for (const pid of answered) assert.ok(workers.includes(pid), `answered by a worker (${pid})`);

    srv.proc.child.stdin!.end(); // the parent kills its workers, then exits
    await srv.proc.exited;
    for (const pid of [srv.proc.pid, ...workers]) {
      await events.waitStderr(new RegExp(`"target_pid":${pid},"msg":"target exited; no longer traced"`), 10_000);
    }
    assert.deepEqual(mapPids(targetsId), [], 'every target entry freed');
    assert.deepEqual(mapPids(layoutsId), layoutsBefore);
    const all = await stopEvents(events);
    assertTraced(all, exchanges);
    for (const w of workers) {
      assert.equal(records(all, w, 'accept').length, exchanges.filter((x) => x.pid === w).length, `worker ${w}: one accept per connection`);
    }
    assert.equal(records(all, srv.proc.pid, 'send').length, 0, 'the parent does no I/O');
    const counters = discoveryCounters(events.stderr);
    assert.equal(counters.forked, 2);
    assert.equal(counters.forgotten, 3);
  });
});
