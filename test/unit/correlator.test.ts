import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { KernelRecord } from '../../src/records/kernel-record.ts';
import type { KernelSpan } from '../../src/spans/kernel-span.ts';
import { SocketCorrelator, type SocketCorrelatorOptions } from '../../src/spans/socket-correlator.ts';
import { ctx, FakeSocket } from '../helpers/kernel-records.ts';

const A = ctx(0xa), B = ctx(0xb), C = ctx(0xc), X = ctx(0x5);

function run(records: KernelRecord[], options: Partial<SocketCorrelatorOptions> = {}) {
  const spans: KernelSpan[] = [];
  const c = new SocketCorrelator({ emit: (s) => spans.push(s), clock: 'records', ...options });
  for (const r of records) c.push(r);
  return { spans, c };
}

/** The fields a test cares about, in emission order. */
function brief(s: KernelSpan) {
  return {
    name: s.name,
    parent: s.parent?.spanId ?? null,
    start: s.startNs,
    end: s.endNs,
    bytes: s.bytes,
    calls: s.calls,
  };
}

describe('server side', () => {
  test('first request: accept, recv and send under the responding span; close ends the held send', () => {
    const s = new FakeSocket({ cookie: 7n, role: 'server', tid: 11 });
    const { spans, c } = run([
      s.accept(1000, 1500),
      s.recv(null, 120, 1, 2000, 2100),
      s.send(A, 512, 2, 3000, 3200),
      s.close(4000, { srttUs: 77 }),
    ]);
    assert.deepEqual(spans.map(brief), [
      { name: 'tcp.accept', parent: A.spanId, start: 1000n, end: 1500n, bytes: 0, calls: 0 },
      { name: 'tcp.recv', parent: A.spanId, start: 2000n, end: 2100n, bytes: 120, calls: 1 },
      { name: 'tcp.send', parent: A.spanId, start: 3000n, end: 3200n, bytes: 512, calls: 2 },
    ]);
    assert.equal(spans[0].acceptQueueNs, 500n);
    assert.equal(spans[2].srttUs, 77);
    assert.equal(spans[1].role, 'server');
    assert.equal(spans[1].tid, 11);
    assert.equal(spans[1].cookie, 7n);
    assert.equal(c.socketCount, 0);
    assert.equal(c.counters.spans, 3);
    assert.equal(c.counters.orphanSpans, 0);
  });

  test('D1: the first exchange stayed in the kernel (unsampled): its accept is dropped, not hung under the next', () => {
    const s = new FakeSocket({ cookie: 9n, role: 'server', tid: 11 });
    const { spans, c } = run([
      s.accept(100, 200),
      // request 1 and its unsampled response never left the kernel
      s.recv(null, 40, 1, 2000, 2100, { afterDropped: true }),
      s.send(B, 300, 1, 3000, 3100),
      s.close(4000),
    ]);
    assert.deepEqual(spans.map((x) => [x.name, x.parent?.spanId]), [['tcp.recv', B.spanId], ['tcp.send', B.spanId]]);
    assert.equal(c.counters.acceptsOfDroppedExchanges, 1);
  });

  test('D1 at close: every exchange stayed in the kernel; the accept is no orphan, even with orphans on', () => {
    const s = new FakeSocket({ cookie: 10n, role: 'server', tid: 11 });
    const { spans, c } = run([s.accept(100, 200), s.close(4000, { afterDropped: true })], { orphans: true });
    assert.deepEqual(spans, []);
    assert.equal(c.counters.acceptsOfDroppedExchanges, 1);
    assert.equal(c.counters.orphanSpans, 0);
  });

  test('accept without a seen handshake: zero length, no queue time', () => {
    const s = new FakeSocket({ cookie: 8n, role: 'server' });
    const { spans } = run([s.accept(0, 1500), s.recv(null, 1, 1, 2000, 2000), s.send(A, 1, 1, 3000, 3000), s.close(4000)]);
    assert.equal(spans[0].name, 'tcp.accept');
    assert.equal(spans[0].startNs, 1500n);
    assert.equal(spans[0].acceptQueueNs, null);
  });

  test('keep-alive: reads carrying the previous request context go to the next response', () => {
    const s = new FakeSocket({ cookie: 9n, role: 'server' });
    const { spans } = run([
      s.accept(100, 200),
      s.recv(null, 100, 1, 1000, 1000),
      s.send(A, 1000, 1, 1100, 1100),
      s.recv(A, 101, 1, 2000, 2000), // the thread still holds A
      s.send(B, 1001, 1, 2100, 2100),
      s.recv(B, 102, 2, 3000, 3050),
      s.send(C, 1002, 1, 3100, 3100),
      s.close(4000),
    ]);
    assert.deepEqual(spans.map((x) => [x.name, x.parent?.spanId, x.bytes]), [
      ['tcp.accept', A.spanId, 0],
      ['tcp.recv', A.spanId, 100],
      ['tcp.send', A.spanId, 1000],
      ['tcp.recv', B.spanId, 101],
      ['tcp.send', B.spanId, 1001],
      ['tcp.recv', C.spanId, 102],
      ['tcp.send', C.spanId, 1002],
    ]);
    assert.equal(spans.filter((x) => x.name === 'tcp.accept').length, 1);
  });

  test('a request read in two parts, before and inside its span, is one tcp.recv', () => {
    const s = new FakeSocket({ cookie: 10n, role: 'server' });
    const { spans } = run([
      s.recv(null, 300, 1, 1000, 1000),
      s.recv(A, 700, 3, 1500, 1900),
      s.send(A, 50, 1, 2000, 2000),
      s.close(3000),
    ]);
    assert.deepEqual(spans.map(brief), [
      { name: 'tcp.recv', parent: A.spanId, start: 1000n, end: 1900n, bytes: 1000, calls: 4 },
      { name: 'tcp.send', parent: A.spanId, start: 2000n, end: 2000n, bytes: 50, calls: 1 },
    ]);
  });

  test('100-continue: the body read after the interim response is a second read of the same span', () => {
    const s = new FakeSocket({ cookie: 11n, role: 'server' });
    const { spans } = run([
      s.recv(null, 200, 1, 1000, 1000),
      s.send(A, 25, 1, 1100, 1100),
      s.recv(A, 5000, 4, 1200, 1500),
      s.send(A, 300, 1, 1600, 1600),
      s.close(2000),
    ]);
    assert.deepEqual(spans.map((x) => [x.name, x.parent?.spanId, x.bytes]), [
      ['tcp.recv', A.spanId, 200],
      ['tcp.send', A.spanId, 25],
      ['tcp.recv', A.spanId, 5000],
      ['tcp.send', A.spanId, 300],
    ]);
  });

  test('pipelining: requests read together go to the first response; each response has its send', () => {
    const s = new FakeSocket({ cookie: 12n, role: 'server' });
    const { spans } = run([
      s.recv(null, 400, 1, 1000, 1000), // two requests in one read
      s.send(A, 10, 1, 1100, 1100),
      s.send(B, 20, 1, 1200, 1200),
      s.close(2000),
    ]);
    assert.deepEqual(spans.map((x) => [x.name, x.parent?.spanId, x.bytes]), [
      ['tcp.recv', A.spanId, 400],
      ['tcp.send', A.spanId, 10],
      ['tcp.send', B.spanId, 20],
    ]);
  });

  test('a request never answered goes to the context it was read in, or is an orphan', () => {
    const s1 = new FakeSocket({ cookie: 13n, role: 'server' });
    const s2 = new FakeSocket({ cookie: 14n, role: 'server' });
    const { spans, c } = run([
      s1.recv(A, 10, 1, 1000, 1000),
      s1.close(2000),
      s2.recv(null, 10, 1, 1000, 1000),
      s2.close(2000),
    ]);
    assert.deepEqual(spans.map((x) => [x.name, x.cookie, x.parent?.spanId]), [['tcp.recv', 13n, A.spanId]]);
    assert.equal(c.counters.orphanSpans, 1);
  });

  test('one socket used by several threads keeps each record its own thread id', () => {
    const s = new FakeSocket({ cookie: 15n, role: 'server' });
    const { spans } = run([
      s.recv(null, 10, 1, 1000, 1000, { tid: 201 }),
      s.send(A, 20, 1, 1100, 1100, { tid: 202 }),
      s.recv(A, 11, 1, 1200, 1200, { tid: 203 }),
      s.send(B, 21, 1, 1300, 1300, { tid: 201 }),
      s.close(2000),
    ]);
    assert.deepEqual(spans.map((x) => [x.name, x.parent?.spanId, x.tid]), [
      ['tcp.recv', A.spanId, 201],
      ['tcp.send', A.spanId, 202],
      ['tcp.recv', B.spanId, 203],
      ['tcp.send', B.spanId, 201],
    ]);
  });

  test('interleaved sockets on one thread are correlated per cookie', () => {
    const s1 = new FakeSocket({ cookie: 21n, role: 'server', tid: 5 });
    const s2 = new FakeSocket({ cookie: 22n, role: 'server', tid: 5 });
    const { spans } = run([
      s1.accept(10, 20),
      s2.accept(30, 40),
      s1.recv(null, 1, 1, 100, 100),
      s2.recv(null, 2, 1, 110, 110),
      s2.send(B, 20, 1, 120, 120),
      s1.send(A, 10, 1, 130, 130),
      s1.close(200),
      s2.close(210),
    ]);
    const by = (cookie: bigint) => spans.filter((x) => x.cookie === cookie).map((x) => [x.name, x.parent?.spanId, x.bytes]);
    assert.deepEqual(by(21n), [['tcp.accept', A.spanId, 0], ['tcp.recv', A.spanId, 1], ['tcp.send', A.spanId, 10]]);
    assert.deepEqual(by(22n), [['tcp.accept', B.spanId, 0], ['tcp.recv', B.spanId, 2], ['tcp.send', B.spanId, 20]]);
  });
});

