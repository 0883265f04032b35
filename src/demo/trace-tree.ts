/**
 * Whole traces as trees on a terminal: the application's spans (driver,
 * frontend, backend) with kspan's kernel spans nested under the span the
 * service had active, and retransmits/resets as events.
 *
 *   trace 4bf92f3577b34da6a3ce929d0e0e4736  212.410 ms  slowest, 1 retransmit
 *   └─ checkout                 demo-driver                            +0.000 ms  212.410 ms
 *      └─ GET /checkout         demo-frontend server 00f067aa0ba902b7  +0.301 ms  211.900 ms
 *         ├─ tcp.accept         kernel                                 +0.120 ms    0.091 ms  accept queue 0.010 ms
 *         ├─ tcp.recv           kernel                                 +0.290 ms    0.004 ms  96 B in 1 call
 *         ├─ GET /data          demo-frontend client 9f0c3b1d2e4a5f60  +0.402 ms  210.220 ms
 *         │  ├─ tcp.connect     kernel                                 +0.410 ms    0.060 ms  …
 *         │  ├─ tcp.send        kernel                                 +0.500 ms  205.000 ms  120 B in 1 call  retransmits 1
 *         │  │    • tcp.retransmit +205.4 ms ESTABLISHED
 *         │  └─ GET             demo-backend server 1122334455667788   …
 */
import { kernelSpanDetails, ms } from '../export/console-tree.ts';
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
  const notes = [why, t.retransmits ? `${t.retransmits} retransmit${t.retransmits === 1 ? '' : 's'}` : ''].filter(Boolean);
  let out = `trace ${t.traceId}  ${ms(t.durationNs)}${notes.length ? `  (${notes.join(', ')})` : ''}\n`;
  const walk = (list: DemoSpan[], indent: string) => {
    list.forEach((s, i) => {
      const last = i === list.length - 1;
      out += spanLine(s, `${indent}${last ? '└─' : '├─'} `, t.startNs);
      const sub = indent + (last ? '   ' : '│  ');
      for (const e of s.events) {
        const state = e.attrs['kspan.tcp.state'];
        const dir = e.attrs['kspan.reset.direction'];
        out += `${sub}   • ${e.name} +${ms(e.timeNs - t.startNs)}${state ? ' ' + String(state) : ''}${dir ? ' ' + String(dir) : ''}\n`;
      }
      walk(children.get(s.spanId) ?? [], sub);
    });
  };
  walk(roots, '');
  return out;
}

function spanLine(s: DemoSpan, prefix: string, t0: bigint): string {
  const label = (prefix + s.name).padEnd(34);
  let who = s.kernel ? 'kernel' : `${s.service} ${s.kind}${s.kind === 'server' || s.kind === 'client' ? ' ' + s.spanId : ''}`;
  if (!s.kernel && s.parentSpanId === null && s.kind !== 'server') who = s.service;
  const parts = [label, who.padEnd(38), `+${ms(s.startNs - t0)}`.padStart(14), ms(s.endNs - s.startNs).padStart(13)];
  const a = s.attrs;
  if (s.kernel) {
    parts.push(...kernelSpanDetails(s.name, a));
    if (a['kspan.incomplete']) parts.push(`(incomplete: ${String(a['kspan.incomplete.reason'])})`);
  } else if (a['http.response.status_code'] !== undefined) {
    parts.push(`HTTP ${String(a['http.response.status_code'])}`);
  }
  if (s.error) parts.push(`✗ ${s.error}`);
  return parts.join('  ').trimEnd() + '\n';
}

function cmp(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
