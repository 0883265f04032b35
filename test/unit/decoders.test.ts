import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseBtf, BTF_KIND } from '../../tools/gen-records/btf.ts';
import { generatedRecordsSource } from '../../tools/gen-records/records-source.ts';
import { parseElf } from '../../src/elf/elf-file.ts';
import {
  decodeKspanEvent,
  encodeKspanEvent,
  KSPAN_EVENT_SIZE,
  KSPAN_TLS_LOC_SIZE,
  type KspanEvent,
} from '../../src/records/abi.generated.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';
import { decodeRecords } from '../../src/records/decoder.ts';
import type { KernelRecord } from '../../src/records/kernel-record.ts';

const OBJECT = join(REPO_ROOT, 'bpf/.output/kspan.bpf.o');

test('src/records/abi.generated.ts matches the BTF of the built BPF object (regenerate with npm run gen)', () => {
  const committed = readFileSync(join(REPO_ROOT, 'src/records/abi.generated.ts'), 'utf8');
  assert.equal(committed, generatedRecordsSource(OBJECT));
});

test('BTF layout of struct kspan_event as the C compiler laid it out', () => {
  const btf = parseBtf(parseElf(readFileSync(OBJECT)).section('.BTF')!);
  const ev = btf.byName('kspan_event', BTF_KIND.STRUCT)!;
  assert.equal(ev.size, KSPAN_EVENT_SIZE);
  const off = Object.fromEntries(ev.members.map((m) => [m.name, m.bitOffset / 8]));
  assert.equal(off.ts_ns, 0);
  assert.equal(off.cookie, 16);
  assert.equal(off.pid, 48);
  assert.equal(off.type, 72);
  assert.equal(off.ctx, 112);
  assert.equal(btf.sizeOf(ev.members.find((m) => m.name === 'laddr')!.type), 16);
  assert.equal(KSPAN_TLS_LOC_SIZE, 24);
});

test('the socket table keeps 192 bytes a socket, its spans as the head of a kspan_trace_ctx', () => {
  const btf = parseBtf(parseElf(readFileSync(OBJECT)).section('.BTF')!);
  assert.equal(btf.byName('kspan_sock', BTF_KIND.STRUCT)!.size, 192);
  const ref = btf.byName('kspan_span_ref', BTF_KIND.STRUCT)!;
  const ctx = btf.byName('kspan_trace_ctx', BTF_KIND.STRUCT)!;
  assert.equal(ref.size, 28);
  // The BPF side copies the first 28 bytes either way, and keys `span_attrs` by the first 24.
  for (const m of ref.members) {
    assert.deepEqual(ctx.members.find((c) => c.name === m.name)?.bitOffset, m.bitOffset, m.name);
  }
  assert.equal(ctx.members.find((c) => c.name === 'attrs')!.bitOffset / 8, 28);
});

test('decode(encode(x)) round-trips every field, including 64-bit values beyond 2^53', () => {
  const ev: KspanEvent = {
    ts_ns: 0xfedcba9876543210n, start_ns: 1n, cookie: 2n ** 63n + 5n, bytes: 123456789n,
    bytes_sent: 7n, bytes_received: 8n, pid: 4242, tid: 4243, calls: 3, retransmits: 2, srtt_us: 55,
    error: -110, type: 3, family: 10, flags: 5, tcp_state: 1, lport: 65535, rport: 80,
    laddr: Uint8Array.from({ length: 16 }, (_, i) => i), raddr: new Uint8Array(16).fill(0xff),
    ctx: {
      trace_id: new Uint8Array(16).fill(0xab), span_id: new Uint8Array(8).fill(0xcd), trace_flags: 1, valid: 1,
      attrs_size: 300, attrs: Uint8Array.from({ length: 52 }, (_, i) => i + 1),
    },
    prev: {
      first_ns: 9n, last_ns: 10n, bytes: 11n, tid: 12, calls: 13, dir: 4, flags: 2,
      ctx: { trace_id: new Uint8Array(16).fill(1), span_id: new Uint8Array(8).fill(2), trace_flags: 0, valid: 1, attrs_size: 0, attrs: new Uint8Array(52) },
    },
  };
  const buf = new DataView(new ArrayBuffer(KSPAN_EVENT_SIZE + 8));
  encodeKspanEvent(ev, buf, 8);
  assert.deepEqual(decodeKspanEvent(buf, 8), ev);
});