describe('client side', () => {
  test('connect, send, then recv starting at the end of the send (wait for the first byte)', () => {
    const s = new FakeSocket({ cookie: 30n, role: 'client' });
    const { spans } = run([
      s.connect(1000, 1300, X),
      s.send(X, 80, 1, 1400, 1410),
      s.recv(X, 900, 2, 5000, 5100),
      s.close(6000),
    ]);
    assert.deepEqual(spans.map(brief), [
      { name: 'tcp.connect', parent: X.spanId, start: 1000n, end: 1300n, bytes: 0, calls: 0 },
      { name: 'tcp.send', parent: X.spanId, start: 1400n, end: 1410n, bytes: 80, calls: 1 },
      { name: 'tcp.recv', parent: X.spanId, start: 1410n, end: 5100n, bytes: 900, calls: 2 },
    ]);
    assert.equal(spans[2].waitNs, 3590n);
    assert.equal(spans[0].role, 'client');
    assert.equal(spans[0].error, null);
  });

  test('a response read with no context belongs to the request sent before it', () => {
    const s = new FakeSocket({ cookie: 31n, role: 'client' });
    const { spans } = run([
      s.send(X, 80, 1, 1400, 1410),
      s.recv(null, 900, 1, 2000, 2000),
      s.send(A, 81, 1, 3000, 3000),
      s.recv(null, 901, 1, 3500, 3500),
      s.close(6000),
    ]);
    assert.deepEqual(spans.map((x) => [x.name, x.parent?.spanId, x.startNs]), [
      ['tcp.send', X.spanId, 1400n],
      ['tcp.recv', X.spanId, 1410n],
      ['tcp.send', A.spanId, 3000n],
      ['tcp.recv', A.spanId, 3000n],
    ]);
  });

  test('connect refused: error status with the reason; the reset and SYN retransmits are its events', () => {
    const s = new FakeSocket({ cookie: 32n, role: 'client' });
    const { spans } = run([
      s.retransmit(null, 1200, 2), // SYN retransmit: tx context is empty then
      s.reset(X, 1250, false, 2),
      s.connect(1000, 1260, X, 111),
      s.close(1300),
    ]);
    assert.equal(spans.length, 1);
    const k = spans[0];
    assert.equal(k.name, 'tcp.connect');
    assert.equal(k.parent?.spanId, X.spanId);
    assert.equal(k.error, 'connect failed: refused');
    assert.equal(k.errorType, 'refused');
    assert.deepEqual(k.events.map((e) => [e.name, e.tsNs, e.tcpState]), [
      ['tcp.retransmit', 1200n, 2],
      ['tcp.reset', 1250n, 2],
    ]);
    assert.equal(k.retransmits, 1);
  });

  test('connect timed out and reset map to their reasons', () => {
    const s1 = new FakeSocket({ cookie: 33n, role: 'client' });
    const s2 = new FakeSocket({ cookie: 34n, role: 'client' });
    const { spans } = run([s1.connect(1, 2, X, 110), s2.connect(1, 2, X, 104)]);
    assert.deepEqual(spans.map((x) => [x.errorType, x.error]), [
      ['timed_out', 'connect failed: timed_out'],
      ['reset', 'connect failed: reset'],
    ]);
  });
});

