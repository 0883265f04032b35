/**
 * Calls of probed functions (CallRecord, src/uprobes/call-record.ts) → spans
 * under the span their thread had active at entry: `dns.lookup`,
 * `tls.handshake`, or the name a `--uprobe` gave. Which calls become spans:
 *
 * - a call with a context: always (unsampled ones stayed in the kernel, counted);
 * - a call with no context: a root span with `orphans`, else counted (`orphans`);
 * - a tls call inside another tls call of the same thread (SSL_connect calls
 *   SSL_do_handshake): the outer one is the handshake, the inner counted (`nested`).
 *
 * Pure: the probes' descriptions come in from the agent's probe table.
 */
import type { Attributes, SpanContext, SpanStatus } from '@opentelemetry/api';
import type { InstrumentationScope } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { CallKind } from '../uprobes/uprobe-spec.ts';
import type { CallRecord } from '../uprobes/call-record.ts';
import { monotonicToHrTime, nsToHrTime } from './hr-time.ts';
import { KernelReadableSpan, KSPAN_SCOPE } from './span-builder.ts';
import { IdSource } from './span-ids.ts';

/** What the agent knows of a probe id. */
export interface ProbeInfo {
  spanName: string;
  kind: CallKind;
  symbol: string;
  /** The probed file, as the target maps it. */
  binary: string;
}

export interface CallSpanCounters {
  spans: number;
  /** Calls with no context, not exported (no `orphans`). */
  orphans: number;
  /** tls calls inside another tls call of the same thread. */
  nested: number;
  /** Records naming a probe id the agent does not know (never expected). */
  unknownProbe: number;
}

export interface CallSpanBuilderOptions {
  clockOffsetNs: bigint | (() => bigint);
  resourceFor: (pid: number) => Resource;
  probe: (id: number) => ProbeInfo | undefined;
  orphans?: boolean;
  scope?: InstrumentationScope;
  ids?: IdSource;
}

const SPAN_KIND_INTERNAL = 0;
const SPAN_KIND_CLIENT = 2;
const STATUS_ERROR = 2;
const UNSET: SpanStatus = Object.freeze({ code: 0 });

/** glibc's EAI_* codes (netdb.h), by value. */
const EAI: Record<number, string> = {
  [-1]: 'EAI_BADFLAGS', [-2]: 'EAI_NONAME', [-3]: 'EAI_AGAIN', [-4]: 'EAI_FAIL', [-5]: 'EAI_NODATA',
  [-6]: 'EAI_FAMILY', [-7]: 'EAI_SOCKTYPE', [-8]: 'EAI_SERVICE', [-9]: 'EAI_ADDRFAMILY',
  [-10]: 'EAI_MEMORY', [-11]: 'EAI_SYSTEM', [-12]: 'EAI_OVERFLOW',
};

/** TLS versions on the wire (the SSL's `version` in OpenSSL 1.1 to 3.1); anything else is not a version and is left out. */
const TLS_VERSIONS: Record<number, string> = { 0x0301: '1.0', 0x0302: '1.1', 0x0303: '1.2', 0x0304: '1.3' };

/** getaddrinfo's result as a word: EAI_NONAME, …, or EAI_<n> for a code kspan does not know. */
export function eaiName(code: number): string {
  return EAI[code] ?? `EAI_${code}`;
}

export class CallSpanBuilder {
  readonly counters: CallSpanCounters = { spans: 0, orphans: 0, nested: 0, unknownProbe: 0 };
  readonly #o: CallSpanBuilderOptions;
  readonly #offset: () => bigint;
  readonly #ids: IdSource;

  constructor(options: CallSpanBuilderOptions) {
    this.#o = options;
    const off = options.clockOffsetNs;
    this.#offset = typeof off === 'bigint' ? () => off : off;
    this.#ids = options.ids ?? new IdSource();
  }

  /** The call's span, or null when it makes none (counted). */
  build(c: CallRecord): KernelReadableSpan | null {
    const probe = this.#o.probe(c.probe);
    if (!probe) {
      this.counters.unknownProbe++;
      return null;
    }
    if (probe.kind === 'tls' && this.#o.probe(c.outerProbe)?.kind === 'tls') {
      this.counters.nested++;
      return null;
    }
    const p = c.context;
    if (!p && !this.#o.orphans) {
      this.counters.orphans++;
      return null;
    }
    this.counters.spans++;
    const offset = this.#offset();
    const context: SpanContext = p
      ? { traceId: p.traceId, spanId: this.#ids.hex(8), traceFlags: p.traceFlags & 0xff, isRemote: false }
      : { traceId: this.#ids.hex(16), spanId: this.#ids.hex(8), traceFlags: 1, isRemote: false };
    const parent: SpanContext | undefined = p
      ? { traceId: p.traceId, spanId: p.spanId, traceFlags: p.traceFlags & 0xff, isRemote: true }
      : undefined;
    const endNs = c.endNs < c.startNs ? c.startNs : c.endNs;
    const { attributes, status } = describeCall(c, probe);
    return new KernelReadableSpan({
      name: probe.spanName,
      kind: probe.kind === 'call' ? SPAN_KIND_INTERNAL : SPAN_KIND_CLIENT,
      context,
      parent,
      startTime: monotonicToHrTime(c.startNs, offset),
      endTime: monotonicToHrTime(endNs, offset),
      duration: nsToHrTime(endNs - c.startNs),
      status,
      attributes,
      events: [],
      resource: this.#o.resourceFor(c.pid),
      scope: this.#o.scope ?? KSPAN_SCOPE,
    });
  }
}

/** A call's attributes and status. Semantic-convention names where they exist, else kspan.*. */
export function describeCall(c: CallRecord, probe: ProbeInfo): { attributes: Attributes; status: SpanStatus } {
  const a: Attributes = {
    'process.pid': c.pid,
    'thread.id': c.tid,
    'code.function.name': probe.symbol,
    'kspan.uprobe.binary': probe.binary,
  };
  let status = UNSET;
  if (c.unfinished || c.abandoned) {
    a['kspan.incomplete'] = true;
    a['kspan.incomplete.reason'] = c.unfinished ? 'thread_exit' : 'abandoned';
    status = { code: STATUS_ERROR, message: c.unfinished ? 'the thread exited inside the call' : 'the call never returned' };
    return { attributes: a, status };
  }
  // The functions probed by the presets return an int: the low 32 bits of rax.
  const rc = Number(BigInt.asIntN(32, c.ret));
  if (probe.kind === 'dns') {
    if (c.name) a['dns.question.name'] = c.name;
    a['kspan.dns.result'] = rc;
    a['kspan.dns.addresses'] = c.addresses;
    if (rc !== 0) {
      a['error.type'] = eaiName(rc);
      status = { code: STATUS_ERROR, message: `getaddrinfo failed: ${eaiName(rc)}` };
    }
  } else if (probe.kind === 'tls') {
    a['kspan.tls.result'] = rc;
    const version = rc === 1 ? TLS_VERSIONS[c.addresses] : undefined;
    if (version) {
      a['tls.protocol.name'] = 'tls';
      a['tls.protocol.version'] = version;
    }
    if (rc !== 1) {
      a['error.type'] = 'tls_handshake_failed';
      status = { code: STATUS_ERROR, message: `${probe.symbol} returned ${rc}` };
    }
  }
  return { attributes: a, status };
}
