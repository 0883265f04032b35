import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { columns, MAX_COLUMNS } from '../../src/export/columns.ts';
import type { DemoSpan } from '../../src/demo/demo-spans.ts';
import { summaryLines, type DemoSummaryInput } from '../../src/demo/summary.ts';

function spans(n: number, f: Partial<DemoSpan>): DemoSpan[] {
  return Array.from({ length: n }, (_, i) => ({
    service: 'demo-frontend', pid: 1, name: 'x', kind: 'internal' as const, traceId: 'a'.repeat(32), spanId: i.toString(16).padStart(16, '0'),
    parentSpanId: null, startNs: 0n, endNs: 1n, error: null, attrs: {}, events: [], kernel: false, ...f,
  }));
}
const retransmit = (state: string) => [{ name: 'tcp.retransmit', timeNs: 1n, attrs: { 'kspan.tcp.state': state } }];

const input: DemoSummaryInput = {
  requests: 559,
  drivenS: 10.4,
  failed: 0,
  stoppedEarly: false,
  appSpans: [...spans(559, { service: 'demo-driver' }), ...spans(1118, {}), ...spans(559, { service: 'demo-backend' })],
  kernelSpans: [
    ...spans(559, { name: 'tcp.connect', kernel: true }),
    ...spans(4, { name: 'tcp.accept', kernel: true }),
    ...spans(559, { name: 'tcp.accept', kernel: true, service: 'demo-backend' }),
    ...spans(2, { name: 'tcp.send', kernel: true, events: retransmit('ESTABLISHED') }),
    ...spans(1, { name: 'tcp.connect', kernel: true, events: retransmit('SYN_SENT') }),
    ...spans(3, { name: 'tcp.send', kernel: true, service: 'demo-backend', events: retransmit('LAST_ACK') }),
  ],
  records: { accept: 563, retransmit: 6 },
  backendContext: 'nodejs_v1_dev (tlsdesc)',
  dropped: { total: 312, syn: 10, fin: 12, data: 20, ack: 270 },
  retransSegs: { frontend: 100, backend: 10 },
  lost: { ringBufferFull: 0, exportDropped: 0 },
};

describe('demo summary', () => {
  test('says why accepts exceed requests and why drops exceed retransmits, with the counts', () => {
    assert.deepEqual(summaryLines(input), [
      'summary',
      '  requests           559 in 10.4 s (53.8/s), 0 failed',
      '  application spans  demo-driver 559, demo-frontend 1118, demo-backend 559',
      '  kernel spans       1128: 566 under demo-frontend, 562 under demo-backend',
      '                     tcp.connect 560, tcp.accept 563, tcp.send 5',
      '  accepts            563 = 559 by the backend, one per request (the frontend connects anew each time)',
      '                     + 4 by the frontend: the driver\'s keep-alive connections',
      '  dropped            312 packets, all from the frontend to the backend (iptables):',
      '                     270 pure ACKs, 10 SYNs, 20 request segments, 12 FINs',
      '  retransmitted      110 segments (the kernel\'s RetransSegs): 100 by the frontend, 10 by the backend;',
      '                     kspan saw 6 on traced sockets and put 6 on kernel spans',
      '    by TCP state     frontend: ESTABLISHED 2, SYN_SENT 1;',
      '                     backend: LAST_ACK 3',
      '  why fewer resent   a dropped SYN, request or FIN is sent again; a dropped pure ACK is not when a later ACK covers it,',
      '                     so the backend sends again only when none comes, as at the end of a connection',
      '  lost data          none',
    ]);
  });

  test('exported to OTLP: counts from the records; lost data named; within 120 columns with long names', () => {
    const lines = summaryLines({
      ...input,
      kernelSpans: null,
      exported: { spans: 4000, to: `http://${'collector.'.repeat(20)}example:4317` },
      appSpans: spans(3, { service: 's'.repeat(300) }),
      lost: { ringBufferFull: 3, exportDropped: 0, badSpanLines: 1 },
    });
    assert.equal(lines.find((l) => l.startsWith('  accepts')), '  accepts            563: the backend\'s, one per request (the frontend connects anew each time),');
    assert.equal(lines.at(-1), '  lost data          ringBufferFull 3, badSpanLines 1');
    assert.ok(!lines.some((l) => l.includes('by TCP state')));
    for (const l of lines) assert.ok(columns(l) <= MAX_COLUMNS, `${columns(l)}: ${l}`);
  });

  test('names the retransmits the kernel could not send (kspan.errno), which RetransSegs does not count', () => {
    const unsent = [{ name: 'tcp.retransmit', timeNs: 2n, attrs: { 'kspan.tcp.state': 'ESTABLISHED', 'kspan.errno': -16 } }];
    const lines = summaryLines({
      ...input,
      kernelSpans: [...input.kernelSpans!, ...spans(1, { name: 'tcp.send', kernel: true, events: unsent })],
      records: { accept: 563, retransmit: 7 },
    });
    const at = lines.findIndex((l) => l.startsWith('  retransmitted'));
    assert.deepEqual(lines.slice(at + 1, at + 3), [
      '                     kspan saw 7 on traced sockets and put 7 on kernel spans,',
      '                     1 of them attempts the kernel could not send (kspan.errno)',
    ]);
    assert.equal(lines[at + 3], '    by TCP state     frontend: ESTABLISHED 3, SYN_SENT 1;');
  });
});
