import assert from 'node:assert/strict';
import { test } from 'node:test';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { MAX_COLUMNS, columns } from '../../src/export/columns.ts';
import { ConsoleTreeExporter } from '../../src/export/console-tree.ts';
import type { KernelRecord } from '../../src/records/kernel-record.ts';
import { SocketCorrelator } from '../../src/spans/socket-correlator.ts';
import { SpanBuilder } from '../../src/spans/span-builder.ts';
import type { KernelSpan } from '../../src/spans/kernel-span.ts';
import { ctx, FakeSocket } from '../helpers/kernel-records.ts';

/** The records through the correlator (orphans exported) and the builder, printed by the exporter. */
async function printed(records: KernelRecord[]): Promise<{ text: string; traceIds: string[] }> {
  const kernel: KernelSpan[] = [];
  const corr = new SocketCorrelator({ emit: (k) => kernel.push(k), clock: 'records', orphans: true });
  for (const r of records) corr.push(r);
  const resource = resourceFromAttributes({ 'service.name': 'checkout' });
  const b = new SpanBuilder({ clockOffsetNs: 0n, resourceFor: () => resource });
  const spans = kernel.map((k) => b.build(k));
  let text = '';
  const exporter = new ConsoleTreeExporter({ write: (t) => (text += t) });
  const result = await new Promise<{ code: number }>((resolve) => exporter.export(spans, resolve));
  assert.equal(result.code, 0);
  return { text, traceIds: [...new Set(spans.map((s) => s.spanContext().traceId))] };
}

test('console tree: one tree per trace, under the parent span id, with durations, bytes and events', async () => {
  const s = new FakeSocket({ cookie: 3n, role: 'server', pid: 4242 });
  const A = ctx(0xa);
  const { text } = await printed([
    s.accept(1_000_000, 1_100_000),
    s.recv(null, 512, 1, 1_150_000, 1_170_000),
    s.retransmit(A, 2_950_000),
    s.send(A, 2048, 2, 2_800_000, 2_840_000),
    s.reset(A, 3_000_000, false),
    s.close(3_100_000),
  ]);
  assert.equal(
    text,
    [
      `trace ${A.traceId}  service=checkout pid=4242`,
      `└─ parent ${A.spanId}`,
      '   ├─ tcp.accept  +0.000 ms  0.100 ms  accept queue 0.100 ms  127.0.0.1:40003 → 127.0.0.1:8080',
      '   ├─ tcp.recv    +0.150 ms  0.020 ms  512 B in 1 call',
      '   └─ tcp.send    +1.800 ms  0.040 ms  2048 B in 2 calls  retransmits 1  ✗ connection reset by peer',
      '         • tcp.retransmit +1.950 ms ESTABLISHED',
      '         • tcp.reset +2.000 ms ESTABLISHED received',
      '',
    ].join('\n'),
  );
});

test('console tree: nested spans line up with their parents\' columns; long lines continue below, within 120 columns', async () => {
  const s = new FakeSocket({ cookie: 5n, role: 'server', pid: 4242, family: 6 });
  const v6 = (r: KernelRecord): KernelRecord => ({
    ...r,
    local: { address: '2001:db8:85a3:1234:5678:8a2e:370:7334', port: 8080 },
    peer: { address: '2001:db8:85a3:1234:5678:8a2e:370:7335', port: 40005 },
  });
  const { text, traceIds } = await printed(
    [
      s.accept(1_000_000, 1_100_000),
      s.recv(null, 512, 1, 1_150_000, 1_170_000),
      s.send(null, 20480, 12, 2_800_000, 12_840_000),
      s.close(13_100_000),
    ].map(v6),
  );
  assert.equal(traceIds.length, 1);
  const peerToLocal = '[2001:db8:85a3:1234:5678:8a2e:370:7335]:40005 → [2001:db8:85a3:1234:5678:8a2e:370:7334]:8080';
  const lines = [
    `trace ${traceIds[0]}  service=checkout pid=4242`,
    '└─ (no parent: orphan)',
    '   └─ tcp.exchange   +0.000 ms  11.840 ms',
    `            ${peerToLocal}`,
    '      ├─ tcp.accept  +0.000 ms   0.100 ms  accept queue 0.100 ms',
    `      │        ${peerToLocal}`,
    '      ├─ tcp.recv    +0.150 ms   0.020 ms  512 B in 1 call',
    '      └─ tcp.send    +1.800 ms  10.040 ms  20480 B in 12 calls',
    '',
  ];
  assert.equal(text, lines.join('\n'));
  for (const l of lines) assert.ok(columns(l) <= MAX_COLUMNS, `${columns(l)} columns: ${l}`);
});
