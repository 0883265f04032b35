import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { columns, fitLine, labelled, MAX_COLUMNS } from '../../src/export/columns.ts';
import type { DemoSpan } from '../../src/demo/demo-spans.ts';
import { groupTraces, renderTrace } from '../../src/demo/trace-tree.ts';

const TRACE = 'a'.repeat(32);
const MS = 1_000_000n;

function span(f: Partial<DemoSpan> & { spanId: string }): DemoSpan {
  return {
    service: 'demo-frontend',
    pid: 10,
    name: 'span',
    kind: 'internal',
    traceId: TRACE,
    parentSpanId: null,
    startNs: 0n,
    endNs: MS,
    error: null,
    attrs: {},
    events: [],
    kernel: false,
    ...f,
  };
}

const id = (n: number) => n.toString(16).padStart(16, '0');

describe('demo trace tree', () => {
  test('a trace as the demo prints it: columns sized to the trace, endpoints that do not fit on the next line', () => {
    const spans = [
      span({ spanId: id(1), name: 'checkout', service: 'demo-driver', kind: 'client', attrs: { 'http.response.status_code': 200 }, endNs: 1030n * MS }),
      span({ spanId: id(2), parentSpanId: id(1), name: 'GET /checkout', kind: 'server', startNs: MS, endNs: 1029n * MS, attrs: { 'http.response.status_code': 200 } }),
      span({
        spanId: id(3), parentSpanId: id(2), name: 'tcp.connect', kernel: true, startNs: 2n * MS, endNs: 1003n * MS,
        attrs: {
          'kspan.retransmits': 1, 'network.peer.address': '192.168.77.2', 'network.peer.port': 38513,
          'network.local.address': '192.168.77.1', 'network.local.port': 55980,
        },
        events: [{ name: 'tcp.retransmit', timeNs: 1002n * MS, attrs: { 'kspan.tcp.state': 'SYN_SENT' } }],
      }),
      span({ spanId: id(4), parentSpanId: id(2), name: 'GET /data', service: 'demo-backend', kind: 'server', startNs: 1004n * MS, endNs: 1005n * MS }),
      span({
        spanId: id(5), parentSpanId: id(4), name: 'tcp.accept', service: 'demo-backend', kernel: true, startNs: 1003n * MS, endNs: 1003n * MS + 18_000n,
        attrs: {
          'kspan.accept_queue_ns': 18_000, 'network.peer.address': '192.168.77.1', 'network.peer.port': 55980,
          'network.local.address': '192.168.77.2', 'network.local.port': 38513,
        },
      }),
      span({ spanId: id(6), parentSpanId: id(4), name: 'tcp.send', service: 'demo-backend', kernel: true, startNs: 1004n * MS, endNs: 1004n * MS, attrs: { 'kspan.bytes': 149119, 'kspan.syscalls': 2 } }),
    ];
    const [trace] = groupTraces(spans);
    // The accept line would take 121 columns: its endpoints go under it.
    assert.equal(renderTrace(trace, 'slowest'), [
      `trace ${TRACE}  1030.000 ms  (slowest, 1 retransmit)`,
      '└─ checkout                +0.000 ms  1030.000 ms  demo-driver  HTTP 200',
      '   └─ GET /checkout        +1.000 ms  1028.000 ms  demo-frontend server 00000000…  HTTP 200',
      '      ├─ tcp.connect       +2.000 ms  1001.000 ms  kernel  retransmits 1  192.168.77.1:55980 → 192.168.77.2:38513',
      '      │     • tcp.retransmit +1002.000 ms SYN_SENT',
      '      └─ GET /data      +1004.000 ms     1.000 ms  demo-backend server 00000000…',
      '         ├─ tcp.accept  +1003.000 ms     0.018 ms  kernel  accept queue 0.018 ms',
      '         │        192.168.77.1:55980 → 192.168.77.2:38513',
      '         └─ tcp.send    +1004.000 ms     0.000 ms  kernel  149119 B in 2 calls',
      '',
    ].join('\n'));
  });

  test('no line is wider than 120 columns, whatever the names, depth and details', () => {
    const long = 'x'.repeat(200);
    const spans: DemoSpan[] = [span({ spanId: id(1), name: `GET /${long}`, service: `svc-${long}`, kind: 'server', attrs: { 'http.response.status_code': 200 }, error: long })];
    for (let i = 2; i < 16; i++) {
      spans.push(span({ spanId: id(i), parentSpanId: id(i - 1), name: `${i % 2 ? 'tcp.recv' : `op-${long}`}`, kernel: i % 2 === 1, kind: 'client', service: `svc-${long}`, startNs: BigInt(i) * 10_000n * MS, endNs: BigInt(i) * 20_000n * MS,
        attrs: { 'kspan.bytes': 123456789, 'kspan.syscalls': 12345, 'kspan.wait_ns': 9_999_999_999, 'kspan.retransmits': 99, 'kspan.incomplete': true, 'kspan.incomplete.reason': long },
        events: [{ name: 'tcp.retransmit', timeNs: 1n, attrs: { 'kspan.tcp.state': long } }],
      }));
    }
    const text = renderTrace(groupTraces(spans)[0], long);
    const lines = text.trimEnd().split('\n');
    assert.ok(lines.length > 30);
    for (const l of lines) assert.ok(columns(l) <= MAX_COLUMNS, `${columns(l)} columns: ${l}`);
    assert.ok(lines.some((l) => l.includes('…')), 'long names are cut with …');
  });

  test('fitLine and labelled keep to the width', () => {
    assert.deepEqual(fitLine('head', ['aaaa', 'bbbb', 'cccc'], '  ', 14), ['head  aaaa', '  bbbb  cccc']);
    assert.deepEqual(fitLine('head', ['x'.repeat(30)], '  ', 14), ['head', `  ${'x'.repeat(11)}…`]);
    assert.deepEqual(labelled('  label', 10, 'one two three\nfour', 22), ['  label   one two', '          three', '          four']);
    assert.deepEqual(labelled('  label', 10, 'one two three four', 20), ['  label   one two', '          three four']);
  });
});
