import assert from 'node:assert/strict';
import { test } from 'node:test';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { ConsoleTreeExporter } from '../../src/export/console-tree.ts';
import { SocketCorrelator } from '../../src/spans/socket-correlator.ts';
import { SpanBuilder } from '../../src/spans/span-builder.ts';
import type { KernelSpan } from '../../src/spans/kernel-span.ts';
import { ctx, FakeSocket } from '../helpers/kernel-records.ts';

test('console tree: one tree per trace, under the parent span id, with durations, bytes and events', async () => {
  const s = new FakeSocket({ cookie: 3n, role: 'server', pid: 4242 });
  const A = ctx(0xa);
  const kernel: KernelSpan[] = [];
  const corr = new SocketCorrelator({ emit: (k) => kernel.push(k), clock: 'records', orphans: true });
  for (const r of [
    s.accept(1_000_000, 1_100_000),
    s.recv(null, 512, 1, 1_150_000, 1_170_000),
    s.retransmit(A, 2_950_000),
    s.send(A, 2048, 2, 2_800_000, 2_840_000),
    s.reset(A, 3_000_000, false),
    s.close(3_100_000),
  ]) corr.push(r);
  const resource = resourceFromAttributes({ 'service.name': 'checkout' });
  const b = new SpanBuilder({ clockOffsetNs: 0n, resourceFor: () => resource });
  let text = '';
  const exporter = new ConsoleTreeExporter({ write: (t) => (text += t) });
  const result = await new Promise<{ code: number }>((resolve) => exporter.export(kernel.map((k) => b.build(k)), resolve));
  assert.equal(result.code, 0);
  assert.equal(
    text,
    [
      `trace ${A.traceId}  service=checkout pid=4242`,
      `└─ parent ${A.spanId}`,
      '   ├─ tcp.accept        +0.000 ms     0.100 ms  accept queue 0.100 ms  127.0.0.1:40003 → 127.0.0.1:8080',
      '   ├─ tcp.recv          +0.150 ms     0.020 ms  512 B in 1 call',
      '   └─ tcp.send          +1.800 ms     0.040 ms  2048 B in 2 calls  retransmits 1  ✗ connection reset by peer',
      '         • tcp.retransmit +1.950 ms ESTABLISHED',
      '         • tcp.reset +2.000 ms ESTABLISHED received',
      '',
    ].join('\n'),
  );
});