describe('retransmits and resets', () => {
  test('retransmits before and after the send record land on that send; after the window they stand alone', () => {
    const s = new FakeSocket({ cookie: 40n, role: 'server' });
    const { spans, c } = run([
      s.recv(null, 100, 1, 1000, 1000),
      s.retransmit(A, 1500), // response aggregate still open in the kernel
      s.send(A, 64_000, 10, 1100, 1400),
      s.retransmit(A, 1600), // held send collects it
      s.recv(null, 100, 1, 2000, 2000), // the socket wrote again: window closed
      s.retransmit(A, 2100), // too late for the span
      s.send(B, 10, 1, 2500, 2500),
      s.close(3000),
    ]);
    const sendA = spans.find((x) => x.name === 'tcp.send' && x.parent?.spanId === A.spanId)!;
    assert.deepEqual(sendA.events.map((e) => [e.name, e.tsNs]), [['tcp.retransmit', 1500n], ['tcp.retransmit', 1600n]]);
    assert.equal(sendA.retransmits, 2);
    const late = spans.filter((x) => x.name === 'tcp.retransmit');
    assert.equal(late.length, 1);
    assert.equal(late[0].parent?.spanId, A.spanId);
    assert.equal(late[0].startNs, 2100n);
    assert.equal(late[0].retransmits, 1);
    assert.equal(c.counters.lateEvents, 1);
    // Every retransmit the kernel reported is an event somewhere.
    assert.equal(spans.reduce((n, x) => n + x.retransmits, 0), 3);
    const sendB = spans.find((x) => x.name === 'tcp.send' && x.parent?.spanId === B.spanId)!;
    assert.equal(sendB.retransmits, 0);
  });

  test('client retransmits of the request go to its tcp.send, not to the recv', () => {
    const s = new FakeSocket({ cookie: 41n, role: 'client' });
    const { spans } = run([
      s.connect(10, 20, X),
      s.retransmit(X, 150),
      s.send(X, 100, 1, 100, 100),
      s.retransmit(X, 400),
      s.recv(X, 10, 1, 900, 900),
      s.close(1000),
    ]);
    assert.deepEqual(spans.map((x) => [x.name, x.retransmits]), [
      ['tcp.connect', 0],
      ['tcp.send', 2],
      ['tcp.recv', 0],
    ]);
  });

  test('a reset during the response marks that send as an error', () => {
    const s = new FakeSocket({ cookie: 42n, role: 'server' });
    const { spans } = run([
      s.recv(null, 100, 1, 1000, 1000),
      s.reset(A, 1300, false),
      s.send(A, 5000, 3, 1100, 1250),
      s.close(1400),
    ]);
    const send = spans.find((x) => x.name === 'tcp.send')!;
    assert.equal(send.error, 'connection reset by peer');
    assert.equal(send.errorType, 'reset');
    assert.deepEqual(send.events.map((e) => [e.name, e.tsNs, e.resetSent]), [['tcp.reset', 1300n, false]]);
    const recv = spans.find((x) => x.name === 'tcp.recv')!;
    assert.equal(recv.error, null);
  });

  test('a reset sent after the response lands on the held send', () => {
    const s = new FakeSocket({ cookie: 43n, role: 'server' });
    const { spans } = run([s.recv(null, 1, 1, 1, 1), s.send(A, 2, 1, 2, 2), s.reset(A, 5, true), s.close(6)]);
    const send = spans.find((x) => x.name === 'tcp.send')!;
    assert.equal(send.error, 'connection reset (sent)');
    assert.equal(send.events.length, 1);
  });

  test('pending events are bounded per socket and the excess counted', () => {
    const s = new FakeSocket({ cookie: 44n, role: 'server' });
    const recs = [s.recv(null, 1, 1, 1, 1)];
    for (let i = 0; i < 10; i++) recs.push(s.retransmit(A, 10 + i));
    recs.push(s.send(A, 1, 1, 5, 5), s.close(100));
    const { spans, c } = run(recs, { maxPendingEvents: 4 });
    assert.equal(spans.find((x) => x.name === 'tcp.send')!.retransmits, 4);
    assert.equal(c.counters.eventsDropped, 6);
  });
});

