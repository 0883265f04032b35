/**
 * The native workload `make bench` measures is the one it claims to be:
 * - bench/fixtures/native_server.c answers each keep-alive request with 512 B
 *   under the context its traceparent names (trace id, trace flags, a fresh span
 *   id), one thread per connection, seen by kspan exactly so;
 * - bench/traceparent.lua sends a fresh, well-formed traceparent on every
 *   request, sampled on exactly one request in N;
 * - bench/fixtures/hold_conns.c holds N connections (one server thread each),
 *   answers passes, and lets them all go when its stdin closes.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import http from 'node:http';
import { connect, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { benchFixture, sleep, startNativeServer, TRACEPARENT_LUA } from '../../bench/harness.ts';
import { startEvents, stopEvents } from '../helpers/kspan-cli.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';

const HEAD = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 512\r\n\r\n';
const ANSWER = HEAD + 'k'.repeat(512);

/** Sends `requests` one at a time on one connection; resolves with each answer's text. */
async function keepAlive(port: number, requests: string[]): Promise<string[]> {
  const sock: Socket = connect(port, '127.0.0.1');
  await new Promise<void>((r, j) => sock.once('connect', r).once('error', j));
  const answers: string[] = [];
  let buf = '';
  try {
    for (const req of requests) {
      sock.write(req);
      while (buf.length < ANSWER.length) {
        const chunk = await new Promise<Buffer>((r, j) => sock.once('data', r).once('error', j));
        buf += chunk.toString('latin1');
      }
      answers.push(buf.slice(0, ANSWER.length));
      buf = buf.slice(ANSWER.length);
    }
  } finally {
    sock.destroy();
  }
  return answers;
}

const get = (traceparent?: string) => `GET / HTTP/1.1\r\nHost: bench\r\n${traceparent ? `TraceParent: ${traceparent}\r\n` : ''}\r\n`;

describe('bench workload', e2eOptions(), () => {
  const group = new ProcessGroup();
  after(() => group.killAll());

  test('native_server: each answer is 512 B under the context its traceparent names, one thread per connection', async () => {
    const server = await startNativeServer(group, ['--print-spans']);
    const events = await startEvents(group, [server.pid]);
    const a = { trace: '0af7651916cd43dd8448eb211c80319c', flags: '01' };
    const b = { trace: '4bf92f3577b34da6a3ce929d0e0e4736', flags: '01' };
    const c = { trace: '00f067aa0ba902b700f067aa0ba902b7', flags: '01' };
    const u = { trace: '5b8efff798038103d269b633813fc60c', flags: '00' };
    const first = await keepAlive(server.port, [get(`00-${a.trace}-00f067aa0ba902b7-01`), get(`00-${u.trace}-eee19b7ec3c1b174-00`), get(`00-${b.trace}-b7ad6b7169203331-01`), get()]);
    const second = await keepAlive(server.port, [get(`00-${c.trace}-53995c3f42cd8ad8-01`)]);
    assert.deepEqual([...first, ...second], [ANSWER, ANSWER, ANSWER, ANSWER, ANSWER]);
    await sleep(700); // the idle flush closes the last aggregates
    const evs = await stopEvents(events);

    // The contexts the server published, in the order it published them.
    const published = server.proc.lines.map((l) => /^span ([0-9a-f]{32}) ([0-9a-f]{16}) ([0-9a-f]{2})$/.exec(l)).filter((m) => m !== null);
    assert.deepEqual(
      published.map((m) => [m[1], m[3]]),
      [[a.trace, '01'], [u.trace, '00'], [b.trace, '01'], [c.trace, '01']],
    );
    const asRecord = (m: RegExpExecArray) => ({ trace_id: m[1], span_id: m[2], trace_flags: Number(m[3]), bytes: ANSWER.length });
    const sendsOf = (flags: number) =>
      evs.filter((e) => e.type === 'send' && e.trace_flags === flags).map((e) => ({ trace_id: e.trace_id, span_id: e.span_id, trace_flags: e.trace_flags, bytes: e.bytes }));
    assert.deepEqual(sendsOf(1), published.filter((m) => m[3] === '01').map(asRecord));
    // kspan events may leave unsampled records out; any it shows is this one.
    for (const e of sendsOf(0)) assert.deepEqual(e, asRecord(published[1]));
    const sends = evs.filter((e) => e.type === 'send' && e.trace_flags === 1);
    // The two connections were served by two threads, neither of them the accepting one.
    const tids = new Set(sends.map((e) => e.tid));
    assert.equal(tids.size, 2);
    assert.ok(!tids.has(server.pid));
    // The request without traceparent was answered with no context.
    const untraced = evs.filter((e) => e.type === 'send' && e.trace_id === null);
    for (const e of untraced) assert.deepEqual([e.span_id, e.bytes], [null, ANSWER.length]);
    server.proc.child.stdin!.end();
    assert.deepEqual(await server.proc.exited, { code: 0, signal: null });
  });

  test('traceparent.lua: a fresh traceparent per request, sampled on exactly one in N', async () => {
    for (const every of [10, 1]) {
      const seen: string[] = [];
      const srv = http.createServer((req, res) => {
        seen.push(String(req.headers.traceparent));
        res.end('ok');
      });
      await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
      const port = (srv.address() as { port: number }).port;
      try {
        // One connection: the server sees the requests in the order the script made them.
        await promisify(execFile)('wrk', ['-t1', '-c1', '-d1s', '-s', TRACEPARENT_LUA, `http://127.0.0.1:${port}/`, '--', String(every)]);
      } finally {
        srv.closeAllConnections();
        await new Promise((r) => srv.close(r));
      }
      assert.ok(seen.length >= 100, `wrk sent ${seen.length} requests`);
      for (const tp of seen) assert.match(tp, /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/);
      assert.equal(new Set(seen.map((tp) => tp.slice(3, 35))).size, seen.length, 'every trace id is new');
      // Every N-th request the script made (wrk may make one before the first it sends).
      const sampled = seen.flatMap((tp, i) => (tp.endsWith('-01') ? [i] : []));
      assert.ok(sampled[0] < every, `first sampled request: ${sampled[0]}`);
      assert.deepEqual(
        sampled.slice(1).map((n, i) => n - sampled[i]),
        new Array(sampled.length - 1).fill(every),
      );
      assert.equal(sampled.length, Math.floor((seen.length - 1 - sampled[0]) / every) + 1);
    }
  });

  test('hold_conns: N connections, one server thread each, passes answered, all closed with its stdin', async () => {
    const server = await startNativeServer(group);
    const threads = async () => (await promisify(execFile)('ls', [`/proc/${server.pid}/task`])).stdout.trim().split('\n').length;
    const idle = await threads(); // the accepting thread and the stdin watcher
    assert.equal(idle, 2);
    const client = group.start(benchFixture('hold_conns'), ['--port', String(server.port), '--conns', '50']);
    await client.waitLine(/^held 50$/);
    assert.equal(await threads(), idle + 50);
    client.send('pass');
    await client.waitLine(/^pass done$/);
    client.child.stdin!.end();
    assert.deepEqual(await client.exited, { code: 0, signal: null });
    for (let i = 0; i < 100 && (await threads()) !== idle; i++) await sleep(20);
    assert.equal(await threads(), idle);
    server.proc.child.stdin!.end();
    await server.proc.exited;
  });
});
