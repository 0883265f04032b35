/**
 * Sockets outlive the moment of context (docs/ARCHITECTURE.md): a response the
 * socket could not take at once is flushed later, from an event loop where no
 * span, or another request's span, is active. The whole response must stay
 * with the context that wrote its first bytes:
 *  - server, context cleared before the flush: every byte under A;
 *  - server, context switched to B before the flush: every byte still under A,
 *    each such write counted in KSPAN_C_CTX_SUSPECT; B's own response (after
 *    B's request was read) under B;
 *  - client pipelining request A then request B with no read in between: kept
 *    apart (the rule is for server sockets), nothing counted.
 * The response is 16 MiB on a non-blocking socket with a 64 KiB send buffer
 * against a peer that does not read until the first write came back partial.
 * Both I/O paths (sock_length tracepoints and the syscall fallback).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { connect, createServer, type Socket } from 'node:net';
import type { KernelRecord, TraceContext } from '../../src/records/kernel-record.ts';
import { chooseIoPath } from '../../src/kernel/kernel-features.ts';
import { TracingSession } from '../../src/kernel/tracing-session.ts';
import { ProcessGroup, type Proc } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { buildCtxFlushFixture } from '../helpers/tls-fixtures.ts';

const RESP = 16 << 20;
const SECOND = 123_456;

interface Ctx {
  traceId: string;
  spanId: string;
}

async function contexts(p: Proc): Promise<{ A: Ctx; B: Ctx }> {
  const ctx = async (name: string) => {
    const m = await p.waitLine(new RegExp(`^ctx ${name} trace ([0-9a-f]{32}) span ([0-9a-f]{16})$`));
    return { traceId: m[1], spanId: m[2] };
  };
  return { A: await ctx('A'), B: await ctx('B') };
}

const is = (c: TraceContext | null, x: Ctx) => c !== null && c.traceId === x.traceId && c.spanId === x.spanId && c.traceFlags === 1;
const bytes = (rs: KernelRecord[]) => rs.reduce((a, r) => a + r.bytes, 0);

/** Opens a session tracing `pid` (with its thread context resolved) and returns what it saw after `work`. */
async function trace(pid: number, ioPath: 'sock_length' | 'syscalls', work: () => Promise<void>) {
  const records: KernelRecord[] = [];
  const session = TracingSession.open({ ioPath, onRecord: (r) => records.push(r) });
  try {
    session.addPid(pid);
    const target = session.reader.target(pid);
    assert.equal(target?.scheme, 'otel_thread_ctx_v1');
    assert.ok(target?.loc, `location pushed (${target?.reason})`);
    session.start();
    await work();
    await new Promise((r) => setTimeout(r, 200)); // close records
    await session.stop((r) => records.push(r));
    return { records: records.filter((r) => r.pid === pid), counters: session.counters() };
  } finally {
    await session.stop();
  }
}

/**
 * The peer of the server fixture: sends a request line, reads nothing until
 * the fixture's first write came back partial, then reads the whole response
 * (and with `second`, asks again and reads that answer).
 */
async function serverPeer(fx: Proc, port: number, second: boolean): Promise<{ partial: number; flushWrites: number }> {
  const sock = connect(port, '127.0.0.1');
  sock.pause();
  await new Promise<void>((r, j) => sock.once('connect', r).once('error', j));
  try {
    sock.write('req A\n');
    const partial = Number((await fx.waitLine(/^partial (\d+)$/))[1]);
    await readExactly(sock, RESP);
    const flushWrites = Number((await fx.waitLine(/^flushed (\d+) writes$/))[1]);
    if (second) {
      sock.write('req B\n');
      await readExactly(sock, SECOND);
      await fx.waitLine(/^second \d+$/);
    }
    await fx.waitLine(/^done$/);
    return { partial, flushWrites };
  } finally {
    sock.destroy();
  }
}

function readExactly(sock: Socket, n: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let got = 0;
    const onData = (d: Buffer) => {
      got += d.length;
      if (got > n) reject(new Error(`read ${got} bytes, expected ${n}`));
      if (got >= n) {
        sock.off('data', onData);
        sock.pause();
        resolve();
      }
    };
    sock.on('data', onData);
    sock.once('error', reject);
    sock.resume();
  });
}