describe('sampling and orphans', () => {
  test('activity with no context is counted per pid, and not emitted unless orphans are asked for', () => {
    const s = new FakeSocket({ cookie: 50n, role: 'server' });
    const other = new FakeSocket({ cookie: 52n, role: 'server', pid: 200 });
    const recs = [s.accept(1, 2), s.recv(null, 10, 1, 5, 5), s.send(null, 20, 1, 6, 6), s.close(9), other.recv(null, 1, 1, 10, 10), other.close(11)];
    const off = run(recs);
    assert.equal(off.spans.length, 0);
    assert.equal(off.c.counters.orphanSpans, 4);
    assert.equal(off.c.counters.exchanges, 0);
    assert.deepEqual([...off.c.orphanSpansByPid], [[100, 3], [200, 1]]);
  });
  test('an unsampled parent gets no kernel spans, and they are counted', () => {
    const U = ctx(0xdead, false);
    const s = new FakeSocket({ cookie: 51n, role: 'server' });
    const { spans, c } = run([s.accept(1, 2), s.recv(null, 10, 1, 5, 5), s.send(U, 20, 1, 6, 6), s.close(9)]);
    assert.equal(spans.length, 0);
    assert.equal(c.counters.unsampledSpans, 3);
    assert.equal(c.counters.orphanSpans, 0);
  });
});

