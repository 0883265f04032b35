/**
 * Whole traces as trees on a terminal: the application's spans (driver,
 * frontend, backend) with kspan's kernel spans nested under the span the
 * service had active, and retransmits/resets as events.
 *
 *   trace 4bf92f3577b34da6a3ce929d0e0e4736  212.410 ms  (slowest, 1 retransmit)
 *   └─ checkout                   +0.000 ms  212.410 ms  demo-driver  HTTP 200
 *      └─ GET /checkout           +0.301 ms  211.900 ms  demo-frontend server 00f067aa…  HTTP 200
 *         ├─ tcp.recv             +0.290 ms    0.004 ms  kernel  96 B in 1 call
 *         ├─ GET /data            +0.402 ms  210.220 ms  demo-frontend client 9f0c3b1d…  HTTP 200
 *         │  ├─ tcp.connect       +0.410 ms    0.060 ms  kernel  192.168.77.1:40112 → 192.168.77.2:38513
 *         │  ├─ tcp.send          +0.500 ms  205.000 ms  kernel  120 B in 1 call  retransmits 1
 *         │  │     • tcp.retransmit +205.4 ms ESTABLISHED
 *         │  └─ GET /data         +0.700 ms    1.100 ms  demo-backend server 11223344…  HTTP 200
 */
import { kernelSpanDetails, ms, treeRowLines, treeRows } from '../export/console-tree.ts';
import { fitLine } from '../export/columns.ts';
import type { DemoSpan } from './demo-spans.ts';

export interface TraceSummary {
  traceId: string;
  spans: DemoSpan[];
  startNs: bigint;
  durationNs: bigint;
  kernelSpans: number;
  retransmits: number;
}

/** Groups spans by trace; the duration is the root's (else first start → last end). */
export function groupTraces(spans: DemoSpan[]): TraceSummary[] {
  const byTrace = new Map<string, DemoSpan[]>();
  for (const s of spans) {
    const list = byTrace.get(s.traceId);
    if (list) list.push(s);
    else byTrace.set(s.traceId, [s]);
  }
  return [...byTrace.entries()].map(([traceId, list]) => {
    list.sort((a, b) => cmp(a.startNs, b.startNs));
    const root = list.find((s) => s.parentSpanId === null && !s.kernel);
    const start = root?.startNs ?? list[0].startNs;
    const end = root?.endNs ?? list.reduce((m, s) => (s.endNs > m ? s.endNs : m), start);
    return {
      traceId,
      spans: list,
      startNs: start,
      durationNs: end - start,
      kernelSpans: list.filter((s) => s.kernel).length,
      retransmits: list.reduce((n, s) => n + s.events.filter((e) => e.name === 'tcp.retransmit').length, 0),
    };
  });
}

/**
 * Which traces to print: the slowest with retransmits, the slowest overall and a
 * typical (median) one, `max` at most, each with why it was chosen; in start order.
 */
export function pickTraces(traces: TraceSummary[], max: number): { trace: TraceSummary; why: string }[] {
  const complete = traces.filter((t) => t.spans.some((s) => s.parentSpanId === null && !s.kernel) && t.kernelSpans > 0);
  const picked = new Map<string, { trace: TraceSummary; why: string }>();
  const add = (t: TraceSummary | undefined, why: string) => {
    if (t && picked.size < max && !picked.has(t.traceId)) picked.set(t.traceId, { trace: t, why });
  };
  const slowest = [...complete].sort((a, b) => cmp(b.durationNs, a.durationNs));
  const sorted = [...complete].sort((a, b) => cmp(a.durationNs, b.durationNs));
  add(sorted[Math.floor(sorted.length / 2)], 'typical (median duration)');
  const lossy = slowest.filter((t) => t.retransmits > 0);
  for (const t of lossy.slice(0, Math.max(1, Math.ceil((max - 1) / 2)))) add(t, 'with retransmits');
  for (const t of slowest) add(t, 'slowest');
  return [...picked.values()].sort((a, b) => cmp(a.trace.startNs, b.trace.startNs));
}

/**
 * One trace as a tree, every line within MAX_COLUMNS: per span the tree and its
 * name, its start (from the trace's) and duration, then who made it (`kernel`,
 * or the service, kind and id of an application span) and what it says.
 */
export function renderTrace(t: TraceSummary, why = ''): string {
  const ids = new Set(t.spans.map((s) => s.spanId));
  const children = new Map<string, DemoSpan[]>();
  const roots: DemoSpan[] = [];
  for (const s of t.spans) {
    if (s.parentSpanId && ids.has(s.parentSpanId)) {
      const list = children.get(s.parentSpanId);
      if (list) list.push(s);
      else children.set(s.parentSpanId, [s]);
    } else roots.push(s);
  }
  const rows = treeRows(roots, (s) => children.get(s.spanId)).map(({ item: s, prefix, sub }) => ({
    prefix,
    sub,
    name: s.name,
    startNs: s.startNs - t.startNs,
    durationNs: s.endNs - s.startNs,
    parts: spanParts(s),
    events: s.events.map((e) => ({ name: e.name, sinceNs: e.timeNs - t.startNs, attributes: e.attrs })),
  }));
  const notes = [why, t.retransmits ? `${t.retransmits} retransmit${t.retransmits === 1 ? '' : 's'}` : ''].filter(Boolean);
  const lines = fitLine(`trace ${t.traceId}  ${ms(t.durationNs)}`, notes.length ? [`(${notes.join(', ')})`] : [], '      ');
  return `${[...lines, ...treeRowLines(rows).flat()].join('\n')}\n`;
}

/** Who made the span and what it says: `kernel` and kspan's details, or the service's span and its status. */
function spanParts(s: DemoSpan): string[] {
  const a = s.attrs;
  const parts: string[] = [];
  if (s.kernel) {
    parts.push('kernel', ...kernelSpanDetails(s.name, a));
    if (a['kspan.incomplete']) parts.push(`(incomplete: ${String(a['kspan.incomplete.reason'])})`);
  } else {
    const server = s.kind === 'server' || s.kind === 'client';
    parts.push(s.parentSpanId === null && s.kind !== 'server' ? s.service : `${s.service} ${s.kind}${server ? ` ${s.spanId.slice(0, 8)}…` : ''}`);
    if (a['http.response.status_code'] !== undefined) parts.push(`HTTP ${String(a['http.response.status_code'])}`);
  }
  if (s.error) parts.push(`✗ ${s.error}`);
  return parts;
}

function cmp(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
