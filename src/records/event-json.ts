/**
 * The `kspan events` line format (README "Event format"): one JSON object per
 * record. 64-bit values that can exceed 2^53 are written exactly: `cookie` as a
 * decimal string, `ts_ns` (and the other wall-clock `*_ts_ns`) as exact JSON
 * integers. Pure.
 */
import { decodeRecordAttributes } from '../context/record-attributes.ts';
import { errnoName } from '../core/errors.ts';
import { connectErrorName, formatEndpoint, tcpStateName, type KernelRecord } from './kernel-record.ts';
import { syscallName, type OffCpuRecord, type SchedRecord } from './sched-record.ts';

/** Marks a bigint to be written as a bare JSON integer. */
const EXACT = '\u0000exact:';

/** `keyMap`: the target's threadlocal.attribute_key_map, naming the context's record attributes. */
export function eventObject(r: KernelRecord, clockOffsetNs: bigint, keyMap?: readonly string[]): Record<string, unknown> {
  const o: Record<string, unknown> = {
    type: r.type,
    ts_ns: EXACT + (r.tsNs + clockOffsetNs).toString(),
    pid: r.pid,
    tid: r.tid,
    cookie: r.cookie.toString(),
    local: formatEndpoint(r.local),
    peer: formatEndpoint(r.peer),
    role: r.role,
    trace_id: r.context?.traceId ?? null,
    span_id: r.context?.spanId ?? null,
    trace_flags: r.context ? r.context.traceFlags : null,
  };
  // Only when the record had attributes: lines without them keep their shape.
  if (r.context?.attributes) o.attributes = decodeRecordAttributes(r.context.attributes, keyMap ?? []).attributes;
  // Only when an aggregate of the socket before this record stayed in the kernel.
  if (r.afterDropped) o.after_dropped = true;
  switch (r.type) {
    case 'send':
    case 'recv':
      o.bytes = r.bytes;
      o.calls = r.calls;
      o.first_ts_ns = EXACT + (r.startNs + clockOffsetNs).toString();
      if (r.flushed) o.flushed = true;
      if (r.sentAcked) o.sent_acked = true;
      o.io_path = r.fallback ? 'syscalls' : 'sock_length';
      break;
    case 'accept':
      o.handshake_ts_ns = r.startNs ? EXACT + (r.startNs + clockOffsetNs).toString() : null;
      o.queue_ns = r.startNs ? Number(r.tsNs - r.startNs) : null;
      break;
    case 'connect':
      o.duration_ns = Number(r.tsNs - r.startNs);
      o.error = connectErrorName(r.errno);
      break;
    case 'retransmit':
      o.tcp_state = tcpStateName(r.tcpState);
      o.error = r.errno ? errnoName(r.errno) : null;
      break;
    case 'reset':
      o.direction = r.resetSent ? 'sent' : 'received';
      o.tcp_state = tcpStateName(r.tcpState);
      break;
    case 'close':
      o.bytes_sent = r.bytesSent;
      o.bytes_received = r.bytesReceived;
      o.retransmits = r.retransmits;
      o.srtt_us = r.srttUs;
      break;
  }
  return o;
}

export function eventLine(r: KernelRecord, clockOffsetNs: bigint, keyMap?: readonly string[]): string {
  return JSON.stringify(eventObject(r, clockOffsetNs, keyMap)).replace(/"\\u0000exact:(-?\d+)"/g, '$1');
}

/** A scheduler record (type `sched`, src/records/sched-record.ts) as one `kspan events` line. */
export function schedEventLine(r: SchedRecord, clockOffsetNs: bigint, keyMap?: readonly string[]): string {
  const o: Record<string, unknown> = {
    type: r.type,
    ts_ns: EXACT + (r.endNs + clockOffsetNs).toString(),
    start_ts_ns: EXACT + (r.startNs + clockOffsetNs).toString(),
    pid: r.pid,
    tid: r.tid,
    trace_id: r.context.traceId,
    span_id: r.context.spanId,
    trace_flags: r.context.traceFlags,
  };
  if (r.context.attributes) o.attributes = decodeRecordAttributes(r.context.attributes, keyMap ?? []).attributes;
  o.on_cpu_ns = Number(r.onCpuNs);
  o.blocked_ns = Number(r.blockedNs);
  o.runq_ns = Number(r.runqNs);
  o.voluntary = r.voluntary;
  o.involuntary = r.involuntary;
  o.migrations = r.migrations;
  o.max_off_cpu_ns = Number(r.maxOffNs);
  if (r.maxOffNs) {
    o.max_off_cpu_ts_ns = EXACT + (r.maxOffStartNs + clockOffsetNs).toString();
    o.max_off_cpu_reason = r.maxOffBlocked ? 'blocked' : 'runqueue';
    o.max_off_cpu_syscall = syscallName(r.maxOffSyscall);
  }
  o.off_cpu_events = r.offEvents;
  if (r.flushed) o.flushed = true;
  if (r.exited) o.exited = true;
  return JSON.stringify(o).replace(/"\\u0000exact:(-?\d+)"/g, '$1');
}

/**
 * An off-CPU interval record (type `off_cpu`) as one `kspan events` line: the
 * raw kernel stack as hex addresses, and its wait channel and frames when
 * `named` (src/spans/kallsyms.ts) could name them.
 */
export function offCpuEventLine(r: OffCpuRecord, clockOffsetNs: bigint, named?: { wchan: string | null; frames: string[] }): string {
  const o: Record<string, unknown> = {
    type: r.type,
    ts_ns: EXACT + (r.startNs + clockOffsetNs).toString(),
    pid: r.pid,
    tid: r.tid,
    trace_id: r.traceId,
    span_id: r.spanId,
    kind: r.kind,
    duration_ns: Number(r.durationNs),
    syscall: syscallName(r.syscall),
    stack: r.stack.map((a) => `0x${a.toString(16)}`),
  };
  if (named?.wchan) o.wchan = named.wchan;
  if (named?.frames.length) o.kernel_stack = named.frames;
  return JSON.stringify(o).replace(/"\\u0000exact:(-?\d+)"/g, '$1');
}
