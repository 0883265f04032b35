/**
 * The BPF thread-context reader on the real kernel, for every TLS access model:
 * a multi-threaded publisher where each thread sets its own context before each
 * request it sends; every send record must carry exactly the ids its thread had
 * set for that round. Plus hostile targets (bad pointers, valid = 7), counted
 * and reported as no context; and a writer flipping contexts with invalid
 * windows between them, never seen as a mix.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import type { KernelRecord } from '../../src/records/kernel-record.ts';
import { TcpTracer } from '../../src/kernel/tcp-tracer.ts';
import { ThreadContextReader, type TargetContext } from '../../src/context/thread-context-reader.ts';
import { TLS_VARIANTS, variantOptions, buildTlsFixtures, startPublisher, type TlsVariant, type RunningPublisher } from '../helpers/tls-fixtures.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';

const opts = e2eOptions();
let dir: string;
let server: Server;
let port: number;
const sockets = new Set<Socket>();

before(async () => {
  dir = buildTlsFixtures();
  // Acks every line with one byte; swallows the 1-byte writes of --flip.
  server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        buf = buf.slice(nl + 1);
        s.write('k');
      }
      if (!buf.includes('\n') && /^[xy]+$/.test(buf)) buf = '';
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as { port: number }).port;
});

after(async () => {
  for (const s of sockets) s.destroy();
  await new Promise((r) => server?.close(r));
});

interface Run {
  pub: RunningPublisher;
  target: TargetContext | null;
  records: KernelRecord[];
  counters: ReturnType<TcpTracer['counters']>;
}

/** Starts the tracer and the publisher, resolves the target, runs its I/O, returns the records. */
async function run(variant: TlsVariant, o: { threads?: number; rounds?: number; hostile?: 'unmapped' | 'kernel' | 'invalid'; flip?: boolean } = {}): Promise<Run> {
  const records: KernelRecord[] = [];
  const tracer = TcpTracer.open({ onRecord: (r) => records.push(r) });
  let pub: RunningPublisher | undefined;
  try {
    const reader = new ThreadContextReader({
      setLocation: (pid, loc) => tracer.setContextLocation(pid, loc),
      deleteLocation: (pid) => tracer.clearContextLocation(pid),
    });
    pub = await startPublisher(dir, variant, { threads: o.threads ?? 3, connect: port, rounds: o.rounds ?? 3, hostile: o.hostile, flip: o.flip });
    tracer.addPid(pub.pid);
    const target = reader.track(pub.pid);
    tracer.start();
    pub.go();
    for (const t of pub.threads) await pub.waitLine(new RegExp(`^done ${t.index}$`));
    await new Promise((r) => setTimeout(r, 200)); // let close records arrive
    await tracer.stop((r) => records.push(r));
    return { pub, target, records: records.filter((r) => r.pid === pub!.pid), counters: tracer.counters() };
  } finally {
    await tracer.stop();
    await pub?.stop();
  }
}

function roundSpan(spanId: string, round: number): string {
  const last = (parseInt(spanId.slice(14), 16) + round) & 0xff;
  return spanId.slice(0, 14) + last.toString(16).padStart(2, '0');
}

for (const variant of TLS_VARIANTS) {
  const skip = opts.skip ?? variantOptions(variant).skip;

  test(`BPF reads ${variant.name}: every send carries its thread's context of that round`, { skip }, async () => {
    const rounds = 4;
    const { pub, target, records, counters } = await run(variant, { rounds });
    assert.ok(target, 'target described');
    assert.equal(target.scheme, 'otel_thread_ctx_v1');
    assert.equal(target.model, variant.model);
    assert.equal(target.dynamic, variant.dynamic);
    assert.ok(target.loc, `location pushed (${target.reason})`);

    const byTid = new Map(pub.threads.map((t) => [t.tid, t]));
    const sends = records.filter((r) => r.type === 'send');
    assert.ok(sends.length >= pub.threads.length * rounds, `a send record per round and thread (${sends.length})`);
    const seen = new Map<number, Set<string>>();
    for (const r of sends) {
      const t = byTid.get(r.tid);
      assert.ok(t, `send from a worker thread (tid ${r.tid})`);
      assert.ok(r.context, `send of thread ${t.index} has a context`);
      assert.equal(r.context.traceId, t.traceId, `thread ${t.index}: its own trace id`);
      assert.equal(r.context.traceFlags, 1);
      const round = [...Array(rounds).keys()].find((k) => roundSpan(t.spanId, k) === r.context!.spanId);
      assert.notEqual(round, undefined, `thread ${t.index}: span ${r.context.spanId} is one of its rounds`);
      assert.equal(r.bytes, `${t.index} ${round}\n`.length, 'one request per aggregate');
      if (!seen.has(t.index)) seen.set(t.index, new Set());
      seen.get(t.index)!.add(r.context.spanId);
    }
    for (const t of pub.threads) assert.equal(seen.get(t.index)?.size, rounds, `thread ${t.index}: every round seen`);
    assert.equal(counters.KSPAN_C_CTX_FAULT, 0);
    assert.equal(counters.KSPAN_C_CTX_TORN, 0);
    assert.equal(counters.KSPAN_C_CTX_INVALID, 0);
  });
}

const HOSTILE: Array<['unmapped' | 'kernel' | 'invalid', 'KSPAN_C_CTX_FAULT' | 'KSPAN_C_CTX_INVALID']> = [
  ['unmapped', 'KSPAN_C_CTX_FAULT'],
  ['kernel', 'KSPAN_C_CTX_FAULT'],
  ['invalid', 'KSPAN_C_CTX_INVALID'],
];
for (const [hostile, counter] of HOSTILE) {
  test(`hostile target (${hostile}): no context, counted in ${counter}, kspan keeps running`, opts, async () => {
    const variant = TLS_VARIANTS.find((v) => v.name === 'tlsdesc')!;
    const { records, counters, target } = await run(variant, { hostile, rounds: 2 });
    assert.ok(target?.loc);
    const sends = records.filter((r) => r.type === 'send');
    assert.ok(sends.length >= 3, 'the I/O was traced');
    assert.ok(records.every((r) => r.context === null), 'no record carries a context');
    assert.ok(counters[counter] >= sends.length, `${counter} = ${counters[counter]} for ${sends.length} sends`);
  });
}

test('a writer flipping contexts with invalid windows: only whole contexts, windows counted', opts, async () => {
  const variant = TLS_VARIANTS.find((v) => v.name === 'initial-exec')!;
  const rounds = 400;
  const { pub, records, counters } = await run(variant, { flip: true, rounds, threads: 2 });
  const byTid = new Map(pub.threads.map((t) => [t.tid, t]));
  const flipSpan = (s: string) => Buffer.from(Buffer.from(s, 'hex').map((b) => b ^ 0xff)).toString('hex');
  let withCtx = 0;
  for (const r of records.filter((x) => x.type === 'send')) {
    if (!r.context) continue;
    withCtx++;
    const t = byTid.get(r.tid)!;
    assert.equal(r.context.traceId, t.traceId);
    assert.ok([t.spanId, flipSpan(t.spanId)].includes(r.context.spanId), `span ${r.context.spanId} is A or B of thread ${t.index}`);
  }
  assert.ok(withCtx > 0, 'contexts were read');
  // Every invalid-window write was seen with valid = 0.
  assert.equal(counters.KSPAN_C_CTX_INVALID, rounds * pub.threads.length);
  assert.equal(counters.KSPAN_C_CTX_TORN, 0);
});
