/**
 * One call of a probed function, as the `calls` ring buffer delivers it
 * (struct kspan_call, bpf/kspan.h), in the form the span side uses. Pure.
 */
import { decodeKspanCall, KspanCallFlag } from '../records/abi.generated.ts';
import { traceContext } from '../records/decoder.ts';
import type { TraceContext } from '../records/kernel-record.ts';

export interface CallRecord {
  /** The agent's probe id (the uprobe's attach cookie). */
  probe: number;
  /** The probe of the probed call this one ran inside, in the same thread; 0 when none. */
  outerProbe: number;
  pid: number;
  tid: number;
  /** CLOCK_MONOTONIC ns: entry, and return (or when the call was closed without one). */
  startNs: bigint;
  endNs: bigint;
  /** The return value (rax), signed; 0n when the call did not return. */
  ret: bigint;
  /** dns: distinct addresses of the answer; tls: the SSL's first int after a success (its version in OpenSSL 1.1 to 3.1). */
  addresses: number;
  /** dns: the queried name ('' for the others, or when it could not be read). */
  name: string;
  /** The thread exited or exec'ed inside the call. */
  unfinished: boolean;
  /** The call never returned: a caller returned past it (longjmp, unwinding). */
  abandoned: boolean;
  /** The span the thread had active at entry, or null. */
  context: TraceContext | null;
}

const latin1 = new TextDecoder('latin1');

export function decodeCallRecord(view: DataView, offset: number): CallRecord {
  const c = decodeKspanCall(view, offset);
  const nul = c.name.indexOf(0);
  return {
    probe: c.probe,
    outerProbe: c.outer_probe,
    pid: c.pid,
    tid: c.tid,
    startNs: c.start_ns,
    endNs: c.end_ns,
    ret: c.ret,
    addresses: c.count,
    name: latin1.decode(c.name.subarray(0, nul < 0 ? c.name.length : nul)),
    unfinished: (c.flags & KspanCallFlag.KSPAN_CALL_F_UNFINISHED) !== 0,
    abandoned: (c.flags & KspanCallFlag.KSPAN_CALL_F_ABANDONED) !== 0,
    context: traceContext(c.ctx),
  };
}
