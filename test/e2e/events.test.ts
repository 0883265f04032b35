/**
 * `kspan events` on the real kernel: C server and client on loopback, exact bytes
 * per record, one cookie tying a connection's records together, the accept-queue
 * wait, IPv6, both I/O paths (sock_length and the forced syscall fallback).
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { startEvents, stopEvents, type EventLine } from '../helpers/kspan-cli.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { hasBtfTracepoint } from '../../src/kernel/kernel-features.ts';
import { startClient, startServer } from '../helpers/tcp-fixtures.ts';

const sum = (evs: EventLine[], f: string) => evs.reduce((a, e) => a + (e[f] as number), 0);

async function exchange(opts: {
  extra?: string[];
  ioHooks?: string;
  requests: number;
  req: number;
  resp: number;
  v6?: boolean;
  acceptDelayMs?: number;
  /** kspan events' exit status: 3 when records were lost. */
  exitCode?: number;
  env?: Record<string, string>;
}) {
  const group = new ProcessGroup();
  try {
    const srvArgs = ['--requests', String(opts.requests), '--req-bytes', String(opts.req), '--resp-bytes', String(opts.resp)];
    if (opts.v6) srvArgs.push('--v6');
    if (opts.acceptDelayMs) srvArgs.push('--accept-delay-ms', String(opts.acceptDelayMs));
    const server = await startServer(group, srvArgs);
    const client = startClient(group, [
      '--addr', opts.v6 ? '::1' : '127.0.0.1', '--port', String(server.port),
      '--requests', String(opts.requests), '--req-bytes', String(opts.req), '--resp-bytes', String(opts.resp),
    ]);
    const events = await startEvents(group, [server.proc.pid, client.pid], [
      ...(opts.ioHooks ? ['--io-hooks', opts.ioHooks] : []),
      ...(opts.extra ?? []),
    ], opts.env);
    server.proc.send('go');
    client.send('go');
    const lport = Number((await client.waitLine(/^connected (\d+)$/))[1]);
    await client.waitLine(/^done$/);
    await server.proc.waitLine(/^done$/);
    await Promise.all([client.exited, server.proc.exited]);
    // close records come from tcp_destroy_sock, which may lag the exit a little
    await new Promise((r) => setTimeout(r, 300));
    const all = await stopEvents(events, opts.exitCode);
    const targets = all.filter((e) => e.type === 'target');
    // one target line per selected process; the C fixtures publish no context
    assert.deepEqual(targets.map((t) => t.pid).sort(), [server.proc.pid, client.pid].sort());
    for (const t of targets) assert.equal(t.scheme, 'none');
    const evs = all.filter((e) => e.type !== 'target');
    return { evs, server, client, lport, stderr: events.stderr };
  } finally {
    await group.killAll();
  }
}

