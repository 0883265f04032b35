/**
 * Ring-buffer payload → KernelRecord: the generated struct decoder, then names,
 * addresses and ids in the form the rest of kspan uses. Pure.
 */
import {
  decodeKspanEvent,
  KspanEventFlag as F,
  KspanEventType as T,
  type KspanAgg,
  type KspanEvent,
  type KspanTraceCtx,
} from './generated/records.ts';
import type { Endpoint, KernelRecord, RecordType, TraceContext } from './records.ts';

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

export class RecordDecodeError extends Error {}

/**
 * Decodes one ring-buffer record into one or two KernelRecords (send/recv records
 * carry the aggregate that closed before them, `prev`), delivered in time order.
 */
export function decodeRecords(view: DataView, offset: number, emit: (r: KernelRecord) => void): void {
  const e = decodeKspanEvent(view, offset);
  if (e.prev.dir) emit(fromEvent(withAggregate(e, e.prev)));
  emit(fromEvent(e));
}

/** The record `e` would be if it carried aggregate `a` (same socket and owner). */
export function withAggregate(e: KspanEvent, a: KspanAgg): KspanEvent {
  return {
    ...e,
    type: a.dir,
    tid: a.tid,
    ts_ns: a.last_ns,
    start_ns: a.first_ns,
    bytes: a.bytes,
    calls: a.calls,
    flags: (e.flags & (F.KSPAN_F_SERVER | F.KSPAN_F_CLIENT | F.KSPAN_F_FLUSHED)) | a.flags,
    ctx: a.ctx,
  };
}

export function fromEvent(e: KspanEvent): KernelRecord {
  const type = TYPES[e.type];
  if (!type) throw new RecordDecodeError(`unknown record type ${e.type}`);
  const v6 = e.family === AF_INET6;
  return {
    type,
    tsNs: e.ts_ns,
    startNs: e.start_ns,
    cookie: e.cookie,
    pid: e.pid,
    tid: e.tid,
    family: v6 ? 6 : 4,
    local: endpoint(e.laddr, e.lport, v6),
    peer: endpoint(e.raddr, e.rport, v6),
    role: e.flags & F.KSPAN_F_SERVER ? 'server' : e.flags & F.KSPAN_F_CLIENT ? 'client' : null,
    context: traceContext(e.ctx),
    bytes: Number(e.bytes),
    calls: e.calls,
    flushed: (e.flags & F.KSPAN_F_FLUSHED) !== 0,
    fallback: (e.flags & F.KSPAN_F_FALLBACK_IO) !== 0,
    errno: e.error,
    resetSent: (e.flags & F.KSPAN_F_RESET_SENT) !== 0,
    tcpState: e.tcp_state,
    bytesSent: Number(e.bytes_sent),
    bytesReceived: Number(e.bytes_received),
    retransmits: e.retransmits,
    srttUs: e.srtt_us,
  };
}

export function traceContext(ctx: KspanTraceCtx): TraceContext | null {
  if (ctx.valid !== 1) return null;
  return { traceId: hex(ctx.trace_id), spanId: hex(ctx.span_id), traceFlags: ctx.trace_flags };
}

const HEX: string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

export function hex(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < b.length; i++) s += HEX[b[i]];
  return s;
}

export function endpoint(addr: Uint8Array, port: number, v6: boolean): Endpoint {
  return { address: v6 ? ipv6(addr) : `${addr[0]}.${addr[1]}.${addr[2]}.${addr[3]}`, port };
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
