/**
 * Kernel records as the rest of the agent sees them: decoded from the ring buffer
 * (src/records/decoder.ts), printed by `kspan events`, written by `kspan record`,
 * and consumed by the correlator (src/spans/). Pure types and helpers: no kernel.
 *
 * Timestamps stay on the kernel's CLOCK_MONOTONIC (`*Ns` as bigint, exact); the
 * conversion to wall-clock time is one offset (src/kernel/clock.ts) applied at the edge.
 */
import { constants } from 'node:os';

export type RecordType = 'accept' | 'connect' | 'send' | 'recv' | 'retransmit' | 'reset' | 'close';

export interface TraceContext {
  /** 32 lowercase hex characters. */
  traceId: string;
  /** 16 lowercase hex characters. */
  spanId: string;
  traceFlags: number;
  /**
   * The record's attributes ({key u8, len u8, val[len]}…, keys indexing the
   * process context's threadlocal.attribute_key_map) as far as the kernel copied
   * them (KSPAN_CTX_ATTRS_MAX bytes; the last entry may be cut). Absent when the
   * record had none.
   */
  attributes?: Uint8Array;
  /** The record held more attribute bytes than the kernel copies. */
  attributesTruncated?: boolean;
}

/** Never changed once made: sockets, spans and the encoder's cache share them. */
export interface Endpoint {
  /** IPv4 dotted quad or IPv6 text form (RFC 5952). */
  readonly address: string;
  readonly port: number;
}

/** The socket, the thread and the connection a record or a span is about. */
export interface SocketIdentity {
  /** The kernel's socket cookie: unique per socket while the system runs. */
  cookie: bigint;
  pid: number;
  tid: number;
  family: 4 | 6;
  local: Endpoint;
  peer: Endpoint;
}

export interface KernelRecord extends SocketIdentity {
  type: RecordType;
  /** CLOCK_MONOTONIC nanoseconds: when it happened (aggregates: the last call). */
  tsNs: bigint;
  /**
   * CLOCK_MONOTONIC nanoseconds of the start: send/recv first call, accept handshake
   * completion (0n when the kernel saw no handshake, e.g. before kspan started),
   * connect SYN sent; 0n for the other types.
   */
  startNs: bigint;
  /** Socket role when known: accepted by the target, or connected by it. */
  role: 'server' | 'client' | null;
  /** The span the thread had active, or null. */
  context: TraceContext | null;
  /** send/recv: bytes and syscalls in the aggregate. */
  bytes: number;
  calls: number;
  /** send/recv: closed by the agent at shutdown rather than by the kernel. */
  flushed: boolean;
  /** send/recv: an aggregate of this socket before this one stayed in the kernel
   * (unsampled, or an orphan --orphans-ratio left out). */
  afterDropped: boolean;
  /** send/recv: produced by the syscall-tracepoint fallback. */
  fallback: boolean;
  /** send/recv: as the record was made (by a send, a recv or the idle flush), every byte
   * the socket's owner had written before was acknowledged, so no retransmit of its sent
   * data can follow. */
  sentAcked: boolean;
  /** connect: errno of the failure (0 = connected); retransmit: the kernel's err. */
  errno: number;
  /** reset: true when this side sent the RST. */
  resetSent: boolean;
  /** retransmit/reset/connect: TCP state number at the time. */
  tcpState: number;
  /** close: totals from tcp_sock. */
  bytesSent: number;
  bytesReceived: number;
  retransmits: number;
  srttUs: number;
}

const { ECONNABORTED, ECONNRESET, ETIMEDOUT, ECONNREFUSED, EHOSTUNREACH, ENETUNREACH } = constants.errno;

/** The words `kspan events` and span `error.type` use for a failed connect (a stable vocabulary). */
const CONNECT_ERRORS: Record<number, string> = {
  [ECONNABORTED]: 'aborted',
  [ECONNRESET]: 'reset',
  [ETIMEDOUT]: 'timed_out',
  [ECONNREFUSED]: 'refused',
  [EHOSTUNREACH]: 'host_unreachable',
  [ENETUNREACH]: 'network_unreachable',
};

/** The connect failure as a word: refused, timed_out, reset, … or errno_N. */
export function connectErrorName(errno: number): string | null {
  if (!errno) return null;
  return CONNECT_ERRORS[errno] ?? `errno_${errno}`;
}

/** include/net/tcp_states.h, by number (0 is no state). */
const TCP_STATES = [
  '', 'ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE',
  'CLOSE_WAIT', 'LAST_ACK', 'LISTEN', 'CLOSING', 'NEW_SYN_RECV', 'BOUND_INACTIVE',
];

/** A TCP state's kernel name (`ESTABLISHED`, `SYN_SENT`, …); a number kspan does not know, as text. */
export function tcpStateName(state: number): string {
  return TCP_STATES[state] || String(state);
}

export function formatEndpoint(e: Endpoint): string {
  return e.address.includes(':') ? `[${e.address}]:${e.port}` : `${e.address}:${e.port}`;
}
