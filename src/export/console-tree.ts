/**
 * A SpanExporter that prints each trace's kernel spans as a tree on a terminal:
 * what `kspan run` does when no OTLP endpoint is configured. The application's own
 * spans are not here, so each group is headed by the parent span id it hangs under
 * (or, with --orphans, by none). The columns line up at every depth, and no line
 * is wider than 120 columns (what does not fit continues below).
 *
 *   trace 4bf92f3577b34da6a3ce929d0e0e4736  service=checkout pid=4242
 *   └─ parent 00f067aa0ba902b7
 *      ├─ tcp.accept  +0.000 ms  0.112 ms  accept queue 0.100 ms  127.0.0.1:41234 → 127.0.0.1:8080
 *      ├─ tcp.recv    +0.150 ms  0.020 ms  512 B in 1 call
 *      └─ tcp.send    +1.800 ms  0.040 ms  2048 B in 2 calls  retransmits 1
 *            • tcp.retransmit +1.950 ms ESTABLISHED
 *
 * The demo's trees (src/demo/trace-tree.ts) are laid out by the same treeRows
 * and treeRowLines.
 */
import type { ExportResult } from '@opentelemetry/core';
import type { HrTime } from '@opentelemetry/api';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace';
import { columns, cut, fitLine, MAX_COLUMNS } from './columns.ts';

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
  const notes: string[] = [];
  if (service !== undefined) notes.push(`service=${String(service)}`);
  if (pid !== undefined) notes.push(`pid=${String(pid)}`);
  const lines = fitLine(`trace ${first.spanContext().traceId}`, notes.length ? [notes.join(' ')] : [], '      ');

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
  // One table for the whole trace: its columns line up across groups and depths.
  const groups = [...external.entries()].map(([parentId, list], gi, all) => {
    const last = gi === all.length - 1;
    const heading = `${last ? '└─' : '├─'} ${parentId ? `parent ${parentId}` : '(no parent: orphan)'}`;
    const rows = treeRows(list, (s) => children.get(s.spanContext().spanId), last ? '   ' : '│  ').map(({ item: s, prefix, sub }) => ({
      prefix,
      sub,
      name: s.name,
      startNs: ns(s.startTime) - t0,
      durationNs: ns(s.endTime) - ns(s.startTime),
      parts: spanParts(s),
      events: s.events.map((e) => ({ name: e.name, sinceNs: ns(e.time) - t0, attributes: e.attributes ?? {} })),
    }));
    return { heading, rows };
  });
  const table = treeRowLines(groups.flatMap((g) => g.rows));
  let row = 0;
  for (const g of groups) {
    lines.push(cut(g.heading, MAX_COLUMNS));
    for (let i = 0; i < g.rows.length; i++) lines.push(...table[row++]);
  }
  return `${lines.join('\n')}\n`;
}

function spanParts(s: ReadableSpan): string[] {
  const parts = kernelSpanDetails(s.name, s.attributes);
  if (s.status.code === 2) parts.push(`✗ ${s.status.message ?? 'error'}`);
  if (s.attributes['kspan.incomplete']) parts.push(`(incomplete: ${String(s.attributes['kspan.incomplete.reason'])})`);
  return parts;
}

/** Where a span sits in a tree: what is drawn before its name, and before what hangs under it. */
export interface TreePlace<S> {
  item: S;
  /** `├─ `, `│  └─ `, …: the tree up to the name. */
  prefix: string;
  /** The tree before what hangs under the row: its events, its continued details, its children. */
  sub: string;
}

/** `roots` and, depth first, their children, each with its place in the tree drawn after `indent`. */
export function treeRows<S>(roots: readonly S[], childrenOf: (s: S) => readonly S[] | undefined, indent = ''): TreePlace<S>[] {
  const out: TreePlace<S>[] = [];
  const walk = (list: readonly S[], indent: string) => {
    list.forEach((item, i) => {
      const last = i === list.length - 1;
      const sub = indent + (last ? '   ' : '│  ');
      out.push({ item, prefix: `${indent}${last ? '└─' : '├─'} `, sub });
      walk(childrenOf(item) ?? [], sub);
    });
  };
  walk(roots, indent);
  return out;
}

/** One span as a row of a tree table. */
export interface TreeRow {
  prefix: string;
  sub: string;
  name: string;
  /** From the trace's start. */
  startNs: bigint;
  durationNs: bigint;
  /** What it says, after the times, two spaces apart. */
  parts: readonly string[];
  /** Retransmits and resets, from the trace's start. */
  events: readonly { name: string; sinceNs: bigint; attributes: Readonly<Record<string, unknown>> }[];
}

/** The widest label column (tree prefix and span name); longer names are cut. */
const MAX_LABEL = 44;

/**
 * The rows of one tree as a table, every line within MAX_COLUMNS: the label (the
 * tree and the name) padded to the widest of all rows, whatever their depth, the
 * start and the duration right-aligned, then the parts (those that do not fit
 * continue on lines below); each event on a line of its own. One list of lines per row.
 */
export function treeRowLines(rows: readonly TreeRow[]): string[][] {
  const label = (r: TreeRow) => r.prefix + cut(r.name, Math.max(8, MAX_LABEL - columns(r.prefix)));
  const start = (r: TreeRow) => `+${ms(r.startNs)}`;
  const duration = (r: TreeRow) => ms(r.durationNs);
  const widest = (f: (r: TreeRow) => string) => rows.reduce((w, r) => Math.max(w, columns(f(r))), 0);
  const [wLabel, wStart, wDuration] = [widest(label), widest(start), widest(duration)];
  return rows.map((r) => {
    const head = `${label(r)}${' '.repeat(wLabel - columns(label(r)))}  ${start(r).padStart(wStart)}  ${duration(r).padStart(wDuration)}`;
    const lines = fitLine(head, [...r.parts], `${r.sub}      `);
    for (const e of r.events) {
      const state = e.attributes['kspan.tcp.state'];
      const dir = e.attributes['kspan.reset.direction'];
      const off = e.attributes['kspan.sched.off_cpu.duration_ns'];
      const why = off === undefined ? '' : ['', ms(BigInt(Number(off))), ...['kspan.sched.off_cpu.kind', 'kspan.sched.syscall', 'kspan.sched.wchan'].flatMap((a) => (e.attributes[a] === undefined ? [] : [String(e.attributes[a])]))].join(' ');
      lines.push(cut(`${r.sub}   • ${e.name} +${ms(e.sinceNs)}${state ? ` ${String(state)}` : ''}${dir ? ` ${String(dir)}` : ''}${why}`, MAX_COLUMNS));
    }
    return lines;
  });
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
  if (name === 'thread.sched') {
    const t = (k: string) => ms(BigInt(Number(a[`kspan.sched.${k}`])));
    parts.push(`on CPU ${t('on_cpu_ns')}  blocked ${t('blocked_ns')}  run queue ${t('runqueue_ns')}`);
    parts.push(`switches ${String(a['kspan.sched.voluntary_switches'])}+${String(a['kspan.sched.involuntary_switches'])} preempted`);
  }
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
