/**
 * Function spans without the kernel: `--uprobe` specs and presets, matching a
 * spec to a mapped file, the `calls` ring record decoder, the call span builder
 * (parents, attributes, results, orphans, nested TLS calls, calls closed
 * without a return), and the OTLP encoding of those spans, byte for byte the
 * OpenTelemetry transformer's.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { loadConfig } from '../../src/core/config.ts';
import { KspanError } from '../../src/core/errors.ts';
import { encodeExportRequest } from '../../src/export/export-request.ts';
import { KernelSpanEncoder } from '../../src/export/span-encoder.ts';
import { encodeKspanCall, KSPAN_CALL_SIZE, KspanCallFlag, type KspanCall } from '../../src/records/abi.generated.ts';
import { CallSpanBuilder, describeCall, eaiName, type ProbeInfo } from '../../src/spans/call-spans.ts';
import { IdSource } from '../../src/spans/span-ids.ts';
import { decodeCallRecord, type CallRecord } from '../../src/uprobes/call-record.ts';
import { binaryMatches, parseUprobeSpec, presetSpecs, uprobeSpecs, UprobeSpecError } from '../../src/uprobes/uprobe-spec.ts';

const TRACE = '0af7651916cd43dd8448eb211c80319c';
const SPAN = 'b7ad6b7169203331';

describe('--uprobe specs', () => {
  test('BINARY:SYMBOL[:SPAN_NAME]: the span is named after the symbol unless named', () => {
    assert.deepEqual(parseUprobeSpec('/usr/bin/app:handle_request'), { binary: '/usr/bin/app', symbol: 'handle_request', spanName: 'handle_request', kind: 'call' });
    assert.deepEqual(parseUprobeSpec(' libssl:SSL_read:ssl.read '), { binary: 'libssl', symbol: 'SSL_read', spanName: 'ssl.read', kind: 'call' });
    assert.deepEqual(parseUprobeSpec('app:_ZN3foo3barEv:foo bar'), { binary: 'app', symbol: '_ZN3foo3barEv', spanName: 'foo bar', kind: 'call' });
  });

  test('a malformed spec is refused with what to give', () => {
    for (const [raw, message] of [
      ['handle_request', 'not BINARY_OR_LIB:SYMBOL[:SPAN_NAME]'],
      ['a:b:c:d', 'not BINARY_OR_LIB:SYMBOL[:SPAN_NAME]'],
      [':sym', 'no binary or library before the first ":"'],
      ['app:9lives', '"9lives" is not a symbol name'],
      ['app:', '"" is not a symbol name'],
    ] as const) {
      assert.throws(() => parseUprobeSpec(raw), (e: unknown) => e instanceof UprobeSpecError && e.message === message && e.hint.startsWith('give BINARY_OR_LIB'), raw);
    }
  });

  test('the flags: --uprobe repeatable, --uprobe-presets a list or none; bad values are usage errors naming the flag', () => {
    const c = loadConfig('run', { argv: ['--pid', '1', '--uprobe', 'app:f', '--uprobe', 'libc:g:x', '--uprobe-presets', 'tls'], env: {} });
    assert.deepEqual(c.uprobes.map((s) => `${s.binary}:${s.symbol}:${s.spanName}`), ['app:f:f', 'libc:g:x']);
    assert.deepEqual(c.uprobePresets, ['tls']);
    assert.deepEqual(loadConfig('run', { argv: ['--pid', '1'], env: {} }).uprobePresets, ['dns', 'tls']);
    assert.deepEqual(loadConfig('run', { argv: ['--pid', '1', '--uprobe-presets', 'none'], env: {} }).uprobePresets, []);
    assert.throws(() => loadConfig('run', { argv: ['--pid', '1', '--uprobe', 'nocolon'], env: {} }),
      (e: unknown) => e instanceof KspanError && e.code === 'KSPAN_ERR_USAGE' && e.message.startsWith('--uprobe nocolon: not BINARY_OR_LIB:SYMBOL[:SPAN_NAME]'));
    assert.throws(() => loadConfig('run', { argv: ['--pid', '1', '--uprobe-presets', 'dns,http'], env: {} }),
      (e: unknown) => e instanceof KspanError && e.code === 'KSPAN_ERR_USAGE' && e.message.startsWith('--uprobe-presets dns,http: "http" is not a preset'));
  });

  test('presets: getaddrinfo for dns, the three handshake functions for tls, before the user\'s', () => {
    assert.deepEqual(presetSpecs('dns').map((s) => [s.binary, s.symbol, s.spanName, s.kind]), [['libc', 'getaddrinfo', 'dns.lookup', 'dns']]);
    assert.deepEqual(presetSpecs('tls').map((s) => s.symbol), ['SSL_do_handshake', 'SSL_connect', 'SSL_accept']);
    assert.ok(presetSpecs('tls').every((s) => s.spanName === 'tls.handshake' && s.kind === 'tls' && s.alsoExecutable));
    assert.deepEqual(uprobeSpecs(['dns'], [parseUprobeSpec('app:f')]).map((s) => s.symbol), ['getaddrinfo', 'f']);
  });

  test('a binary names a mapped file by path, file name or stem, never by a prefix of another library', () => {
    assert.ok(binaryMatches('/usr/bin/app', '/usr/bin/app'));
    assert.ok(!binaryMatches('/usr/bin/app', '/usr/local/bin/app'));
    assert.ok(binaryMatches('libssl', '/usr/lib/x86_64-linux-gnu/libssl.so.3'));
    assert.ok(binaryMatches('libssl.so.3', '/usr/lib/x86_64-linux-gnu/libssl.so.3'));
    assert.ok(binaryMatches('libc', '/usr/lib/x86_64-linux-gnu/libc.so.6'));
    assert.ok(binaryMatches('libc', '/lib/libc-2.31.so'));
    assert.ok(!binaryMatches('libc', '/usr/lib/x86_64-linux-gnu/libcrypto.so.3'));
    assert.ok(!binaryMatches('libc', '/usr/lib/x86_64-linux-gnu/libcap.so.2'));
    assert.ok(binaryMatches('app', '/srv/app'));
    assert.ok(!binaryMatches('app', '/srv/apple'));
  });
});

function rawCall(over: Partial<KspanCall> = {}): KspanCall {
  return {
    start_ns: 1_000_000n, end_ns: 1_250_000n, ret: 0n, pid: 41, tid: 42, probe: 1, outer_probe: 0, count: 0, flags: 0, depth: 0,
    name: new Uint8Array(64),
    ctx: { trace_id: Buffer.from(TRACE, 'hex'), span_id: Buffer.from(SPAN, 'hex'), trace_flags: 1, valid: 1, attrs_size: 0, attrs: new Uint8Array(52) },
    ...over,
  };
}

function recordOf(c: KspanCall): CallRecord {
  const buf = new DataView(new ArrayBuffer(KSPAN_CALL_SIZE + 8));
  encodeKspanCall(c, buf, 8);
  return decodeCallRecord(buf, 8);
}

describe('calls ring records', () => {
  test('decoded with the name up to its NUL, flags, ids and the context', () => {
    const name = new Uint8Array(64);
    name.set(Buffer.from('db.internal\0garbage'));
    const r = recordOf(rawCall({ name, count: 3, ret: -2n, probe: 7, outer_probe: 5, flags: KspanCallFlag.KSPAN_CALL_F_UNFINISHED }));
    assert.deepEqual(r, {
      probe: 7, outerProbe: 5, pid: 41, tid: 42, startNs: 1_000_000n, endNs: 1_250_000n, ret: -2n, addresses: 3,
      name: 'db.internal', unfinished: true, abandoned: false, context: { traceId: TRACE, spanId: SPAN, traceFlags: 1 },
    });
    assert.equal(recordOf(rawCall({ flags: KspanCallFlag.KSPAN_CALL_F_ABANDONED })).abandoned, true);
    assert.equal(recordOf(rawCall({ ctx: { ...rawCall().ctx, valid: 0 } })).context, null);
  });
});

const PROBES: Record<number, ProbeInfo> = {
  1: { spanName: 'dns.lookup', kind: 'dns', symbol: 'getaddrinfo', binary: '/usr/lib/x86_64-linux-gnu/libc.so.6' },
  2: { spanName: 'tls.handshake', kind: 'tls', symbol: 'SSL_connect', binary: '/usr/lib/x86_64-linux-gnu/libssl.so.3' },
  3: { spanName: 'tls.handshake', kind: 'tls', symbol: 'SSL_do_handshake', binary: '/usr/lib/x86_64-linux-gnu/libssl.so.3' },
  4: { spanName: 'work', kind: 'call', symbol: 'do_work', binary: '/srv/app' },
};

function dnsRecord(over: Partial<CallRecord> = {}): CallRecord {
  return {
    probe: 1, outerProbe: 0, pid: 41, tid: 42, startNs: 1_000_000n, endNs: 1_250_000n, ret: 0n, addresses: 2,
    name: 'db.internal', unfinished: false, abandoned: false, context: { traceId: TRACE, spanId: SPAN, traceFlags: 1 }, ...over,
  };
}

describe('call spans', () => {
  const resource = resourceFromAttributes({ 'service.name': 'app' });
  const builder = (orphans = false) => new CallSpanBuilder({
    clockOffsetNs: 1_700_000_000_000_000_000n, resourceFor: () => resource, probe: (id) => PROBES[id], orphans, ids: new IdSource(),
  });

  test('dns.lookup: under the caller\'s span, semconv name, result, addresses; a failure is an error named by its EAI code', () => {
    const b = builder();
    const ok = b.build(dnsRecord())!;
    assert.equal(ok.name, 'dns.lookup');
    assert.equal(ok.kind, 2); // CLIENT
    assert.deepEqual(ok.parentSpanContext, { traceId: TRACE, spanId: SPAN, traceFlags: 1, isRemote: true });
    assert.equal(ok.spanContext().traceId, TRACE);
    assert.deepEqual(ok.startTime, [1_700_000_000, 1_000_000]);
    assert.deepEqual(ok.duration, [0, 250_000]);
    assert.deepEqual(ok.attributes, {
      'process.pid': 41, 'thread.id': 42, 'code.function.name': 'getaddrinfo', 'kspan.uprobe.binary': '/usr/lib/x86_64-linux-gnu/libc.so.6',
      'dns.question.name': 'db.internal', 'kspan.dns.result': 0, 'kspan.dns.addresses': 2,
    });
    assert.deepEqual(ok.status, { code: 0 });
    // getaddrinfo returns an int: only rax's low 32 bits count.
    const failed = b.build(dnsRecord({ ret: 0xffff_ffff_ffff_fffen & 0xffff_ffffn, addresses: 0 }))!;
    assert.equal(failed.attributes['kspan.dns.result'], -2);
    assert.equal(failed.attributes['error.type'], 'EAI_NONAME');
    assert.deepEqual(failed.status, { code: 2, message: 'getaddrinfo failed: EAI_NONAME' });
    assert.equal(eaiName(-3), 'EAI_AGAIN');
    assert.equal(eaiName(-99), 'EAI_-99');
  });

  test('tls.handshake: 1 is success, anything else an error with the function\'s return', () => {
    const b = builder();
    const ok = b.build(dnsRecord({ probe: 2, ret: 1n, name: '', addresses: 0x0303 }))!;
    assert.deepEqual([ok.name, ok.attributes['kspan.tls.result'], ok.status.code, ok.attributes['dns.question.name']], ['tls.handshake', 1, 0, undefined]);
    assert.deepEqual([ok.attributes['tls.protocol.name'], ok.attributes['tls.protocol.version']], ['tls', '1.2']);
    // Not a version (OpenSSL 3.2's SSL starts with a type, BoringSSL's with a pointer): left out.
    for (const notVersion of [0, 0x80, 0x0305, 0x5566_0304]) {
      assert.equal(b.build(dnsRecord({ probe: 2, ret: 1n, name: '', addresses: notVersion >>> 0 }))!.attributes['tls.protocol.version'], undefined);
    }
    const bad = b.build(dnsRecord({ probe: 2, ret: 0xffff_ffffn, name: '' }))!;
    assert.deepEqual(bad.status, { code: 2, message: 'SSL_connect returned -1' });
    assert.equal(bad.attributes['error.type'], 'tls_handshake_failed');
  });

  test('a user-defined call: its name, internal, no result attributes', () => {
    const s = builder().build(dnsRecord({ probe: 4, ret: 12345n, name: '' }))!;
    assert.equal(s.name, 'work');
    assert.equal(s.kind, 0);
    assert.deepEqual(Object.keys(s.attributes), ['process.pid', 'thread.id', 'code.function.name', 'kspan.uprobe.binary']);
  });

  test('a call closed without its return is marked and an error: thread exit, or returned past', () => {
    const gone = describeCall(dnsRecord({ unfinished: true }), PROBES[1]);
    assert.equal(gone.attributes['kspan.incomplete.reason'], 'thread_exit');
    assert.equal(gone.attributes['kspan.dns.result'], undefined, 'no result without a return');
    assert.deepEqual(gone.status, { code: 2, message: 'the thread exited inside the call' });
    const past = describeCall(dnsRecord({ abandoned: true }), PROBES[4]);
    assert.deepEqual([past.attributes['kspan.incomplete'], past.attributes['kspan.incomplete.reason']], [true, 'abandoned']);
  });

  test('no context: counted, exported only with orphans (a root span); a tls call inside a tls call: counted; an unknown probe: counted', () => {
    const b = builder();
    assert.equal(b.build(dnsRecord({ context: null })), null);
    assert.equal(b.build(dnsRecord({ probe: 3, outerProbe: 2 })), null);
    assert.notEqual(b.build(dnsRecord({ probe: 3, outerProbe: 4 })), null, 'inside a user-defined call it is a handshake of its own');
    assert.equal(b.build(dnsRecord({ probe: 99 })), null);
    assert.deepEqual(b.counters, { spans: 1, orphans: 1, nested: 1, unknownProbe: 1 });
    const root = builder(true).build(dnsRecord({ context: null }))!;
    assert.equal(root.parentSpanContext, undefined);
    assert.notEqual(root.spanContext().traceId, TRACE);
  });

  test('encoded for OTLP byte for byte as the OpenTelemetry transformer encodes the same spans', () => {
    const b = builder();
    const spans = [
      b.build(dnsRecord())!,
      b.build(dnsRecord({ ret: 0xfffffffen }))!,
      b.build(dnsRecord({ probe: 4, unfinished: true }))!,
      builder(true).build(dnsRecord({ context: null, probe: 2, ret: 1n }))!,
    ];
    const encoder = new KernelSpanEncoder({ clockOffsetNs: 0n, resourceFor: () => resource });
    const ours = encodeExportRequest(spans.map((s) => encoder.encodeReadable(s)));
    const official = Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!);
    assert.ok(ours.equals(official), `ours ${ours.length} B, the transformer's ${official.length} B`);
  });
});