describe('sockets outlive the moment of context', e2eOptions(), () => {
  let exe: string;
  const group = new ProcessGroup();
  before(() => {
    exe = buildCtxFlushFixture();
  });
  after(() => group.killAll());

  for (const ioPath of ['sock_length', 'syscalls'] as const) {
    // Linux before 6.3 has no sock_send_length/sock_recv_length: only the syscall path there.
    const opts = ioPath === 'sock_length' && chooseIoPath() !== 'sock_length' ? { skip: 'this kernel has no sock_send_length tracepoint' } : {};
    test(`server: context cleared before the flush, every byte of the response stays under A (${ioPath})`, opts, async () => {
      const fx = group.start(exe, ['server', '--then', 'clear', '--resp-bytes', String(RESP)]);
      const { A } = await contexts(fx);
      const port = Number((await fx.waitLine(/^port (\d+)$/))[1]);
      let peer!: Awaited<ReturnType<typeof serverPeer>>;
      const { records, counters } = await trace(fx.pid, ioPath, async () => {
        peer = await serverPeer(fx, port, false);
      });
      assert.ok(peer.partial > 0 && peer.partial < RESP, `first write partial: ${peer.partial}`);
      assert.ok(peer.flushWrites >= 1);
      const sends = records.filter((r) => r.type === 'send');
      assert.ok(sends.every((r) => r.role === 'server'));
      assert.equal(bytes(sends.filter((r) => is(r.context, A))), RESP, 'every response byte under A');
      assert.equal(bytes(sends.filter((r) => !is(r.context, A))), 0, 'none without context');
      // One aggregate: the first write and every flush write.
      assert.deepEqual(sends.map((r) => [r.bytes, r.calls]), [[RESP, 1 + peer.flushWrites]]);
      // The request was read before A started: no context there.
      const recvs = records.filter((r) => r.type === 'recv');
      assert.deepEqual(recvs.map((r) => [r.bytes, r.context]), [['req A\n'.length, null]]);
      assert.equal(counters.KSPAN_C_CTX_SUSPECT, 0);
      fx.child.stdin!.end();
      await fx.exited;
    });

    test(`server: another request's context during the flush is not believed; counted; B's own response is B's (${ioPath})`, opts, async () => {
      const fx = group.start(exe, ['server', '--then', 'switch', '--resp-bytes', String(RESP), '--second-bytes', String(SECOND)]);
      const { A, B } = await contexts(fx);
      const port = Number((await fx.waitLine(/^port (\d+)$/))[1]);
      let peer!: Awaited<ReturnType<typeof serverPeer>>;
      const { records, counters } = await trace(fx.pid, ioPath, async () => {
        peer = await serverPeer(fx, port, true);
      });
      assert.ok(peer.partial > 0 && peer.partial < RESP, `first write partial: ${peer.partial}`);
      const sends = records.filter((r) => r.type === 'send');
      assert.equal(bytes(sends.filter((r) => is(r.context, A))), RESP, 'every byte of A\'s response under A');
      assert.equal(bytes(sends.filter((r) => is(r.context, B))), SECOND, 'B\'s response under B, nothing of A\'s');
      assert.equal(bytes(sends.filter((r) => r.context === null)), 0, 'none without context');
      assert.equal(sends.filter((r) => is(r.context, A)).length, 1, 'A\'s response is one aggregate');
      // Every write of the flush ran under B and was kept with A: each counted.
      assert.equal(counters.KSPAN_C_CTX_SUSPECT, peer.flushWrites);
      // B's request, read after the flush, is B's.
      const recvs = records.filter((r) => r.type === 'recv');
      assert.deepEqual(
        recvs.map((r) => [r.bytes, r.context === null ? null : is(r.context, B) ? 'B' : 'other']),
        [['req A\n'.length, null], ['req B\n'.length, 'B']],
      );
      fx.child.stdin!.end();
      await fx.exited;
    });
  }

  test('client: two pipelined requests with contexts A then B stay apart, nothing counted', async () => {
    const X = 300_000;
    const Y = 4_321;
    // The server answers "ok" once it has both requests: no read in between on the client.
    let received = 0;
    const server = createServer((s) => {
      s.on('data', (d) => {
        received += d.length;
        if (received === X + Y) s.end('ok');
      });
      s.on('error', () => {});
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as { port: number }).port;
      const fx = group.start(exe, ['client', '--connect', String(port), '--req-a', String(X), '--req-b', String(Y)]);
      const { A, B } = await contexts(fx);
      await fx.waitLine(/^ready$/);
      // The path this kernel has (the syscall fallback before Linux 6.3).
      const { records, counters } = await trace(fx.pid, chooseIoPath(), async () => {
        fx.child.stdin!.write('g');
        await fx.waitLine(/^done$/);
      });
      const sends = records.filter((r) => r.type === 'send');
      assert.ok(sends.length >= 2 && sends.every((r) => r.role === 'client'), JSON.stringify(sends.map((r) => r.role)));
      assert.equal(bytes(sends.filter((r) => is(r.context, A))), X, 'request A under A');
      assert.equal(bytes(sends.filter((r) => is(r.context, B))), Y, 'request B under B');
      assert.equal(bytes(sends), X + Y);
      assert.equal(counters.KSPAN_C_CTX_SUSPECT, 0);
      fx.child.stdin!.end();
      await fx.exited;
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});
