import assert from 'node:assert/strict';
import { test } from 'node:test';
import { eventLine } from '../../src/records/event-json.ts';
import { endpoint, ipv6 } from '../../src/records/decoder.ts';
import type { KernelRecord } from '../../src/records/kernel-record.ts';
import { parseEventLine } from '../helpers/kspan-cli.ts';

const base: KernelRecord = {
  type: 'send', tsNs: 5_000_000_123n, startNs: 5_000_000_000n, cookie: 18446744073709551615n, pid: 10, tid: 11,
  family: 4, local: { address: '127.0.0.1', port: 8080 }, peer: { address: '10.0.0.2', port: 40000 },
  role: 'server', context: { traceId: 'a'.repeat(32), spanId: 'b'.repeat(16), traceFlags: 1 },
  bytes: 1234, calls: 2, flushed: false, afterDropped: false, sentAcked: false, fallback: false, errno: 0, resetSent: false, tcpState: 0,
  bytesSent: 0, bytesReceived: 0, retransmits: 0, srttUs: 0,
};
const OFFSET = 1_790_000_000_000_000_000n;

test('send line: exact wall-clock ts_ns beyond 2^53, cookie as a decimal string, context', () => {
  const line = eventLine(base, OFFSET);
  assert.match(line, /"ts_ns":1790000005000000123,/);
  const o = parseEventLine(line);
  assert.equal(o.ts_ns, 1_790_000_005_000_000_123n);
  assert.equal(o.first_ts_ns, 1_790_000_005_000_000_000n);
  assert.equal(o.cookie, '18446744073709551615');
  assert.equal(o.local, '127.0.0.1:8080');
  assert.equal(o.bytes, 1234);
  assert.equal(o.calls, 2);
  assert.equal(o.trace_id, 'a'.repeat(32));
  assert.equal(o.span_id, 'b'.repeat(16));
  assert.equal(o.trace_flags, 1);
  assert.equal(o.io_path, 'sock_length');
});

test('accept, connect and close carry their own fields', () => {
  const acc = parseEventLine(eventLine({ ...base, type: 'accept', startNs: 4_000_000_000n, context: null }, 0n));
  assert.equal(acc.queue_ns, 1_000_000_123);
  assert.equal(acc.trace_id, null);
  const noHs = parseEventLine(eventLine({ ...base, type: 'accept', startNs: 0n }, 0n));
  assert.equal(noHs.queue_ns, null);
  const con = parseEventLine(eventLine({ ...base, type: 'connect', errno: 111 }, 0n));
  assert.equal(con.error, 'refused');
  assert.equal(con.duration_ns, 123);
  const cl = parseEventLine(eventLine({ ...base, type: 'close', bytesSent: 5, bytesReceived: 6, retransmits: 7, srttUs: 8 }, 0n));
  assert.deepEqual([cl.bytes_sent, cl.bytes_received, cl.retransmits, cl.srtt_us], [5, 6, 7, 8]);
  assert.equal(cl.bytes, undefined);
});

test('IPv6 text form (RFC 5952) and bracketed endpoints', () => {
  const a = new Uint8Array(16);
  a[15] = 1;
  assert.equal(ipv6(a), '::1');
  const b = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
  assert.equal(ipv6(b), '2001:db8::1:0:0:1');
  const m = Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]);
  assert.equal(ipv6(m), '::ffff:127.0.0.1');
  const line = eventLine({ ...base, family: 6, local: endpoint(a, 443, true) }, 0n);
  assert.equal(parseEventLine(line).local, '[::1]:443');
});

test('tcp_state is the kernel\'s state name (include/net/tcp_states.h); an unknown number stays a number, as text', () => {
  const rtx = parseEventLine(eventLine({ ...base, type: 'retransmit', tcpState: 2, errno: 0 }, 0n));
  assert.equal(rtx.tcp_state, 'SYN_SENT');
  assert.equal(rtx.error, null);
  // The kernel's err is a negative errno (tcp_retransmit_skb's return).
  const busy = parseEventLine(eventLine({ ...base, type: 'retransmit', tcpState: 1, errno: -16 }, 0n));
  assert.deepEqual([busy.tcp_state, busy.error], ['ESTABLISHED', 'EBUSY']);
  assert.equal(parseEventLine(eventLine({ ...base, type: 'retransmit', tcpState: 1, errno: -12 }, 0n)).error, 'ENOMEM');
  const rst = parseEventLine(eventLine({ ...base, type: 'reset', tcpState: 1, resetSent: true }, 0n));
  assert.deepEqual([rst.tcp_state, rst.direction], ['ESTABLISHED', 'sent']);
  const names = [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 99].map((s) => parseEventLine(eventLine({ ...base, type: 'reset', tcpState: s }, 0n)).tcp_state);
  assert.deepEqual(names, ['ESTABLISHED', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE', 'CLOSE_WAIT', 'LAST_ACK',
    'LISTEN', 'CLOSING', 'NEW_SYN_RECV', 'BOUND_INACTIVE', '99']);
});
