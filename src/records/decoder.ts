/**
 * Ring-buffer payload → KernelRecord: the generated struct decoder, then names,
 * addresses and ids in the form the rest of kspan uses. Pure.
 */
import {
  KspanAggOffset,
  KspanAggView,
  KspanEventFlag as F,
  KspanEventOffset,
  KspanEventView,
  KspanEventType as T,
  KspanTraceCtxOffset,
  KspanTraceCtxView,
  KSPAN_EVENT_SIZE,
  type KspanAgg,
  type KspanEvent,
  type KspanTraceCtx,
} from './abi.generated.ts';
import type { Endpoint, KernelRecord, RecordType, TraceContext } from './kernel-record.ts';
import { RecordDecodeError } from '../core/errors.ts';

const TYPES: Record<number, RecordType> = {
  [T.KSPAN_EV_ACCEPT]: 'accept',
  [T.KSPAN_EV_CONNECT]: 'connect',
  [T.KSPAN_EV_SEND]: 'send',
  [T.KSPAN_EV_RECV]: 'recv',
  [T.KSPAN_EV_RETRANSMIT]: 'retransmit',
  [T.KSPAN_EV_RESET]: 'reset',
  [T.KSPAN_EV_CLOSE]: 'close',
};
const AF_INET6 = 10;

const event = new KspanEventView(new DataView(new ArrayBuffer(0)), 0);

/**
 * Decodes one ring-buffer record into one or two KernelRecords (send/recv records
 * carry the aggregate that closed before them, `prev`), delivered in time order.
 * Reads the ring memory in place (a view), copying only what the record keeps.
 */
export function decodeRecords(view: DataView, offset: number, emit: (r: KernelRecord) => void): void {
  if (!(offset >= 0 && view.byteLength - offset >= KSPAN_EVENT_SIZE)) {
    throw new RecordDecodeError(`record at ${offset} of ${view.byteLength} bytes is shorter than a kspan_event (${KSPAN_EVENT_SIZE})`);
  }
  const e = event.at(view, offset);
  const prev = e.prev;
  if (prev.dir) emit(fromEvent(e, prev));
  emit(fromEvent(e));
}

/**
 * A KernelRecord from a decoded event (or a view of one). With `agg`, the record
 * is that send/recv aggregate on the event's socket instead of the event itself.
 */
export function fromEvent(e: KspanEvent, agg?: KspanAgg): KernelRecord {
  const typeNum = agg ? agg.dir : e.type;
  const type = TYPES[typeNum];
  if (!type) throw new RecordDecodeError(`unknown record type ${typeNum}`);
  const v6 = e.family === AF_INET6;
  const flags = agg ? (e.flags & (F.KSPAN_F_SERVER | F.KSPAN_F_CLIENT | F.KSPAN_F_FLUSHED | F.KSPAN_F_SENT_ACKED)) | agg.flags : e.flags;
  // Views (the ring's hot path) give their counts, addresses and ids without an object each.
  const ev = e instanceof KspanEventView ? e : null;
  const cookie = e.cookie;
  const ends = endpointsOf(e, ev, cookie, v6);
  if (typeNum === T.KSPAN_EV_CLOSE) socketEndpoints.delete(cookie);
  return {
    type,
    tsNs: agg ? agg.last_ns : e.ts_ns,
    startNs: agg ? agg.first_ns : e.start_ns,
    cookie,
    pid: e.pid,
    tid: agg ? agg.tid : e.tid,
    family: v6 ? 6 : 4,
    local: ends.local,
    peer: ends.peer,
    role: flags & F.KSPAN_F_SERVER ? 'server' : flags & F.KSPAN_F_CLIENT ? 'client' : null,
    context: traceContext(agg ? agg.ctx : e.ctx),
    bytes: agg ? (agg instanceof KspanAggView ? u64(agg.v, agg.o + AG.bytes) : Number(agg.bytes)) : ev ? u64(ev.v, ev.o + EV.bytes) : Number(e.bytes),
    calls: agg ? agg.calls : e.calls,
    flushed: (flags & F.KSPAN_F_FLUSHED) !== 0,
    afterDropped: (flags & F.KSPAN_F_AFTER_DROP) !== 0,
    fallback: (flags & F.KSPAN_F_FALLBACK_IO) !== 0,
    sentAcked: (type === 'send' || type === 'recv') && (flags & F.KSPAN_F_SENT_ACKED) !== 0,
    errno: agg ? 0 : e.error,
    resetSent: (flags & F.KSPAN_F_RESET_SENT) !== 0,
    tcpState: agg ? 0 : e.tcp_state,
    bytesSent: agg ? 0 : ev ? u64(ev.v, ev.o + EV.bytes_sent) : Number(e.bytes_sent),
    bytesReceived: agg ? 0 : ev ? u64(ev.v, ev.o + EV.bytes_received) : Number(e.bytes_received),
    retransmits: agg ? 0 : e.retransmits,
    srttUs: agg ? 0 : e.srtt_us,
  };
}

