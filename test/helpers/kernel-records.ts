/**
 * Hand-built KernelRecords for unit tests and benchmarks: a record with sane
 * defaults, trace contexts from small numbers, and a socket that stamps its own
 * cookie, endpoints, pid and role on every record.
 */
import type { KernelRecord, RecordType, TraceContext } from '../../src/records/kernel-record.ts';
import { newKernelSpan, type KernelSpan } from '../../src/spans/kernel-span.ts';

/**
 * A context whose ids are derived from n: trace 0…0n, span 0…0n (hex). The ids
 * are flat strings made from bytes, as the decoder makes them (hex() in
 * src/records/decoder.ts): padStart's strings are ropes, which the encoder reads
 * much more slowly, so benchmarks on them would measure what the agent never sees.
 */
export function ctx(n: number, sampled = true): TraceContext {
  return {
    traceId: hex(n.toString(16).padStart(32, '0')),
    spanId: hex((0x1000 + n).toString(16).padStart(16, '0')),
    traceFlags: sampled ? 1 : 0,
  };
}

const hex = (s: string): string => Buffer.from(s, 'hex').toString('hex');

export function record(type: RecordType, fields: Partial<KernelRecord> = {}): KernelRecord {
  return {
    type,
    tsNs: 0n,
    startNs: 0n,
    cookie: 1n,
    pid: 100,
    tid: 100,
    family: 4,
    local: { address: '127.0.0.1', port: 8080 },
    peer: { address: '127.0.0.1', port: 40000 },
    role: null,
    context: null,
    bytes: 0,
    calls: 0,
    flushed: false,
    afterDropped: false,
    sentAcked: false,
    fallback: false,
    errno: 0,
    resetSent: false,
    tcpState: 0,
    bytesSent: 0,
    bytesReceived: 0,
    retransmits: 0,
    srttUs: 0,
    ...fields,
  };
}

export interface SocketOptions {
  cookie: bigint;
  role: 'server' | 'client';
  pid?: number;
  tid?: number;
  localPort?: number;
  peerPort?: number;
  family?: 4 | 6;
}

/** Records of one socket; times are given in ns (number or bigint). */
export class FakeSocket {
  readonly o: Required<SocketOptions>;

  constructor(o: SocketOptions) {
    this.o = {
      pid: 100,
      tid: 100,
      localPort: o.role === 'server' ? 8080 : 40000 + Number(o.cookie % 20000n),
      peerPort: o.role === 'server' ? 40000 + Number(o.cookie % 20000n) : 8080,
      family: 4,
      ...o,
    };
  }

  #base(type: RecordType, f: Partial<KernelRecord>): KernelRecord {
    const v6 = this.o.family === 6;
    return record(type, {
      cookie: this.o.cookie,
      pid: this.o.pid,
      tid: this.o.tid,
      family: this.o.family,
      role: this.o.role,
      local: { address: v6 ? '::1' : '127.0.0.1', port: this.o.localPort },
      peer: { address: v6 ? '::1' : '127.0.0.1', port: this.o.peerPort },
      ...f,
    });
  }

  accept(handshakeNs: number | bigint, atNs: number | bigint, context: TraceContext | null = null): KernelRecord {
    return this.#base('accept', { startNs: BigInt(handshakeNs), tsNs: BigInt(atNs), context });
  }

  connect(synNs: number | bigint, atNs: number | bigint, context: TraceContext | null, errno = 0): KernelRecord {
    return this.#base('connect', { startNs: BigInt(synNs), tsNs: BigInt(atNs), context, errno, tcpState: errno ? 7 : 1 });
  }

  send(context: TraceContext | null, bytes: number, calls: number, startNs: number | bigint, endNs: number | bigint, f: Partial<KernelRecord> = {}): KernelRecord {
    return this.#base('send', { context, bytes, calls, startNs: BigInt(startNs), tsNs: BigInt(endNs), ...f });
  }

  recv(context: TraceContext | null, bytes: number, calls: number, startNs: number | bigint, endNs: number | bigint, f: Partial<KernelRecord> = {}): KernelRecord {
    return this.#base('recv', { context, bytes, calls, startNs: BigInt(startNs), tsNs: BigInt(endNs), ...f });
  }

  retransmit(context: TraceContext | null, atNs: number | bigint, tcpState = 1): KernelRecord {
    return this.#base('retransmit', { context, tsNs: BigInt(atNs), tcpState });
  }

  reset(context: TraceContext | null, atNs: number | bigint, resetSent = false, tcpState = 1): KernelRecord {
    return this.#base('reset', { context, tsNs: BigInt(atNs), resetSent, tcpState });
  }

  close(atNs: number | bigint, f: Partial<KernelRecord> = {}): KernelRecord {
    return this.#base('close', { tsNs: BigInt(atNs), srttUs: 42, ...f });
  }
}

/** A correlator output span with defaults (a server tcp.send under ctx(0xa)). */
export function kernelSpan(f: Partial<KernelSpan> = {}): KernelSpan {
  const span = newKernelSpan({
    name: 'tcp.send',
    parent: ctx(0xa),
    startNs: 5_000_000_123n,
    endNs: 5_000_900_456n,
    cookie: 18446744073709551615n,
    pid: 4242,
    tid: 4243,
    family: 4,
    local: { address: '10.0.0.1', port: 8080 },
    peer: { address: '10.0.0.2', port: 51234 },
    role: 'server',
    srttUs: null,
  });
  return { ...span, bytes: 2048, calls: 2, ...f };
}

/** The attributes SpanBuilder gives kernelSpan()'s span as it is (a server send of 2048 B in 2 calls). */
export const KERNEL_SPAN_ATTRIBUTES = {
  'network.transport': 'tcp',
  'network.type': 'ipv4',
  'network.peer.address': '10.0.0.2',
  'network.peer.port': 51234,
  'network.local.address': '10.0.0.1',
  'network.local.port': 8080,
  'client.address': '10.0.0.2',
  'client.port': 51234,
  'server.address': '10.0.0.1',
  'server.port': 8080,
  'thread.id': 4243,
  'process.pid': 4242,
  'kspan.socket.cookie': '18446744073709551615',
  'kspan.role': 'server',
  'kspan.bytes': 2048,
  'kspan.syscalls': 2,
  'kspan.retransmits': 0,
} as const;