function checkConnection(r: Awaited<ReturnType<typeof exchange>>, o: { requests: number; req: number; resp: number }) {
  const { evs, server, client, lport } = r;
  const srv = evs.filter((e) => e.pid === server.proc.pid);
  const cli = evs.filter((e) => e.pid === client.pid);
  const accept = srv.filter((e) => e.type === 'accept');
  assert.equal(accept.length, 1, 'one accept');
  const cookie = accept[0].cookie;
  assert.match(cookie, /^[1-9]\d*$/);
  assert.ok(accept[0].peer.endsWith(`:${lport}`), `accept peer ${accept[0].peer} is the client port ${lport}`);
  assert.ok(typeof accept[0].queue_ns === 'number' && accept[0].queue_ns >= 0, 'accept queue wait is non-negative');

  // Server: every record of the accepted socket carries its cookie, bytes exact.
  const sRecv = srv.filter((e) => e.type === 'recv');
  const sSend = srv.filter((e) => e.type === 'send');
  for (const e of [...sRecv, ...sSend]) assert.equal(e.cookie, cookie);
  assert.equal(sum(sRecv, 'bytes'), o.requests * o.req, 'server received every request byte');
  assert.equal(sum(sSend, 'bytes'), o.requests * o.resp, 'server sent every response byte');
  // Aggregates close on direction changes: one recv and one send per request.
  assert.equal(sRecv.length, o.requests);
  assert.equal(sSend.length, o.requests);
  // A response's record is made by the next request's read, which the client sent
  // once it had the whole response: every byte sent was acknowledged by then (the
  // request's segment carries the ACK). The last response goes out at close, unflagged.
  const acked = (evs: EventLine[]) => evs.map((e) => e.sent_acked === true);
  const lastOnly = (n: number) => Array.from({ length: n }, (_, i) => i < n - 1);
  assert.deepEqual(acked(sSend), lastOnly(o.requests), 'server send records: sent_acked but the last');
  const sClose = srv.filter((e) => e.type === 'close' && e.cookie === cookie);
  assert.equal(sClose.length, 1, 'server close');
  assert.equal(sClose[0].bytes_received, o.requests * o.req);
  assert.equal(sClose[0].bytes_sent, o.requests * o.resp);

  // Client: connect, then the mirror image.
  const connect = cli.filter((e) => e.type === 'connect');
  assert.equal(connect.length, 1);
  assert.equal(connect[0].error, null);
  assert.ok((connect[0].duration_ns as number) > 0);
  const cCookie = connect[0].cookie;
  assert.notEqual(cCookie, cookie, 'the two ends are different sockets');
  assert.equal(sum(cli.filter((e) => e.type === 'send' && e.cookie === cCookie), 'bytes'), o.requests * o.req);
  assert.equal(sum(cli.filter((e) => e.type === 'recv' && e.cookie === cCookie), 'bytes'), o.requests * o.resp);
  // The client's request goes out in the record its next request's send makes: the
  // request before was answered, so acknowledged (the new request's own bytes aside).
  assert.deepEqual(acked(cli.filter((e) => e.type === 'send' && e.cookie === cCookie)), lastOnly(o.requests), 'client send records: sent_acked but the last');
  const cClose = cli.filter((e) => e.type === 'close' && e.cookie === cCookie);
  assert.equal(cClose.length, 1, 'client close');
  assert.equal(cClose[0].bytes_sent, o.requests * o.req);
  for (const e of evs) {
    assert.equal(e.trace_id, null);
    assert.equal(typeof e.ts_ns, 'bigint');
  }
  return { accept: accept[0] };
}

