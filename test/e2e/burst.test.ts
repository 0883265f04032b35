/**
 * A burst far above the ring buffer's capacity: `kspan events` is stopped
 * (SIGSTOP) so nothing is read while a traced server answers thousands of
 * connections, then let go. kspan keeps running, the loss is counted exactly
 * (ring records made − read = KSPAN_C_RINGBUF_FULL, made being known from the
 * workload: a connection of K request/response exchanges makes K + 2 ring
 * records: its accept, K exchanges, its close), the connections made right
 * after the burst are traced in full, and the end-of-run report says records
 * were lost, with the counter, and exits 3. Through `kspan run
 * --metrics-listen`, the Prometheus endpoint says the same loss as the report.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { KspanLimit, KSPAN_EVENT_SIZE } from '../../src/records/abi.generated.ts';
import { KSPAN_BIN, parseEventLine } from '../helpers/kspan-cli.ts';
import { ProcessGroup, type Proc } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { connLoopPath, startServer, type Server } from '../helpers/tcp-fixtures.ts';
import { startRetransmitOracle } from '../helpers/retransmit-oracle.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { scaled, waitFor } from '../helpers/timeouts.ts';

/** Ring records per connection of `k` exchanges: accept, one per exchange (request and response paired), close. */
const perConn = (k: number) => k + 2;
/** What the ring holds at most: records of KSPAN_EVENT_SIZE plus the 8-byte header, 8-aligned. */
const RING_CAPACITY = Math.floor(KspanLimit.KSPAN_RING_BYTES / (Math.ceil(KSPAN_EVENT_SIZE / 8) * 8 + 8));

/**
 * The event lines the first `entries` ring records of sequential connections of
 * `k` exchanges make: accept (1 line), k exchanges (2: the request and its
 * response, paired in one record), close (1).
 */
function burstLines(entries: number, k: number): number {
  const full = Math.floor(entries / perConn(k));
  const rest = entries % perConn(k);
  return full * (2 * k + 2) + (rest ? 1 + 2 * (rest - 1) : 0);
}

const REQ = 10;
const RESP = 20;

/** A traced server for `conns` connections of `k` exchanges (it accepts `accepts`), and its client (started, waiting for "go"). */
async function serverAndClient(group: ProcessGroup, conns: number, k: number, accepts = conns): Promise<{ server: Server; client: Proc }> {
  const server = await startServer(group, ['--conns', String(accepts), '--requests', String(k), '--req-bytes', String(REQ), '--resp-bytes', String(RESP)]);
  server.proc.send('go');
  const client = group.start(connLoopPath(), ['--port', String(server.port), '--conns', String(conns), '--requests', String(k), '--req-bytes', String(REQ), '--resp-bytes', String(RESP)]);
  return { server, client };
}

