/**
 * The idle flush and a socket's own hooks take turns (bpf/kspan.bpf.c,
 * sock_enter() and flush_if_idle()): many keep-alive connections whose quiet
 * times straddle the idle time, the flush run on its tick all along, and every
 * byte the server sent and received is in exactly one record, each
 * connection's sum equal to the totals its close record carries; and the
 * claims themselves, held from here: the flush leaves a claimed socket alone;
 * a send and a recv on a socket the flush holds past their tries go out as
 * records of their own, counted; a close waits, then counts it.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { benchFixture, sleep, startNativeServer } from '../../bench/harness.ts';
import { ThreadContextReader } from '../../src/context/thread-context-reader.ts';
import { hasBtfTracepoint } from '../../src/kernel/kernel-features.ts';
import { idleFlushTiming, TcpTracer } from '../../src/kernel/tcp-tracer.ts';
import type { KernelRecord } from '../../src/records/kernel-record.ts';
import { type Proc, ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { startClient, startServer } from '../helpers/tcp-fixtures.ts';
import { CPU_STALL_MS, waitFor } from '../helpers/timeouts.ts';

/** What bench/fixtures/native_server.c answers to every request. */
const ANSWER_BYTES = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 512\r\n\r\n'.length + 512;
const CONNS = 150;
/*
 * The turn-taking holds while a hook runs for less than one flush tick (half the
 * idle time): 15 ms here, unless a CPU may stand still longer in the middle of a
 * program (CPU_STALL_MS: 100 ms under TCG), when every time below grows with it.
 */
const IDLE_MS = Math.max(30, 3 * CPU_STALL_MS);
const IDLE_NS = BigInt(IDLE_MS) * 1_000_000n;
const TIME_SCALE = IDLE_MS / 30;

/** hold_conns' `passes`-th pass: a request on every connection, every answer read. */
async function pass(client: Proc, passes: number): Promise<void> {
  client.send('pass');
  while (client.lines.filter((l) => l === 'pass done').length < passes) await sleep(2);
}