describe('orphan exchanges (orphans: true)', () => {
  /** Exchange ids 0xe1, 0xe2, … in the order the correlator draws them. */
  function exchangeIds() {
    let n = 0xe0;
    return () => ctx(++n);
  }
  const E1 = ctx(0xe1), E2 = ctx(0xe2);
  const tree = (spans: KernelSpan[]) =>
    spans.map((x) => [x.name, x.self?.spanId ?? null, x.parent?.spanId ?? null, x.localParent, x.startNs, x.endNs, x.bytes]);

  test('server keep-alive: accept, request and response are one exchange; the next request is the next one', () => {
    const s = new FakeSocket({ cookie: 60n, role: 'server', tid: 61 });
    const { spans, c } = run([
      s.accept(100, 150),
      s.recv(null, 79, 1, 200, 210),
      s.send(null, 1580, 2, 300, 320),
      s.recv(null, 81, 1, 400, 400), // the next request: the first response is done
      s.send(null, 1600, 1, 500, 530),
      s.close(600),
    ], { orphans: true, exchangeIds: exchangeIds() });
    assert.deepEqual(tree(spans), [
      ['tcp.accept', null, E1.spanId, true, 100n, 150n, 0],
      ['tcp.recv', null, E1.spanId, true, 200n, 210n, 79],
      ['tcp.send', null, E1.spanId, true, 300n, 320n, 1580],
      ['tcp.exchange', E1.spanId, null, false, 100n, 320n, 0],
      ['tcp.recv', null, E2.spanId, true, 400n, 400n, 81],
      ['tcp.send', null, E2.spanId, true, 500n, 530n, 1600],
      ['tcp.exchange', E2.spanId, null, false, 400n, 530n, 0],
    ]);
    // One trace per exchange: the root's own ids, which its spans name as parent.
    assert.deepEqual(spans.map((x) => (x.self ?? x.parent)!.traceId), [...Array(4).fill(E1.traceId), ...Array(3).fill(E2.traceId)]);
    assert.equal(spans[3].role, 'server');
    assert.equal(spans[3].tid, 61);
    assert.equal(spans[3].cookie, 60n);
    assert.deepEqual(spans[3].local, { address: '127.0.0.1', port: 8080 });
    assert.equal(c.counters.orphanSpans, 5);
    assert.equal(c.counters.exchanges, 2);
    assert.equal(c.counters.spans, 7);
  });

  test('client: connect and request, then the response, per exchange', () => {
    const s = new FakeSocket({ cookie: 61n, role: 'client' });
    const { spans, c } = run([
      s.connect(10, 20, null),
      s.send(null, 100, 1, 30, 30),
      s.recv(null, 900, 3, 40, 90),
      s.send(null, 101, 1, 100, 100),
      s.recv(null, 901, 1, 110, 120),
      s.close(130),
    ], { orphans: true, exchangeIds: exchangeIds() });
    assert.deepEqual(tree(spans), [
      ['tcp.connect', null, E1.spanId, true, 10n, 20n, 0],
      ['tcp.send', null, E1.spanId, true, 30n, 30n, 100],
      ['tcp.recv', null, E1.spanId, true, 30n, 90n, 900],
      ['tcp.exchange', E1.spanId, null, false, 10n, 90n, 0],
      ['tcp.send', null, E2.spanId, true, 100n, 100n, 101],
      ['tcp.recv', null, E2.spanId, true, 100n, 120n, 901],
      ['tcp.exchange', E2.spanId, null, false, 100n, 120n, 0],
    ]);
    assert.equal(spans[3].role, 'client');
    assert.equal(c.counters.exchanges, 2);
  });

  test('only the spans with no context join an exchange; a response continued while held stays in it', () => {
    const s = new FakeSocket({ cookie: 62n, role: 'server' });
    const { spans } = run([
      s.accept(1, 2),
      s.recv(A, 10, 1, 5, 5), // read in its own context (S4): A's
      s.send(null, 20, 1, 6, 6),
      s.send(null, 30, 1, 7, 8, { flushed: false }), // the rest of the response, after an idle flush
      s.close(9),
    ], { orphans: true, exchangeIds: exchangeIds() });
    assert.deepEqual(tree(spans), [
      ['tcp.accept', null, A.spanId, false, 1n, 2n, 0],
      ['tcp.recv', null, A.spanId, false, 5n, 5n, 10],
      ['tcp.send', null, E1.spanId, true, 6n, 6n, 20],
      ['tcp.send', null, E1.spanId, true, 7n, 8n, 30],
      ['tcp.exchange', E1.spanId, null, false, 6n, 8n, 0],
    ]);
  });

  test('a connection closed before its response: the exchange ends with what it has; nothing without orphans', () => {
    const s = new FakeSocket({ cookie: 63n, role: 'server' });
    const recs = [s.accept(1, 2), s.recv(null, 10, 1, 5, 5), s.close(9)];
    const { spans } = run(recs, { orphans: true, exchangeIds: exchangeIds() });
    assert.deepEqual(tree(spans), [
      ['tcp.accept', null, E1.spanId, true, 1n, 2n, 0],
      ['tcp.recv', null, E1.spanId, true, 5n, 5n, 10],
      ['tcp.exchange', E1.spanId, null, false, 1n, 5n, 0],
    ]);
    assert.deepEqual(run(recs).spans, []);
  });

  test('a response held past its linger is emitted with its root; a later send is an exchange of its own', () => {
    let now = 0n;
    const s = new FakeSocket({ cookie: 64n, role: 'server' });
    const spans: KernelSpan[] = [];
    const c = new SocketCorrelator({ emit: (x) => spans.push(x), orphans: true, exchangeIds: exchangeIds(), clock: () => now, lingerNs: 1000n });
    c.push(s.recv(null, 10, 1, 5, 5));
    c.push(s.send(null, 20, 1, 6, 6));
    assert.deepEqual(spans.map((x) => x.name), ['tcp.recv']);
    now = 2000n;
    c.tick();
    assert.deepEqual(tree(spans).slice(1), [
      ['tcp.send', null, E1.spanId, true, 6n, 6n, 20],
      ['tcp.exchange', E1.spanId, null, false, 5n, 6n, 0],
    ]);
    c.push(s.send(null, 30, 1, 2100, 2100));
    c.flush();
    assert.deepEqual(tree(spans).slice(3), [
      ['tcp.send', null, E2.spanId, true, 2100n, 2100n, 30],
      ['tcp.exchange', E2.spanId, null, false, 2100n, 2100n, 0],
    ]);
  });
});

