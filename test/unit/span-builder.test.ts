import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { hrTimeToNs, monotonicToHrTime, nsToHrTime } from '../../src/spans/hr-time.ts';
import { KERNEL_ATTRIBUTE_KEYS, SpanBuilder, spanAttributes } from '../../src/spans/span-builder.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';
import { ctx, KERNEL_SPAN_ATTRIBUTES, kernelSpan } from '../helpers/kernel-records.ts';

describe('hr-time', () => {
  test('monotonic + offset is exact to the nanosecond, beyond 2^53', () => {
    const offset = 1_767_225_600_000_000_000n - 5_000_000_000n; // 2026-01-01 at mono 5 s
    assert.deepEqual(monotonicToHrTime(5_000_000_123n, offset), [1_767_225_600, 123]);
    assert.deepEqual(monotonicToHrTime(5_999_999_999n, offset), [1_767_225_600, 999_999_999]);
    assert.equal(hrTimeToNs(monotonicToHrTime(123_456_789_012_345n, offset)), 123_456_789_012_345n + offset);
    assert.deepEqual(nsToHrTime(-5n), [0, 0]);
  });

  test('the float fast path agrees with bigint arithmetic everywhere, carries included', () => {
    const exact = (ns: bigint): [number, number] => [Number(ns / 1_000_000_000n), Number(ns % 1_000_000_000n)];
    const offsets = [0n, 1n, 999_999_999n, 1_767_225_599_999_999_999n, 1_767_225_600_123_456_789n];
    const monos: bigint[] = [0n, 1n, 999_999_999n, 1_000_000_000n, 9_007_199_254_740_991n, 9_007_199_254_740_992n, 2n ** 63n - 1n];
    for (let k = 1n; k < 9_007_199n; k = k * 7n + 3n) monos.push(k * 1_000_000_000n - 1n, k * 1_000_000_000n, k * 1_000_000_000n + 1n);
    let seed = 12345;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
    for (let i = 0; i < 20_000; i++) monos.push((BigInt(rand()) * BigInt(rand())) % 9_007_199_254_740_992n);
    for (const off of offsets) {
      for (const m of monos) assert.deepEqual(monotonicToHrTime(m, off), exact(m + off), `mono ${m} offset ${off}`);
    }
    for (const m of monos) assert.deepEqual(nsToHrTime(m), exact(m));
  });
});