/** The value of Prometheus sample `name{…label…}` in an exposition (0 when absent: a counter not yet moved). */
function sample(text: string, name: string, label: string): number {
  const m = new RegExp(`^${name}\\{[^}]*${label}[^}]*\\} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

describe('bursts above the ring buffer', e2eOptions(), () => {
  const group = new ProcessGroup();
  after(() => group.killAll());

  test('a burst of 5x the ring while the reader is stopped: kspan runs on, loss = made − read exactly, tracing resumes at once, exit 3 with the counter', async () => {
    const BURST_CONNS = 2000;
    const BURST_K = 30;
    const AFTER_CONNS = 50;
    const AFTER_K = 3;
    const burstMade = BURST_CONNS * perConn(BURST_K);
    assert.ok(burstMade > 4 * RING_CAPACITY, `the burst (${burstMade}) is far above the ring (${RING_CAPACITY})`);

    const burst = await serverAndClient(group, BURST_CONNS, BURST_K);
    const later = await serverAndClient(group, AFTER_CONNS, AFTER_K);
    // A busy machine retransmits on loopback now and then (tail loss probes): each
    // retransmit of a traced socket makes a record too, so they are counted as made.
    const oracles = await Promise.all([burst, later].map((x) => startRetransmitOracle(group, x.server.port, { localOnly: true })));
    const kspan = group.start(KSPAN_BIN, ['events', '--no-sched', '--pid', String(burst.server.proc.pid), '--pid', String(later.server.proc.pid)]);
    await kspan.waitStderr(/"msg":"tracing"/, 20_000);

    kspan.child.kill('SIGSTOP');
    try {
      burst.client.send('go');
      await burst.client.waitLine(new RegExp(`^done ${BURST_CONNS}$`), 60_000);
      await burst.server.proc.waitLine(/^done$/, 30_000);
    } finally {
      kspan.child.kill('SIGCONT');
    }
    // The ring held the burst's first RING_CAPACITY records: once they are out
    // (one drain), the next connections are traced in full.
    const kept = burstLines(RING_CAPACITY, BURST_K);
    const burstPid = `"pid":${burst.server.proc.pid},`;
    // (A retransmit among them is one line where an exchange is two: a few fewer.)
    await waitFor(() => kspan.lines.filter((l) => l.includes(burstPid) && !l.startsWith('{"type":"target"')).length, (n) => n >= kept - 16, 30_000, `${kept} burst lines`);
    await new Promise((r) => setTimeout(r, scaled(1000))); // the drain's last lines
    later.client.send('go');
    await later.client.waitLine(new RegExp(`^done ${AFTER_CONNS}$`), 30_000);
    await later.server.proc.waitLine(/^done$/, 30_000);

    // Both targets exit once served: kspan stops on its own after their sockets closed.
    const { code } = await kspan.exited;
    const logs = kspan.stderr.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
    const last = logs.at(-1);
    assert.equal(code, 3, `records were lost: exit 3\n${kspan.stderr.slice(-3).join('\n')}`);
    assert.equal(last.msg, 'records were lost');

    const retransmits = (await Promise.all(oracles.map((o) => o.stop()))).reduce((a, b) => a + b, 0);
    const made = burstMade + AFTER_CONNS * perConn(AFTER_K) + retransmits;
    const read = last.ring.records as number;
    const lost = last.counters.KSPAN_C_RINGBUF_FULL as number;
    assert.equal(made - read, lost, `made ${made} − read ${read} = the counter ${lost}`);
    assert.ok(lost >= burstMade - RING_CAPACITY, `at least what did not fit was lost (${lost} ≥ ${burstMade - RING_CAPACITY})`);
    assert.equal(last.counters.KSPAN_C_SOCK_TABLE_FULL, 0);
    assert.equal(last.counters.decode_errors, 0);
    assert.equal(last.ring.handlerErrors, 0);

    // After the burst, nothing of the later server's connections is missing.
    const evs = kspan.lines.filter((l) => l.startsWith('{')).map(parseEventLine).filter((e) => e.pid === later.server.proc.pid);
    const count = (type: string) => evs.filter((e) => e.type === type).length;
    assert.deepEqual(
      { target: count('target'), accept: count('accept'), recv: count('recv'), send: count('send'), close: count('close') },
      { target: 1, accept: AFTER_CONNS, recv: AFTER_CONNS * AFTER_K, send: AFTER_CONNS * AFTER_K, close: AFTER_CONNS },
    );
    for (const e of evs.filter((x) => x.type === 'recv')) assert.equal(e.bytes, REQ);
    assert.equal(evs.length, 1 + AFTER_CONNS * (2 + 2 * AFTER_K) + evs.filter((e) => e.type === 'retransmit').length, 'nothing else');
    for (const e of evs.filter((x) => x.type === 'send')) assert.equal(e.bytes, RESP);
    // The burst's records that were read are whole records: every one decoded, of the burst's server.
    const burstEvs = kspan.lines.filter((l) => l.startsWith('{')).map(parseEventLine).filter((e) => e.pid === burst.server.proc.pid && e.type !== 'target');
    const burstRetransmits = burstEvs.filter((e) => e.type === 'retransmit').length;
    assert.equal(burstEvs.length, burstLines(RING_CAPACITY - burstRetransmits, BURST_K) + burstRetransmits, 'the burst records the ring held, every one');
    const laterRetransmits = evs.filter((e) => e.type === 'retransmit').length;
    assert.equal(read, RING_CAPACITY + AFTER_CONNS * perConn(AFTER_K) + laterRetransmits);
  });

  test('kspan run --metrics-listen: the metrics say the same loss as the end-of-run report, made − read exactly', async () => {
    const CONNS = 1000;
    const K = 30;
    // One connection more than made: the target stays until the metrics were read.
    const burst = await serverAndClient(group, CONNS, K, CONNS + 1);
    const oracle = await startRetransmitOracle(group, burst.server.port, { localOnly: true });
    const receiver = new OtlpReceiver({ protocol: 'grpc' });
    await receiver.start();
    try {
      const kspan = group.start(KSPAN_BIN, ['run', '--no-sched', '--pid', String(burst.server.proc.pid), '--otlp-endpoint', receiver.endpoint, '--metrics-listen', '127.0.0.1:0']);
      const url = (await kspan.waitStderr(/"metrics":"(http:\/\/127\.0\.0\.1:\d+\/metrics)"/, 20_000))[1];
      await kspan.waitStderr(/"msg":"tracing"/, 20_000);
      kspan.child.kill('SIGSTOP');
      try {
        burst.client.send('go');
        await burst.client.waitLine(new RegExp(`^done ${CONNS}$`), 60_000);
        await burst.server.proc.waitLine(new RegExp(`^served ${CONNS}$`), 30_000);
      } finally {
        kspan.child.kill('SIGCONT');
      }
      const made = CONNS * perConn(K);
      // Ring records read: a connection's accept and close, one per exchange (request and response paired), retransmits.
      const readOf = (text: string) => ['accept', 'close', 'recv', 'retransmit'].reduce((n, t) => n + sample(text, 'kspan_records_total', `kspan_record_type="${t}"`), 0);
      const lostOf = (text: string) => sample(text, 'kspan_records_dropped_total', 'kspan_drop_reason="ring_full"');
      let text = '';
      for (const deadline = Date.now() + scaled(30_000); ;) {
        text = await (await fetch(url)).text();
        if (readOf(text) + lostOf(text) >= made) break;
        if (Date.now() > deadline) assert.fail(`the metrics never accounted for ${made} records:\n${text}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      burst.server.proc.child.kill('SIGTERM');
      const { code } = await kspan.exited; // the target exited: run stops on its own
      const retransmits = await oracle.stop();
      assert.equal(code, 3, kspan.stderr.slice(-2).join('\n'));
      const last = JSON.parse(kspan.stderr.filter((l) => l.startsWith('{')).at(-1)!);
      assert.equal(last.msg, 'stopped; data was lost');
      assert.equal(last.kernel.KSPAN_C_RINGBUF_FULL, lostOf(text), 'the end-of-run report and the metrics say the same loss');
      assert.equal(made + retransmits - readOf(text), lostOf(text), 'made − read = the counter');
      assert.ok(lostOf(text) >= made - RING_CAPACITY, `at least what did not fit was lost (${lostOf(text)})`);
    } finally {
      await receiver.stop();
    }
  });
});