const EV = KspanEventOffset;
const AG = KspanAggOffset;

/** A u64 count read in place as a number: exact below 2^53, which a byte or call count does not reach. */
function u64(v: DataView, at: number): number {
  return v.getUint32(at, true) + v.getUint32(at + 4, true) * 0x1_0000_0000;
}

export function traceContext(ctx: KspanTraceCtx): TraceContext | null {
  if (ctx.valid !== 1) return null;
  const ids = ctx instanceof KspanTraceCtxView ? idStringsAt(ctx.v, ctx.o) : idStrings(ctx.trace_id, ctx.span_id);
  const c: TraceContext = { traceId: ids.traceId, spanId: ids.spanId, traceFlags: ctx.trace_flags };
  const size = ctx.attrs_size;
  if (size) {
    // A copy: the view aliases ring-buffer memory that is about to be reused.
    const attrs = ctx.attrs;
    c.attributes = attrs.slice(0, Math.min(size, attrs.length));
    if (size > attrs.length) c.attributesTruncated = true;
  }
  return c;
}

/**
 * The last ids decoded, as bytes and as hex: the records of one request carry the
 * same span (a send, its aggregate's successor, the request's recv), so the
 * strings are made once per span, not once per record.
 */
const lastIds = { bytes: Buffer.alloc(24), traceId: '', spanId: '' };
/** lastIds.bytes read as words, for idStringsAt. */
const lastWords = new DataView(lastIds.bytes.buffer, lastIds.bytes.byteOffset, 24);

/** The ids of a context in place (a view): compared as six words, made into strings only when they changed. */
function idStringsAt(v: DataView, o: number): { traceId: string; spanId: string } {
  const w = lastWords;
  const t = o + KspanTraceCtxOffset.trace_id;
  const sp = o + KspanTraceCtxOffset.span_id;
  const w0 = v.getInt32(t, true), w1 = v.getInt32(t + 4, true), w2 = v.getInt32(t + 8, true), w3 = v.getInt32(t + 12, true);
  const w4 = v.getInt32(sp, true), w5 = v.getInt32(sp + 4, true);
  if (
    lastIds.traceId !== '' &&
    w.getInt32(0, true) === w0 && w.getInt32(4, true) === w1 && w.getInt32(8, true) === w2 && w.getInt32(12, true) === w3 &&
    w.getInt32(16, true) === w4 && w.getInt32(20, true) === w5
  ) {
    return lastIds;
  }
  w.setInt32(0, w0, true);
  w.setInt32(4, w1, true);
  w.setInt32(8, w2, true);
  w.setInt32(12, w3, true);
  w.setInt32(16, w4, true);
  w.setInt32(20, w5, true);
  return lastIdsMade();
}

function idStrings(traceId: Uint8Array, spanId: Uint8Array): { traceId: string; spanId: string } {
  const last = lastIds.bytes;
  let same = lastIds.traceId !== '';
  for (let i = 0; same && i < 16; i++) same = last[i] === traceId[i];
  for (let i = 0; same && i < 8; i++) same = last[16 + i] === spanId[i];
  if (same) return lastIds;
  last.set(traceId.subarray(0, 16), 0);
  last.set(spanId.subarray(0, 8), 16);
  return lastIdsMade();
}