test('decodeRecords: the ids and endpoints a record repeats are the same values, and a changed one is decoded anew', () => {
  const ctxOf = (t: number, sp: number) => ({
    trace_id: new Uint8Array(16).fill(t), span_id: new Uint8Array(8).fill(sp), trace_flags: 1, valid: 1, attrs_size: 0, attrs: new Uint8Array(52),
  });
  const noPrev = { first_ns: 0n, last_ns: 0n, bytes: 0n, tid: 0, calls: 0, dir: 0, flags: 0, ctx: { ...ctxOf(0, 0), valid: 0 } };
  const ev = (cookie: bigint, lport: number, raddr: number[], rport: number, t: number, sp: number): KspanEvent => ({
    ts_ns: 5n, start_ns: 1n, cookie, bytes: 10n, bytes_sent: 0n, bytes_received: 0n, pid: 7, tid: 8, calls: 1, retransmits: 0, srtt_us: 0,
    error: 0, type: 3, family: 2, flags: 1, tcp_state: 1, lport, rport,
    laddr: Uint8Array.from([127, 0, 0, 1, ...new Array(12).fill(0)]), raddr: Uint8Array.from([...raddr, ...new Array(12).fill(0)]),
    ctx: ctxOf(t, sp), prev: noPrev,
  });
  const decode = (e: KspanEvent): KernelRecord => {
    const buf = new DataView(new ArrayBuffer(KSPAN_EVENT_SIZE));
    encodeKspanEvent(e, buf, 0);
    const out: KernelRecord[] = [];
    decodeRecords(buf, 0, (r) => out.push(r));
    assert.equal(out.length, 1);
    return out[0];
  };
  const a = decode(ev(100n, 8080, [10, 0, 0, 2], 40000, 0xab, 0xcd));
  const b = decode(ev(100n, 8080, [10, 0, 0, 2], 40000, 0xab, 0xcd));
  assert.deepEqual(a.local, { address: '127.0.0.1', port: 8080 });
  assert.deepEqual(a.peer, { address: '10.0.0.2', port: 40000 });
  assert.equal(a.context!.traceId, 'ab'.repeat(16));
  assert.equal(a.context!.spanId, 'cd'.repeat(8));
  assert.equal(b.peer, a.peer, 'the same socket and endpoint: the same object');
  // Another socket with the same peer gets its own objects (the encoder caches a socket's bytes by its peer object).
  const other = decode(ev(101n, 8080, [10, 0, 0, 2], 40000, 0xab, 0xcd));
  assert.notEqual(other.peer, a.peer);
  assert.deepEqual(other.peer, a.peer);
  // A changed peer port, address or span on the same socket is decoded anew, exactly.
  assert.deepEqual(decode(ev(100n, 8080, [10, 0, 0, 2], 40001, 0xab, 0xcd)).peer, { address: '10.0.0.2', port: 40001 });
  assert.deepEqual(decode(ev(100n, 8080, [10, 0, 0, 3], 40001, 0xab, 0xcd)).peer, { address: '10.0.0.3', port: 40001 });
  const c = decode(ev(100n, 8080, [10, 0, 0, 3], 40001, 0xab, 0xce)).context!;
  assert.deepEqual([c.traceId, c.spanId], ['ab'.repeat(16), 'ce'.repeat(8)]);
  const d = decode(ev(100n, 8080, [10, 0, 0, 3], 40001, 0xac, 0xce)).context!;
  assert.deepEqual([d.traceId, d.spanId], ['ac'.repeat(16), 'ce'.repeat(8)]);
  // IPv4 text is kept per address, a bounded table: more addresses than it holds, twice over, each exact.
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 5000; i++) {
      const raddr = [10, (i >> 16) & 255, (i >> 8) & 255, i & 255];
      assert.equal(decode(ev(1000n + BigInt(i), 8080, raddr, 40000, 0xab, 0xcd)).peer.address, raddr.join('.'));
    }
  }
});

test('decodeRecords: counts past 2^32 and ids differing in one byte are read exactly in place', () => {
  const ctxOf = (traceId: Uint8Array, spanId: Uint8Array) => ({ trace_id: traceId, span_id: spanId, trace_flags: 1, valid: 1, attrs_size: 0, attrs: new Uint8Array(52) });
  const trace = Uint8Array.from({ length: 16 }, (_, i) => 0x10 + i);
  const span = Uint8Array.from({ length: 8 }, (_, i) => 0xf0 + i);
  const decode = (traceId: Uint8Array, spanId: Uint8Array): KernelRecord[] => {
    const e: KspanEvent = {
      ts_ns: 5n, start_ns: 1n, cookie: 900n, bytes: 2n ** 40n + 5n, bytes_sent: 2n ** 33n + 7n, bytes_received: 2n ** 32n, pid: 7, tid: 8,
      calls: 1, retransmits: 0, srtt_us: 0, error: 0, type: 3, family: 2, flags: 1, tcp_state: 1, lport: 8080, rport: 40000,
      laddr: Uint8Array.from([127, 0, 0, 1, ...new Array(12).fill(0)]), raddr: Uint8Array.from([192, 168, 200, 254, ...new Array(12).fill(0)]),
      ctx: ctxOf(traceId, spanId),
      prev: { first_ns: 2n, last_ns: 3n, bytes: 2n ** 45n + 3n, tid: 8, calls: 2, dir: 4, flags: 0, ctx: ctxOf(traceId, spanId) },
    };
    const buf = new DataView(new ArrayBuffer(KSPAN_EVENT_SIZE + 4));
    encodeKspanEvent(e, buf, 4);
    const out: KernelRecord[] = [];
    decodeRecords(buf, 4, (r) => out.push(r));
    return out;
  };
  const [agg, send] = decode(trace, span);
  assert.deepEqual([agg.type, agg.bytes], ['recv', 2 ** 45 + 3]);
  assert.deepEqual([send.type, send.bytes, send.bytesSent, send.bytesReceived], ['send', 2 ** 40 + 5, 2 ** 33 + 7, 2 ** 32]);
  assert.deepEqual(send.peer, { address: '192.168.200.254', port: 40000 });
  assert.equal(send.context!.traceId, Buffer.from(trace).toString('hex'));
  // One byte changed in the trace id's third word, then in the span id's second word: each decoded anew.
  const t2 = trace.slice();
  t2[9] ^= 0xff;
  assert.equal(decode(t2, span)[1].context!.traceId, Buffer.from(t2).toString('hex'));
  const s2 = span.slice();
  s2[7] ^= 1;
  const c = decode(t2, s2)[1].context!;
  assert.deepEqual([c.traceId, c.spanId], [Buffer.from(t2).toString('hex'), Buffer.from(s2).toString('hex')]);
});