describe('kspan events', e2eOptions(), () => {
  after(() => {});

  for (const ioHooks of ['sock_length', 'syscalls']) {
    // sock_*_length came in 6.3: on older kernels only the syscall path exists.
    const absent = ioHooks === 'sock_length' && !hasBtfTracepoint('sock_send_length');
    test(`keep-alive exchange, exact bytes, one cookie per connection (${ioHooks})`, absent ? { skip: 'this kernel has no sock_send_length' } : {}, async () => {
      const o = { requests: 5, req: 321, resp: 54_321 };
      const r = await exchange({ ...o, ioHooks });
      checkConnection(r, o);
      const io = r.evs.filter((e) => e.type === 'send' || e.type === 'recv');
      for (const e of io) assert.equal(e.io_path, ioHooks);
    });
  }

  test('keep-alive exchange on the paired syscall programs (kernels without bpf_task_pt_regs): the same exact bytes', async () => {
    // The exit-only programs refused, as a 5.12–5.14 verifier would: each syscall's entry keeps the fd for its paired exit.
    const exits = ['write', 'writev', 'sendto', 'sendmsg', 'read', 'readv', 'recvfrom', 'recvmsg'].map((sc) => `on_${sc}_exit`);
    const o = { requests: 4, req: 222, resp: 33_333 };
    const r = await exchange({ ...o, ioHooks: 'syscalls', env: { KSPAN_FAULT_REJECT_PROGRAMS: exits.join(',') } });
    checkConnection(r, o);
    for (const e of r.evs.filter((x) => x.type === 'send' || x.type === 'recv')) assert.equal(e.io_path, 'syscalls');
    const logs = r.stderr.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg: string; featuresOff?: string[] });
    assert.deepEqual(logs.find((l) => l.msg === 'tracing')?.featuresOff, []);
  });

  test('IPv6 loopback', async () => {
    const o = { requests: 2, req: 64, resp: 4096 };
    const r = await exchange({ ...o, v6: true });
    const { accept } = checkConnection(r, o);
    assert.match(accept.local, /^\[::1\]:\d+$/);
  });

  test('accept-queue wait grows when the server sleeps before accept()', async () => {
    const o = { requests: 1, req: 10, resp: 10 };
    const fast = checkConnection(await exchange(o), o).accept.queue_ns as number;
    const slow = checkConnection(await exchange({ ...o, acceptDelayMs: 400 }), o).accept.queue_ns as number;
    assert.ok(slow >= 300_000_000, `slow queue wait ${slow} ns ≥ 300 ms`);
    assert.ok(slow > fast * 5, `slow ${slow} ns vs fast ${fast} ns`);
  });

  test('a full socket table loses records, and says so: counted, logged at exit, exit status 3', async () => {
    // Room for one socket: the client's (its SYN comes first); the accepted one gets none.
    const r = await exchange({ requests: 2, req: 10, resp: 20, extra: ['--max-sockets', '1'], exitCode: 3 });
    const srvIo = r.evs.filter((e) => e.pid === r.server.proc.pid && (e.type === 'recv' || e.type === 'send'));
    assert.deepEqual(srvIo, []);
    const cliRecv = r.evs.filter((e) => e.pid === r.client.pid && e.type === 'recv');
    assert.equal(cliRecv.reduce((a, e) => a + (e.bytes as number), 0), 40);
    const exit = r.stderr.map((l) => JSON.parse(l) as { msg: string; counters?: Record<string, number> }).find((l) => l.counters);
    assert.equal(exit?.msg, 'records were lost');
    assert.ok((exit?.counters?.KSPAN_C_SOCK_TABLE_FULL ?? 0) >= 5, `counted ${exit?.counters?.KSPAN_C_SOCK_TABLE_FULL}`);
  });

  test('optional hooks the kernel refuses are switched off with a warning naming the loss; the rest is exact', async () => {
    // The fault switch makes the kernel refuse both retransmit variants and both
    // accept programs, as an older or stricter kernel would.
    const o = { requests: 3, req: 111, resp: 2222 };
    const r = await exchange({ ...o, env: { KSPAN_FAULT_REJECT_PROGRAMS: 'on_retransmit,on_retransmit_noerr,on_accept4_exit,on_accept_exit' } });
    const logs = r.stderr.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { level: number; msg: string; feature?: string; lost?: string; featuresOff?: string[] });
    const off = logs.filter((l) => l.feature);
    assert.deepEqual(off.map((l) => [l.level, l.feature, l.lost]), [
      [40, 'retransmit', 'tcp.retransmit events'],
      [40, 'accept', 'accept records: the accept-queue wait, and the server role of accepted sockets'],
    ]);
    // on_retransmit is refused, or (kernels whose prototype has no err) never tried;
    // two programs refused for the same reason share it.
    assert.match(off[0].msg, /^retransmit is off \((on_retransmit: (refused by the kernel \(.+\)|the kernel's tcp_retransmit_skb has 2 argument\(s\); the program reads 3); on_retransmit_noerr|on_retransmit, on_retransmit_noerr): refused by the kernel \(.+\)\); lost: tcp\.retransmit events$/);
    // The verifier's words, or the kernel's refusal before it wrote any: kernels differ.
    const refused = '(rejected by the verifier: [^;]+|refused by the kernel \\([^;]+\\))';
    assert.match(off[1].msg, new RegExp(`^accept is off \\((on_accept4_exit: ${refused}; on_accept_exit|on_accept4_exit, on_accept_exit): ${refused}\\); lost: accept records`));
    assert.deepEqual(logs.find((l) => l.msg === 'tracing')?.featuresOff, ['retransmit', 'accept']);
    assert.deepEqual(r.evs.filter((e) => e.type === 'accept'), []);
    const srv = r.evs.filter((e) => e.pid === r.server.proc.pid);
    const cli = r.evs.filter((e) => e.pid === r.client.pid);
    assert.equal(sum(srv.filter((e) => e.type === 'recv'), 'bytes'), o.requests * o.req);
    assert.equal(sum(srv.filter((e) => e.type === 'send'), 'bytes'), o.requests * o.resp);
    assert.equal(srv.filter((e) => e.type === 'recv').length, o.requests);
    assert.equal(sum(cli.filter((e) => e.type === 'send'), 'bytes'), o.requests * o.req);
    assert.equal(sum(cli.filter((e) => e.type === 'recv'), 'bytes'), o.requests * o.resp);
    assert.equal(cli.filter((e) => e.type === 'connect').length, 1);
    // Without accept the server socket's role is inferred in the kernel (it kept its listener's backlog).
    for (const e of srv) assert.equal(e.role, 'server');
  });
});