describe('SpanBuilder', () => {
  const offset = 1_700_000_000_000_000_000n;
  const resource = resourceFromAttributes({ 'service.name': 'checkout' });
  const other = resourceFromAttributes({ 'service.name': 'other' });

  test('a server send: parent, ids, exact times, attributes, resource by pid', () => {
    const b = new SpanBuilder({ clockOffsetNs: offset, resourceFor: (pid) => (pid === 4242 ? resource : other) });
    const s = b.build(kernelSpan());
    const c = s.spanContext();
    assert.equal(s.name, 'tcp.send');
    assert.equal(s.kind, 0); // INTERNAL
    assert.equal(c.traceId, ctx(0xa).traceId);
    assert.match(c.spanId, /^[0-9a-f]{16}$/);
    assert.notEqual(c.spanId, ctx(0xa).spanId);
    assert.equal(c.traceFlags, 1);
    assert.deepEqual(s.parentSpanContext, { traceId: ctx(0xa).traceId, spanId: ctx(0xa).spanId, traceFlags: 1, isRemote: true });
    assert.deepEqual(s.startTime, [1_700_000_005, 123]);
    assert.deepEqual(s.endTime, [1_700_000_005, 900_456]);
    assert.deepEqual(s.duration, [0, 900_333]);
    assert.equal(s.resource, resource);
    assert.equal(s.ended, true);
    assert.deepEqual(s.status, { code: 0 });
    assert.deepEqual(s.attributes, KERNEL_SPAN_ATTRIBUTES);
    assert.equal(b.build(kernelSpan({ pid: 7 })).resource, other);
  });

  test('client connect failure, events, accept queue, incomplete, extra attributes', () => {
    const b = new SpanBuilder({
      clockOffsetNs: () => offset,
      resourceFor: () => resource,
      extraAttributes: (k) => ({ 'app.route': `/r/${k.cookie}` }),
    });
    const s = b.build(
      kernelSpan({
        name: 'tcp.connect',
        role: 'client',
        family: 6,
        local: { address: '::1', port: 50000 },
        peer: { address: '::1', port: 443 },
        bytes: 0,
        calls: 0,
        cookie: 5n,
        error: 'connect failed: refused',
        errorType: 'refused',
        retransmits: 1,
        srttUs: 250,
        incomplete: 'process_exit',
        events: [
          { name: 'tcp.retransmit', tsNs: 5_000_000_500n, tcpState: 2, resetSent: false, errno: 0 },
          { name: 'tcp.reset', tsNs: 5_000_000_600n, tcpState: 2, resetSent: false, errno: 0 },
        ],
      }),
    );
    assert.deepEqual(s.status, { code: 2, message: 'connect failed: refused' });
    assert.equal(s.attributes['network.type'], 'ipv6');
    assert.equal(s.attributes['server.address'], '::1');
    assert.equal(s.attributes['server.port'], 443);
    assert.equal(s.attributes['client.address'], undefined);
    assert.equal(s.attributes['error.type'], 'refused');
    assert.equal(s.attributes['kspan.retransmits'], 1);
    assert.equal(s.attributes['kspan.srtt_us'], 250);
    assert.equal(s.attributes['kspan.incomplete'], true);
    assert.equal(s.attributes['kspan.incomplete.reason'], 'process_exit');
    assert.equal(s.attributes['kspan.bytes'], undefined);
    assert.equal(s.attributes['app.route'], '/r/5');
    assert.deepEqual(s.events, [
      { name: 'tcp.retransmit', time: [1_700_000_005, 500], attributes: { 'kspan.tcp.state': 'SYN_SENT' } },
      {
        name: 'tcp.reset',
        time: [1_700_000_005, 600],
        attributes: { 'kspan.tcp.state': 'SYN_SENT', 'kspan.reset.direction': 'received' },
      },
    ]);
    const acc = spanAttributes(kernelSpan({ name: 'tcp.accept', acceptQueueNs: 123_456n, bytes: 0, calls: 0 }));
    assert.equal(acc['kspan.accept_queue_ns'], 123_456);
    assert.equal(acc['kspan.bytes'], undefined);
  });

  test('an exchange root keeps the correlator\'s ids, kind SERVER or CLIENT; its spans name it as a local parent', () => {
    const b = new SpanBuilder({ clockOffsetNs: offset, resourceFor: () => resource });
    const E = ctx(0xe1);
    const root = b.build(kernelSpan({ name: 'tcp.exchange', parent: null, self: E, bytes: 0, calls: 0 }));
    assert.equal(root.kind, 1); // SERVER
    assert.deepEqual(root.spanContext(), { traceId: E.traceId, spanId: E.spanId, traceFlags: 1, isRemote: false });
    assert.equal(root.parentSpanContext, undefined);
    assert.equal(root.attributes['kspan.bytes'], undefined);
    assert.equal(root.attributes['server.port'], 8080);
    assert.equal(root.attributes['client.port'], 51234);
    const client = b.build(kernelSpan({ name: 'tcp.exchange', role: 'client', parent: null, self: E, bytes: 0, calls: 0 }));
    assert.equal(client.kind, 2); // CLIENT
    const child = b.build(kernelSpan({ name: 'tcp.recv', parent: E, localParent: true }));
    assert.equal(child.kind, 0);
    assert.deepEqual(child.parentSpanContext, { traceId: E.traceId, spanId: E.spanId, traceFlags: 1, isRemote: false });
    assert.equal(child.spanContext().traceId, E.traceId);
    // recv/send carry both ends of the connection, as accept/connect do.
    assert.deepEqual(
      [child.attributes['network.peer.address'], child.attributes['network.peer.port'], child.attributes['network.local.address'], child.attributes['network.local.port']],
      ['10.0.0.2', 51234, '10.0.0.1', 8080],
    );
  });

  test('an orphan becomes a sampled root of a new trace; span ids are unique', () => {
    const b = new SpanBuilder({ clockOffsetNs: 0n, resourceFor: () => resource });
    const s = b.build(kernelSpan({ parent: null }));
    assert.equal(s.parentSpanContext, undefined);
    assert.match(s.spanContext().traceId, /^[0-9a-f]{32}$/);
    assert.equal(s.spanContext().traceFlags, 1);
    const ids = new Set<string>();
    for (let i = 0; i < 5000; i++) ids.add(b.build(kernelSpan()).spanContext().spanId);
    assert.equal(ids.size, 5000);
  });
});

describe('README: the span model it documents', () => {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');

  test('names every attribute key kspan sets on a kernel span or event', () => {
    const missing = KERNEL_ATTRIBUTE_KEYS.filter((k) => !readme.includes(`\`${k}\``));
    assert.deepEqual(missing, []);
  });

  test('names every kernel span and event', () => {
    const source = readFileSync(join(REPO_ROOT, 'src/spans/kernel-span.ts'), 'utf8');
    const union = (type: string) => [...new RegExp(`export type ${type} =([^;]+);`).exec(source)![1].matchAll(/'([a-z_.]+)'/g)].map((m) => m[1]);
    const names = [...union('KernelSpanName'), ...union('KernelEventName')];
    assert.ok(names.includes('tcp.accept') && names.includes('thread.off_cpu'), `parsed ${names.join(', ')}`);
    assert.deepEqual(names.filter((n) => !readme.includes(`\`${n}\``)), []);
  });

  test('names every incomplete reason', () => {
    const source = readFileSync(join(REPO_ROOT, 'src/spans/kernel-span.ts'), 'utf8');
    const reasons = [.../type IncompleteReason = ([^;]+);/.exec(source)![1].matchAll(/'([a-z_]+)'/g)].map((m) => m[1]);
    assert.ok(reasons.length >= 5, `parsed ${reasons.join(', ')}`);
    assert.deepEqual(reasons.filter((r) => !readme.includes(`\`${r}\``)), []);
  });
});
