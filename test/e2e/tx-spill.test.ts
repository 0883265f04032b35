/**
 * The span that sent owns the data in flight: a retransmit carries its context,
 * even when the socket has moved on through three other spans before the data
 * was acknowledged. The socket table keeps two spans a socket (bpf/kspan.h,
 * enum kspan_tx_at), so here the sender's span must go to `tx_spill` and come
 * back from there. The traced client (in its own network namespace) writes
 * under S while the namespace drops its data segments, then reads one byte each
 * under X, Y and W; the retransmits of S's bytes follow.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { KernelRecord, TraceContext } from '../../src/records/kernel-record.ts';
import { hasBtfTracepoint } from '../../src/kernel/kernel-features.ts';
import { TracingSession } from '../../src/kernel/tracing-session.ts';
import { createNetnsPair, type NetnsPair } from '../helpers/netns.ts';
import { ProcessGroup, type Proc } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { scaled } from '../helpers/timeouts.ts';
import { buildTxSpillFixture } from '../helpers/tls-fixtures.ts';

const BYTES = 1000;
/** The peer: answers every connection with three bytes at once, then reads to the end. */
const PEER = `
const net = require('node:net');
const srv = net.createServer((s) => { s.write('xyw'); s.on('data', () => {}); s.on('end', () => s.end()); });
srv.listen(0, process.argv[1], () => console.log('port ' + srv.address().port));
process.stdin.on('end', () => process.exit(0)).resume();
`;

async function ctx(p: Proc, name: string): Promise<TraceContext> {
  const m = await p.waitLine(new RegExp(`^ctx ${name} trace ([0-9a-f]{32}) span ([0-9a-f]{16})$`));
  return { traceId: m[1], spanId: m[2], traceFlags: 1 };
}

const ids = (c: TraceContext | null) => (c ? `${c.traceId}/${c.spanId}` : 'none');

describe('the span that sent, after three other spans on its socket', e2eOptions(), () => {
  let exe: string;
  let ns: NetnsPair | undefined;
  const group = new ProcessGroup();
  before(() => {
    exe = buildTxSpillFixture();
  });
  after(async () => {
    await group.killAll();
    ns?.remove();
  });

  test('retransmits of the data written under S carry S, not the spans that read since', async () => {
    ns = createNetnsPair();
    const peer = group.start('ip', ['netns', 'exec', ns.server, process.execPath, '-e', PEER, ns.serverAddr]);
    const port = Number((await peer.waitLine(/^port (\d+)$/))[1]);
    const fx = group.start('ip', ['netns', 'exec', ns.client, exe, '--addr', ns.serverAddr, '--port', String(port), '--bytes', String(BYTES)]);
    const [S, X, Y, W] = [await ctx(fx, 'S'), await ctx(fx, 'X'), await ctx(fx, 'Y'), await ctx(fx, 'W')];
    await fx.waitLine(/^ready$/);

    const records: KernelRecord[] = [];
    const session = TracingSession.open({ ioPath: hasBtfTracepoint('sock_send_length') ? 'sock_length' : 'syscalls', onRecord: (r) => records.push(r) });
    // In the peer's namespace: a segment dropped on the way out would not count as sent.
    const drop = ['iptables', 'INPUT', '-p', 'tcp', '--dport', String(port), '-m', 'length', '--length', '200:65535', '-j', 'DROP'];
    let dropping = false;
    try {
      session.addPid(fx.pid);
      assert.ok(session.reader.target(fx.pid)?.loc, 'the fixture\'s thread context is resolved');
      session.start();
      // S's data segment (1000 B) is dropped; the handshake, ACKs and the peer's bytes pass.
      ns.inServer([drop[0], '-A', ...drop.slice(1)]);
      dropping = true;
      fx.child.stdin!.write('g');
      await fx.waitLine(/^read 3$/);
      const deadline = performance.now() + scaled(10_000);
      const retransmits = () => records.filter((r) => r.type === 'retransmit' && r.pid === fx.pid);
      while (retransmits().length < 2 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      ns.inServer([drop[0], '-D', ...drop.slice(1)]);
      dropping = false;
      fx.child.stdin!.write('g');
      await fx.waitLine(/^done$/);
      await new Promise((r) => setTimeout(r, 300)); // the close record
      await session.stop((r) => records.push(r));

      const mine = records.filter((r) => r.pid === fx.pid);
      const rtx = mine.filter((r) => r.type === 'retransmit');
      assert.ok(rtx.length >= 2, `retransmits seen: ${rtx.length}`);
      assert.deepEqual([...new Set(rtx.map((r) => ids(r.context)))], [ids(S)], 'every retransmit under S');
      const io = mine.filter((r) => r.type === 'send' || r.type === 'recv').map((r) => [r.type, r.bytes, ids(r.context)]);
      assert.deepEqual(io, [['send', BYTES, ids(S)], ['recv', 1, ids(X)], ['recv', 1, ids(Y)], ['recv', 1, ids(W)]]);
      const c = session.counters();
      assert.equal(c.KSPAN_C_STATE_EVICTED, 0);
      assert.equal(c.KSPAN_C_RINGBUF_FULL, 0);
    } finally {
      if (dropping) ns.inServer([drop[0], '-D', ...drop.slice(1)]);
      await session.stop();
      fx.child.stdin!.end();
      peer.child.stdin!.end();
      await Promise.all([fx.exited, peer.exited]);
    }
  });
});
