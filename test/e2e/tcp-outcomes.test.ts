/**
 * Connect failures, resets and retransmits on the real kernel, through
 * `kspan events`. Lossy and black-holed paths live in two network namespaces the
 * test creates (iptables rules die with them).
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { startEvents, stopEvents } from '../helpers/kspan-cli.ts';
import { createNetnsPair, leftoverNamespaces, waitSocketsGone, type NetnsPair } from '../helpers/netns.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { startRetransmitOracle } from '../helpers/retransmit-oracle.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { startClient, startServer } from '../helpers/tcp-fixtures.ts';

describe('connect outcomes, resets, retransmits', e2eOptions(), () => {
  let group: ProcessGroup;
  let ns: NetnsPair | undefined;
  beforeEach(() => {
    group = new ProcessGroup();
  });
  afterEach(async () => {
    await group.killAll();
    ns?.remove();
    ns = undefined;
    assert.deepEqual(leftoverNamespaces(), []);
  });

  test('refused connect: a connect record with error "refused"', async () => {
    // A port nobody listens on: bind a server, read its port, stop it.
    const gone = await startServer(group, []);
    gone.proc.child.kill('SIGKILL');
    await gone.proc.exited;
    const client = startClient(group, ['--port', String(gone.port)]);
    const events = await startEvents(group, [client.pid]);
    client.send('go');
    assert.equal((await client.waitLine(/^connect_error (\d+)$/))[1], '111');
    await client.exited;
    const evs = await stopEvents(events);
    const connects = evs.filter((e) => e.type === 'connect');
    assert.equal(connects.length, 1);
    assert.equal(connects[0].error, 'refused');
    assert.equal(connects[0].peer, `127.0.0.1:${gone.port}`);
    assert.equal(connects[0].pid, client.pid);
    assert.ok((connects[0].duration_ns as number) >= 0);
  });

  test('black-holed connect: error "timed_out" after the SYN retries', async () => {
    ns = createNetnsPair();
    ns.inServer(['iptables', '-A', 'INPUT', '-p', 'tcp', '--dport', '9', '-j', 'DROP']);
    const client = startClient(group, ['--addr', ns.serverAddr, '--port', '9', '--syncnt', '1'], ns.client);
    const events = await startEvents(group, [client.pid]);
    client.send('go');
    assert.equal((await client.waitLine(/^connect_error (\d+)$/, 20_000))[1], '110');
    await client.exited;
    const evs = await stopEvents(events);
    const connects = evs.filter((e) => e.type === 'connect');
    assert.equal(connects.length, 1);
    assert.equal(connects[0].error, 'timed_out');
    assert.equal(connects[0].peer, `${ns.serverAddr}:9`);
    // TCP_SYNCNT=1: the SYN, one retry after 1 s, give up 2 s later.
    assert.ok((connects[0].duration_ns as number) > 2_500_000_000, `duration ${connects[0].duration_ns}`);
    // The SYN retries are retransmits of that socket (how many is the kernel's choice).
    const rtx = evs.filter((e) => e.type === 'retransmit' && e.cookie === connects[0].cookie);
    assert.ok(rtx.length >= 1);
    for (const e of rtx) assert.equal(e.tcp_state, 'SYN_SENT');
  });

  test('reset: sent by the server (SO_LINGER 0), received by the client', async () => {
    const server = await startServer(group, ['--reset', '--req-bytes', '10', '--resp-bytes', '0']);
    const client = startClient(group, ['--port', String(server.port), '--req-bytes', '10', '--resp-bytes', '1']);
    const events = await startEvents(group, [server.proc.pid, client.pid]);
    server.proc.send('go');
    client.send('go');
    await server.proc.waitLine(/^done$/);
    await client.exited;
    await new Promise((r) => setTimeout(r, 200));
    const evs = await stopEvents(events);
    const accept = evs.find((e) => e.type === 'accept')!;
    const connect = evs.find((e) => e.type === 'connect')!;
    const sent = evs.filter((e) => e.type === 'reset' && e.direction === 'sent');
    const received = evs.filter((e) => e.type === 'reset' && e.direction === 'received');
    assert.equal(sent.length, 1);
    assert.equal(sent[0].cookie, accept.cookie);
    assert.equal(sent[0].pid, server.proc.pid);
    assert.equal(received.length, 1);
    assert.equal(received[0].cookie, connect.cookie);
    // softirq hook: the owner's pid from socket state, not whoever was current
    assert.equal(received[0].pid, client.pid);
  });

  test('retransmits on a lossy path equal the kernel tracepoint count (perf) for those sockets', async () => {
    ns = createNetnsPair();
    // drop both ways: data and ACKs, so both ends retransmit
    for (const inNs of [ns.inServer, ns.inClient]) {
      inNs(['iptables', '-A', 'INPUT', '-m', 'statistic', '--mode', 'random', '--probability', '0.1', '-j', 'DROP']);
    }
    const o = { requests: 30, req: 2000, resp: 60_000 };
    const server = await startServer(group, ['--addr', ns.serverAddr, '--requests', String(o.requests),
      '--req-bytes', String(o.req), '--resp-bytes', String(o.resp)], ns.server);
    const client = startClient(group, ['--addr', ns.serverAddr, '--port', String(server.port), '--requests',
      String(o.requests), '--req-bytes', String(o.req), '--resp-bytes', String(o.resp)], ns.client);
    // The oracle: a tp_btf witness on the same tracepoint for this server port.
    const oracle = await startRetransmitOracle(group, server.port);
    const events = await startEvents(group, [server.proc.pid, client.pid]);
    server.proc.send('go');
    client.send('go');
    // 120 s: now and then a segment is lost again and again, its retransmit timeout doubling each time.
    await client.waitLine(/^done$/, 120_000);
    await server.proc.waitLine(/^done$/, 120_000);
    await waitSocketsGone(ns, server.port); // FIN retransmits, socket teardown
    const evs = await stopEvents(events);
    const kernelCount = await oracle.stop();

    const accept = evs.find((e) => e.type === 'accept')!;
    const connect = evs.find((e) => e.type === 'connect')!;
    const cookies = new Set([accept.cookie, connect.cookie]);
    const rtx = evs.filter((e) => e.type === 'retransmit');
    for (const e of rtx) assert.ok(cookies.has(e.cookie), `retransmit on an unknown socket ${e.cookie}`);
    assert.ok(kernelCount > 0, 'the lossy path produced retransmits');
    assert.equal(rtx.length, kernelCount);
    // every byte still arrived, and is accounted exactly
    const srvSend = evs.filter((e) => e.type === 'send' && e.cookie === accept.cookie);
    assert.equal(srvSend.reduce((a, e) => a + (e.bytes as number), 0), o.requests * o.resp);
    // retransmits of the server's socket carry its owner, not the softirq's current
    for (const e of rtx.filter((r) => r.cookie === accept.cookie)) assert.equal(e.pid, server.proc.pid);
  });
});