describe('idle flush', e2eOptions(), () => {
  test('the idle flush and the sockets\' hooks take turns: every byte in one record, under requests at the idle time', async () => {
    const group = new ProcessGroup();
    const records: KernelRecord[] = [];
    const tracer = TcpTracer.open({ onRecord: (r) => records.push(r) });
    let flusher: NodeJS.Timeout | undefined;
    try {
      tracer.start();
      const server = await startNativeServer(group);
      tracer.addPid(server.pid);
      const client = group.start(benchFixture('hold_conns'), ['--port', String(server.port), '--conns', String(CONNS)]);
      await client.waitLine(/^held \d+$/, 60_000);

      // The flush on its tick (15 ms for 30 ms of idle), while passes over every
      // connection come 0-60 ms apart: quiet times on both sides of the idle time
      // (scaled as one, for slow CPUs).
      let flushed = 0;
      flusher = setInterval(() => (flushed += tracer.flushIdle(IDLE_NS)), idleFlushTiming(IDLE_NS).tickMs);
      let passes = 0;
      const until = performance.now() + 4000 * Math.min(3, TIME_SCALE);
      while (performance.now() < until) {
        await pass(client, ++passes);
        await sleep(((passes * 23) % 61) * TIME_SCALE);
      }
      clearInterval(flusher);
      flusher = undefined;
      client.child.stdin!.end();
      assert.equal((await client.exited).code, 0);

      const closes = () => records.filter((r) => r.type === 'close' && r.pid === server.pid);
      for (let i = 0; i < 200 && closes().length < CONNS; i++) await sleep(50);
      await tracer.stop();
      const counters = tracer.counters();
      assert.equal(counters.decode_errors, 0, 'no record the decoder refused');
      assert.equal(counters.KSPAN_C_RINGBUF_FULL, 0, 'no record lost to a full ring');
      assert.equal(counters.KSPAN_C_SOCK_TABLE_FULL, 0);
      assert.equal(closes().length, CONNS);
      assert.ok(flushed >= CONNS, `the flush closed aggregates between passes: ${flushed}`);

      const sums = new Map<bigint, { sent: number; received: number }>();
      for (const r of records) {
        if (r.pid !== server.pid || (r.type !== 'send' && r.type !== 'recv')) continue;
        const s = sums.get(r.cookie) ?? { sent: 0, received: 0 };
        if (r.type === 'send') s.sent += r.bytes;
        else s.received += r.bytes;
        sums.set(r.cookie, s);
      }
      for (const c of closes()) {
        const s = sums.get(c.cookie);
        assert.ok(s, `records for connection ${c.cookie}`);
        assert.equal(c.bytesSent, (passes + 1) * ANSWER_BYTES, `connection ${c.cookie}: every answer counted by the kernel`);
        assert.equal(s.sent, c.bytesSent, `connection ${c.cookie}: the answers' bytes, each in one record (${counters.KSPAN_C_FLUSH_CONTENDED} contended)`);
        assert.equal(s.received, c.bytesReceived, `connection ${c.cookie}: the requests' bytes, each in one record`);
      }
    } finally {
      if (flusher) clearInterval(flusher);
      await tracer.stop();
      await group.killAll();
    }
  });

  for (const ioPath of ['sock_length', 'syscalls'] as const) test(`a send and a recv on a socket the flush holds past their tries go out alone, counted: every byte still in one record (${ioPath})`, {
    skip: ioPath === 'sock_length' && !hasBtfTracepoint('sock_send_length') && 'this kernel has no sock_send_length tracepoint',
  }, async () => {
    const group = new ProcessGroup();
    const records: KernelRecord[] = [];
    const tracer = TcpTracer.open({ ioPath, onRecord: (r) => records.push(r) });
    try {
      tracer.start();
      const server = await startNativeServer(group);
      tracer.addPid(server.pid);
      const reader = new ThreadContextReader({
        setLocation: (pid, loc) => tracer.setContextLocation(pid, loc),
        deleteLocation: (pid) => tracer.clearContextLocation(pid),
      });
      assert.ok(reader.track(server.pid), 'the server\'s thread context, found');
      const client = group.start(benchFixture('hold_conns'), ['--port', String(server.port), '--conns', '1']);
      await client.waitLine(/^held 1$/, 60_000);
      const ofServer = () => records.filter((r) => r.pid === server.pid && (r.type === 'send' || r.type === 'recv'));
      const waitIo = (n: number) => waitFor(ofServer, (io) => io.length >= n, 4000, `${n} send/recv records of the server`);
      const accept = await waitFor(() => records.find((r) => r.type === 'accept' && r.pid === server.pid), Boolean, 4000, 'the accept');
      const cookie = accept!.cookie;
      const key = Buffer.alloc(8);
      key.writeBigUInt64LE(cookie);
      const claims = tracer.object.map('sock_claims');
      const IDLE = 100_000_000n;

      // The first exchange, flushed once quiet: the flush's guard now lies past it.
      await sleep(300);
      assert.equal(tracer.flushIdle(IDLE), 1);
      assert.equal((await waitIo(2)).length, 2, 'the request and its answer');
      // The second, on a socket quiet past the guard (its hooks claim it), left open.
      await pass(client, 1);
      await sleep(300);
      // Held as a flush holds it, and the third exchange comes: each call, unable
      // to claim the socket, goes out at once as a record of one call.
      assert.equal(claims.insert(key, Buffer.from([1])), true);
      assert.equal(tracer.flushIdle(IDLE), 0, 'a claimed socket is not flushed');
      await pass(client, 2);
      const alone = (await waitIo(4)).slice(2);
      assert.equal(tracer.counters().KSPAN_C_FLUSH_CONTENDED, 2, 'the recv and the send, each counted');
      assert.deepEqual(alone.map((r) => [r.type, r.bytes, r.calls, r.cookie]), [
        ['recv', alone[0]!.bytes, 1, cookie],
        ['send', ANSWER_BYTES, 1, cookie],
      ]);
      assert.equal(alone[1]!.context?.traceFlags, 1, 'the answer under the sampled span its thread published');
      // Let go: the next run flushes the second exchange, its bytes as they were.
      assert.equal(claims.delete(key), true);
      assert.equal(tracer.flushIdle(IDLE), 1);
      const second = (await waitIo(6)).slice(4);
      assert.deepEqual(second.map((r) => [r.type, r.bytes]).sort(), [['recv', alone[0]!.bytes], ['send', ANSWER_BYTES]]);
      const secondSend = second.find((r) => r.type === 'send')!;
      assert.equal(secondSend.context?.traceFlags, 1);
      assert.notEqual(secondSend.context!.traceId, alone[1]!.context!.traceId, 'each answer under its own request\'s trace');

      client.child.stdin!.end();
      assert.equal((await client.exited).code, 0);
      const close = (await waitFor(() => records.find((r) => r.type === 'close' && r.pid === server.pid), Boolean, 4000, 'the close'))!;
      const io = ofServer();
      const sum = (type: string) => io.filter((r) => r.type === type).reduce((n, r) => n + r.bytes, 0);
      assert.equal(close.bytesSent, 3 * ANSWER_BYTES, 'three answers, counted by the kernel');
      assert.equal(close.bytesReceived, 3 * alone[0]!.bytes, 'three requests of one size');
      assert.equal(sum('send'), close.bytesSent, 'every answer in one record');
      assert.equal(sum('recv'), close.bytesReceived, 'every request in one record');
      assert.equal(tracer.counters().KSPAN_C_FLUSH_CONTENDED, 2);
    } finally {
      await tracer.stop();
      await group.killAll();
    }
  });

  test('a claimed socket: the flush leaves it for its next run; a hook on it, quiet past the guard, counts the contention', async () => {
    const group = new ProcessGroup();
    const records: KernelRecord[] = [];
    const tracer = TcpTracer.open({ onRecord: (r) => records.push(r) });
    try {
      tracer.start();
      // The server answers one request and waits for a second that never comes.
      const server = await startServer(group, ['--requests', '2', '--req-bytes', '50', '--resp-bytes', '5000']);
      tracer.addPid(server.proc.pid);
      const client = startClient(group, ['--port', String(server.port), '--req-bytes', '50', '--resp-bytes', '5000', '--hold']);
      server.proc.send('go');
      client.send('go');
      await client.waitLine(/^held$/);
      const accept = () => records.find((r) => r.type === 'accept' && r.pid === server.proc.pid);
      for (let i = 0; i < 100 && !accept(); i++) await sleep(20);
      const key = Buffer.alloc(8);
      key.writeBigUInt64LE(accept()!.cookie);
      const claims = tracer.object.map('sock_claims');

      // Held: the quiet response stays open, and the socket stays queued.
      assert.equal(claims.insert(key, Buffer.from([1])), true);
      await sleep(300);
      assert.equal(tracer.flushIdle(100_000_000n), 0, 'a claimed socket is not flushed');
      assert.equal(records.filter((r) => r.type === 'send' && r.pid === server.proc.pid).length, 0);
      assert.equal(claims.delete(key), true);
      assert.equal(tracer.flushIdle(100_000_000n), 1, 'once let go, the next run flushes it');

      // Held again: the socket is quiet past the guard that run published, so
      // its close (the client goes) claims it, waits, counts, and goes on.
      assert.equal(claims.insert(key, Buffer.from([1])), true);
      client.send('close');
      const close = () => records.find((r) => r.type === 'close' && r.pid === server.proc.pid);
      for (let i = 0; i < 200 && !close(); i++) await sleep(20);
      assert.equal(tracer.counters().KSPAN_C_FLUSH_CONTENDED, 1);
      assert.equal(close()!.bytesSent, 5000);
      assert.equal(close()!.bytesReceived, 50);
      const sends = records.filter((r) => r.type === 'send' && r.pid === server.proc.pid);
      // Acknowledged by then: the queued flush knows the socket and says so (the walk, where 6.1 refuses the queue, knows cookies only).
      assert.deepEqual(sends.map((r) => [r.bytes, r.sentAcked]), [[5000, tracer.plan.load('flush_idle')]], 'the response once, from the flush');
      assert.equal(claims.delete(key), true, 'a hook deletes only a claim it made');
    } finally {
      await tracer.stop();
      await group.killAll();
    }
  });
});
