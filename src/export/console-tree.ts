/**
 * A SpanExporter that prints each trace's kernel spans as a tree on a terminal:
 * what `kspan run` does when no OTLP endpoint is configured. The application's own
 * spans are not here, so each group is headed by the parent span id it hangs under.
 *
 *   trace 4bf92f3577b34da6a3ce929d0e0e4736  service=checkout pid=4242
 *   └─ parent 00f067aa0ba902b7
 *      ├─ tcp.accept   +0.000 ms   0.112 ms  accept queue 0.100 ms  127.0.0.1:41234 → 127.0.0.1:8080
 *      ├─ tcp.recv     +0.150 ms   0.020 ms  512 B in 1 call
 *      └─ tcp.send     +1.800 ms   0.040 ms  2048 B in 2 calls  retransmits 1
 *           • tcp.retransmit +1.950 ms ESTABLISHED
 */
import type { ExportResult } from '@opentelemetry/core';
import type { HrTime } from '@opentelemetry/api';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace';

export interface ConsoleTreeOptions {
  /** Where lines go; default process.stdout. */
  write?: (text: string) => void;
}

const ns = (t: HrTime): bigint => BigInt(t[0]) * 1_000_000_000n + BigInt(t[1]);
/** A nanosecond duration as milliseconds with three decimals. */
export const ms = (d: bigint): string => (Number(d) / 1e6).toFixed(3) + ' ms';

export class ConsoleTreeExporter implements SpanExporter {
  readonly #write: (text: string) => void;

  constructor(options: ConsoleTreeOptions = {}) {
    this.#write = options.write ?? ((t) => void process.stdout.write(t));
  }

  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    try {
      this.#write(renderTraces(spans));
      resultCallback({ code: 0 });
    } catch (error) {
      resultCallback({ code: 1, error: error as Error });
    }
  }

  async shutdown(): Promise<void> {}

  async forceFlush(): Promise<void> {}
}

/** The text for a batch of spans: one tree per trace, in order of first start. */
export function renderTraces(spans: ReadableSpan[]): string {
  const traces = new Map<string, ReadableSpan[]>();
  for (const s of spans) {
    const id = s.spanContext().traceId;
    const list = traces.get(id);
    if (list) list.push(s);
    else traces.set(id, [s]);
  }
  const blocks = [...traces.values()].map((list) => {
    list.sort((a, b) => cmp(ns(a.startTime), ns(b.startTime)));
    return { start: ns(list[0].startTime), text: renderTrace(list) };
  });
  blocks.sort((a, b) => cmp(a.start, b.start));
  return blocks.map((b) => b.text).join('');
}

function renderTrace(spans: ReadableSpan[]): string {
  const t0 = ns(spans[0].startTime);
  const first = spans[0];
  const service = first.resource.attributes['service.name'];
  const pid = first.attributes['process.pid'];
  let out = `trace ${first.spanContext().traceId}`;
  if (service !== undefined) out += `  service=${String(service)}`;
  if (pid !== undefined) out += ` pid=${String(pid)}`;
  out += '\n';

  // Spans whose parent is in this batch nest under it; the others are grouped
  // under the (application) parent span id they name.
  const byId = new Map(spans.map((s) => [s.spanContext().spanId, s]));
  const children = new Map<string, ReadableSpan[]>();
  const external = new Map<string, ReadableSpan[]>();
  for (const s of spans) {
    const pid = s.parentSpanContext?.spanId ?? '';
    const into = byId.has(pid) ? children : external;
    const list = into.get(pid);
    if (list) list.push(s);
    else into.set(pid, [s]);
  }
  const groups = [...external.entries()];
  groups.forEach(([parentId, list], gi) => {
    const lastGroup = gi === groups.length - 1;
    out += `${lastGroup ? '└─' : '├─'} ${parentId ? `parent ${parentId}` : '(no parent: orphan)'}\n`;
    out += renderList(list, lastGroup ? '   ' : '│  ', children, t0);
  });
  return out;
}

function renderList(list: ReadableSpan[], indent: string, children: Map<string, ReadableSpan[]>, t0: bigint): string {
  let out = '';
  list.forEach((s, i) => {
    const last = i === list.length - 1;
    out += `${indent}${last ? '└─' : '├─'} ${spanLine(s, t0)}\n`;
    const sub = indent + (last ? '   ' : '│  ');
    for (const e of s.events) {
      const state = e.attributes?.['kspan.tcp.state'];
      const dir = e.attributes?.['kspan.reset.direction'];
      out += `${sub}   • ${e.name} +${ms(ns(e.time) - t0)}${state ? ' ' + String(state) : ''}${dir ? ' ' + String(dir) : ''}\n`;
    }
    const kids = children.get(s.spanContext().spanId);
    if (kids) out += renderList(kids, sub, children, t0);
  });
  return out;
}

function spanLine(s: ReadableSpan, t0: bigint): string {
  const start = ns(s.startTime);
  const parts = [s.name.padEnd(14), `+${ms(start - t0)}`.padStart(11), ms(ns(s.endTime) - start).padStart(11)];
  parts.push(...kernelSpanDetails(s.name, s.attributes));
  if (s.status.code === 2) parts.push(`✗ ${s.status.message ?? 'error'}`);
  if (s.attributes['kspan.incomplete']) parts.push(`(incomplete: ${String(s.attributes['kspan.incomplete.reason'])})`);
  return parts.join('  ');
}

/** What a kernel span says in a tree line: bytes and calls, queue and first-byte waits, retransmits, endpoints. */
export function kernelSpanDetails(name: string, a: Record<string, unknown>): string[] {
  const parts: string[] = [];
  if (a['kspan.bytes'] !== undefined) {
    const calls = Number(a['kspan.syscalls']);
    parts.push(`${String(a['kspan.bytes'])} B in ${calls} call${calls === 1 ? '' : 's'}`);
  }
  if (a['kspan.accept_queue_ns'] !== undefined) parts.push(`accept queue ${ms(BigInt(Number(a['kspan.accept_queue_ns'])))}`);
  if (a['kspan.wait_ns'] !== undefined) parts.push(`first byte after ${ms(BigInt(Number(a['kspan.wait_ns'])))}`);
  if (a['kspan.retransmits']) parts.push(`retransmits ${String(a['kspan.retransmits'])}`);
  if (name === 'tcp.accept' || name === 'tcp.connect' || name === 'tcp.exchange') {
    const peer = hostPort(a['network.peer.address'], a['network.peer.port']);
    const local = hostPort(a['network.local.address'], a['network.local.port']);
    const inbound = name === 'tcp.accept' || (name === 'tcp.exchange' && a['kspan.role'] === 'server');
    parts.push(inbound ? `${peer} → ${local}` : `${local} → ${peer}`);
  }
  return parts;
}

function hostPort(address: unknown, port: unknown): string {
  const h = String(address);
  return h.includes(':') ? `[${h}]:${String(port)}` : `${h}:${String(port)}`;
}

function cmp(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