/** New strings for the ids just put in lastIds.bytes (hex from one kept Buffer: no Buffer made per span). */
function lastIdsMade(): { traceId: string; spanId: string } {
  lastIds.traceId = lastIds.bytes.toString('hex', 0, 16);
  lastIds.spanId = lastIds.bytes.toString('hex', 16, 24);
  return lastIds;
}

/** Lowercase hex of `b`: one flat string (string concatenation made one intermediate string per byte). */
export function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
}

export function endpoint(addr: Uint8Array, port: number, v6: boolean): Endpoint {
  return { address: v6 ? ipv6(addr) : ipv4(addr), port };
}

/**
 * IPv4 text by address: the sockets of one peer, and those of one local
 * address, share one string (at 10 000 connections from one client, two strings
 * fewer a socket). Bounded: emptied when full.
 */
const ipv4Text = new Map<number, string>();
const IPV4_TEXT_MAX = 4096;

function ipv4(a: Uint8Array): string {
  const key = a[0] * 0x1000000 + ((a[1] << 16) | (a[2] << 8) | a[3]);
  let text = ipv4Text.get(key);
  if (text === undefined) {
    if (ipv4Text.size >= IPV4_TEXT_MAX) ipv4Text.clear();
    text = `${a[0]}.${a[1]}.${a[2]}.${a[3]}`;
    ipv4Text.set(key, text);
  }
  return text;
}

interface SocketEndpoints {
  localKey: number;
  peerKey: number;
  local: Endpoint;
  peer: Endpoint;
}

/**
 * The endpoints of a socket's last record, by cookie: its records name the same
 * two again and again, so their strings are made once per socket. IPv4 only (a
 * v6 address does not fit a number key). Per socket, not per address: the
 * encoder caches a socket's attribute bytes by its peer object. Bounded: emptied
 * when full. An endpoint is never changed once made.
 */
const socketEndpoints = new Map<bigint, SocketEndpoints>();
const SOCKET_ENDPOINTS_MAX = 16_384;

const v4Key = (a: Uint8Array, port: number) => (a[0] * 0x1000000 + ((a[1] << 16) | (a[2] << 8) | a[3])) * 0x10000 + port;

/** `ev`: `e` when it is a view (its addresses read in place), else null. */
function endpointsOf(e: KspanEvent, ev: KspanEventView | null, cookie: bigint, v6: boolean): SocketEndpoints {
  if (v6) {
    const local = endpoint(e.laddr, e.lport, true);
    const peer = endpoint(e.raddr, e.rport, true);
    return { localKey: -1, peerKey: -1, local, peer };
  }
  const lport = e.lport;
  const rport = e.rport;
  // A view's addresses are read in place (network order, as v4Key reads the bytes): no array made per record.
  const localKey = ev ? ev.v.getUint32(ev.o + EV.laddr) * 0x10000 + lport : v4Key(e.laddr, lport);
  const peerKey = ev ? ev.v.getUint32(ev.o + EV.raddr) * 0x10000 + rport : v4Key(e.raddr, rport);
  let s = socketEndpoints.get(cookie);
  if (s && s.localKey === localKey && s.peerKey === peerKey) return s;
  if (!s && socketEndpoints.size >= SOCKET_ENDPOINTS_MAX) socketEndpoints.clear();
  s = { localKey, peerKey, local: endpoint(e.laddr, lport, false), peer: endpoint(e.raddr, rport, false) };
  socketEndpoints.set(cookie, s);
  return s;
}

/** RFC 5952 text, with IPv4-mapped addresses as ::ffff:a.b.c.d. */
export function ipv6(a: Uint8Array): string {
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push((a[i] << 8) | a[i + 1]);
  if (words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff) {
    return `::ffff:${a[12]}.${a[13]}.${a[14]}.${a[15]}`;
  }
  let bestStart = -1, bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const h = words.map((w) => w.toString(16));
  if (bestStart < 0) return h.join(':');
  return `${h.slice(0, bestStart).join(':')}::${h.slice(bestStart + bestLen).join(':')}`;
}