describe('bounded memory and ends', () => {
  test('LRU eviction ends the evicted socket open spans, marked, and counts it', () => {
    const s1 = new FakeSocket({ cookie: 60n, role: 'server' });
    const s2 = new FakeSocket({ cookie: 61n, role: 'server' });
    const s3 = new FakeSocket({ cookie: 62n, role: 'server' });
    const { spans, c } = run(
      [s1.recv(A, 1, 1, 1, 1), s2.recv(B, 2, 1, 2, 2), s1.recv(A, 3, 1, 3, 3), s3.recv(C, 4, 1, 4, 4)],
      { maxSockets: 2 },
    );
    // s2 is the least recently used (s1 was touched again).
    assert.deepEqual(spans.map((x) => [x.name, x.cookie, x.parent?.spanId, x.bytes, x.incomplete]), [
      ['tcp.recv', 61n, B.spanId, 2, 'evicted'],
    ]);
    assert.equal(c.counters.evictedLru, 1);
    assert.equal(c.counters.incompleteSpans, 1);
    assert.equal(c.socketCount, 2);
  });

  test('recency is kept to the idle-check period: a socket moves back once per period, not on every record', () => {
    let now = 10n;
    const s1 = new FakeSocket({ cookie: 70n, role: 'server' });
    const s2 = new FakeSocket({ cookie: 71n, role: 'server' });
    const s3 = new FakeSocket({ cookie: 72n, role: 'server' });
    const s4 = new FakeSocket({ cookie: 73n, role: 'server' });
    const spans: KernelSpan[] = [];
    const c = new SocketCorrelator({ emit: (x) => spans.push(x), clock: () => now, maxSockets: 2 });
    c.push(s1.recv(A, 1, 1, 1, 1)); // the first record runs an idle check: a new period begins after it
    c.push(s2.recv(B, 2, 1, 2, 2));
    c.push(s1.recv(A, 3, 1, 3, 3)); // s1's first touch in this period: moved behind s2
    c.push(s3.recv(C, 4, 1, 4, 4)); // full: s2 goes
    assert.deepEqual(spans.map((x) => x.cookie), [71n]);
    c.push(s1.recv(A, 5, 1, 5, 5)); // touched again in the same period: stays in front of s3
    c.push(s4.recv(X, 6, 1, 6, 6)); // full: s1 goes, although s3 was touched less recently
    assert.deepEqual(spans.map((x) => x.cookie), [71n, 70n]);
    now += 1_000_000_000n;
    c.tick(); // the next idle check: a new period
    c.push(s3.recv(C, 7, 1, 7, 7)); // s3 moves behind s4
    c.push(s1.recv(A, 8, 1, 8, 8)); // full: s4 goes
    assert.deepEqual(spans.map((x) => x.cookie), [71n, 70n, 73n]);
    assert.equal(c.counters.evictedLru, 3);
  });

  test('idle sockets are evicted on tick', () => {
    let now = 0n;
    const s = new FakeSocket({ cookie: 63n, role: 'server' });
    const spans: KernelSpan[] = [];
    const c = new SocketCorrelator({ emit: (x) => spans.push(x), clock: () => now, idleTimeoutNs: 1000n });
    c.push(s.recv(A, 1, 1, 1, 1));
    now = 999n;
    c.tick();
    assert.equal(spans.length, 0);
    now = 1000n;
    c.tick();
    assert.deepEqual(spans.map((x) => [x.name, x.incomplete]), [['tcp.recv', 'idle']]);
    assert.equal(c.counters.evictedIdle, 1);
    assert.equal(c.socketCount, 0);
  });

  test('a held send is emitted when the linger time passes', () => {
    let now = 0n;
    const s = new FakeSocket({ cookie: 64n, role: 'server' });
    const spans: KernelSpan[] = [];
    const c = new SocketCorrelator({ emit: (x) => spans.push(x), clock: () => now, lingerNs: 500n });
    c.push(s.recv(null, 1, 1, 1, 1));
    c.push(s.send(A, 2, 1, 2, 2));
    assert.deepEqual(spans.map((x) => x.name), ['tcp.recv']);
    now = 499n;
    c.tick();
    assert.equal(spans.length, 1);
    now = 500n;
    c.tick();
    assert.deepEqual(spans.map((x) => x.name), ['tcp.recv', 'tcp.send']);
    assert.equal(spans[1].incomplete, null);
    c.push(s.retransmit(A, 600)); // after the window: stands alone at close
    c.push(s.close(700));
    assert.deepEqual(spans.map((x) => x.name), ['tcp.recv', 'tcp.send', 'tcp.retransmit']);
  });

  test('a send whose record says its bytes were acknowledged is emitted at once; a later retransmit in its context waits for the next send', () => {
    let now = 0n;
    const s = new FakeSocket({ cookie: 65n, role: 'server' });
    const spans: KernelSpan[] = [];
    const c = new SocketCorrelator({ emit: (x) => spans.push(x), clock: () => now, lingerNs: 500n });
    c.push(s.recv(null, 1, 1, 1, 1));
    c.push({ ...s.send(A, 2, 1, 2, 2), sentAcked: true });
    assert.deepEqual(spans.map((x) => [x.name, x.bytes, x.incomplete]), [['tcp.recv', 1, null], ['tcp.send', 2, null]]);
    // Acknowledged data is never sent again: a retransmit in A is of a later send's bytes.
    c.push(s.retransmit(A, 3));
    c.push(s.send(A, 7, 1, 4, 4));
    now = 500n;
    c.tick();
    assert.deepEqual(spans.slice(2).map((x) => [x.name, x.bytes, x.retransmits]), [['tcp.send', 7, 1]]);
    assert.equal(spans[1].retransmits, 0);
    assert.equal(c.counters.lateEvents, 0);
  });

  test('a hold ends by the time of the records pushed, not the clock: a retransmit stamped within it, read late behind another socket\'s record, lands on the held send', () => {
    let now = 10n;
    const a = new FakeSocket({ cookie: 66n, role: 'server' });
    const b = new FakeSocket({ cookie: 67n, role: 'server' });
    const spans: KernelSpan[] = [];
    const c = new SocketCorrelator({ emit: (x) => spans.push(x), clock: () => now, lingerNs: 500n });
    c.push(a.recv(null, 1, 1, 1, 1));
    c.push(a.send(A, 2, 1, 2, 2)); // held until 510
    now = 700n; // the ring was read late: the clock is past the hold's end
    c.push(b.recv(B, 5, 1, 400, 400)); // another socket's record, stamped before it
    c.push(a.retransmit(A, 450)); // stamped within the hold
    assert.deepEqual(spans.map((x) => x.name), ['tcp.recv'], 'the send is still held');
    c.tick(); // the clock's time: the hold ends
    assert.deepEqual(spans.map((x) => [x.name, x.retransmits]), [['tcp.recv', 0], ['tcp.send', 1]]);
    assert.equal(c.counters.lateEvents, 0);
    // A record stamped past the end ends a hold at once.
    c.push(a.recv(null, 1, 1, 710, 710));
    c.push(a.send(A, 3, 1, 720, 720)); // held until 1200
    assert.deepEqual(spans.slice(2).map((x) => x.name), ['tcp.recv']);
    now = 1400n;
    c.push(b.recv(B, 6, 1, 1300, 1300));
    assert.deepEqual(spans.slice(2).map((x) => x.name), ['tcp.recv', 'tcp.send']);
  });

  test('target exit ends the open spans of its sockets, marked; other processes keep theirs', () => {
    const mine = new FakeSocket({ cookie: 70n, role: 'server', pid: 500 });
    const other = new FakeSocket({ cookie: 71n, role: 'server', pid: 600 });
    const { spans, c } = run([
      mine.accept(1, 2),
      mine.recv(A, 10, 1, 5, 5),
      other.recv(B, 11, 1, 6, 6),
    ]);
    c.processExited(500);
    assert.deepEqual(spans.map((x) => [x.name, x.pid, x.parent?.spanId, x.incomplete]), [
      ['tcp.accept', 500, A.spanId, null],
      ['tcp.recv', 500, A.spanId, 'process_exit'],
    ]);
    assert.equal(c.socketCount, 1);
    assert.equal(c.counters.processExits, 1);
    c.flush();
    assert.deepEqual(spans.slice(2).map((x) => [x.name, x.pid, x.incomplete]), [['tcp.recv', 600, 'shutdown']]);
  });

  test('aggregates flushed by the agent are marked incomplete', () => {
    const s = new FakeSocket({ cookie: 72n, role: 'client' });
    const { spans } = run([s.send(X, 5, 1, 1, 2, { flushed: true })]);
    assert.deepEqual(spans.map((x) => [x.name, x.incomplete]), [['tcp.send', 'flushed']]);
  });

  test('a socket whose role the kernel did not see: the lower port is the server', () => {
    const srv = new FakeSocket({ cookie: 80n, role: 'server', localPort: 8080, peerPort: 50000 });
    const cli = new FakeSocket({ cookie: 81n, role: 'client', localPort: 50001, peerPort: 443 });
    const { spans } = run([
      { ...srv.recv(null, 5, 1, 1, 1), role: null },
      { ...srv.send(A, 6, 1, 2, 2), role: null },
      srv.close(3),
      { ...cli.send(X, 7, 1, 3, 3), role: null },
      { ...cli.recv(null, 8, 1, 9, 9), role: null },
    ]);
    assert.deepEqual(spans.map((x) => [x.name, x.role, x.parent?.spanId]), [
      ['tcp.recv', 'server', A.spanId],
      ['tcp.send', 'server', A.spanId],
      ['tcp.send', 'client', X.spanId],
      ['tcp.recv', 'client', X.spanId],
    ]);
  });

  test('counters count records by type', () => {
    const s = new FakeSocket({ cookie: 90n, role: 'server' });
    const { c } = run([s.accept(1, 2), s.recv(null, 1, 1, 3, 3), s.send(A, 1, 1, 4, 4), s.retransmit(A, 5), s.close(6), s.close(7)]);
    assert.deepEqual(c.counters.recordsByType, { accept: 1, connect: 0, send: 1, recv: 1, retransmit: 1, reset: 0, close: 2 });
    assert.equal(c.counters.records, 6);
    assert.equal(c.counters.closeUnknown, 1);
  });
});
