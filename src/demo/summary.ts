/**
 * The demo's closing summary, as lines within MAX_COLUMNS. Besides the counts it
 * says why they differ where a newcomer would ask:
 *  - accepts vs requests: the backend accepts one connection per request (the
 *    frontend connects anew for each backend call, `Connection: close`), and the
 *    frontend accepts the driver's few keep-alive connections;
 *  - packets dropped vs segments retransmitted: the iptables rule drops packets
 *    on their way into the backend's namespace, which is all frontend → backend
 *    traffic; most of it is pure ACKs for the backend's responses, and a lost
 *    ACK is covered by the next one, so nothing is sent again. A lost SYN,
 *    request or FIN is sent again by the frontend; the backend sends again only
 *    when no later ACK comes, as at a connection's end.
 */
import type { DroppedPackets } from './lossy-link.ts';
import type { DemoSpan } from './demo-spans.ts';
import { labelled } from '../export/columns.ts';

export interface DemoSummaryInput {
  requests: number;
  drivenS: number;
  failed: number;
  stoppedEarly: boolean;
  /** The application's spans (driver, frontend, backend). */
  appSpans: DemoSpan[];
  /** The kernel spans, when they were collected here (no OTLP endpoint); else null. */
  kernelSpans: DemoSpan[] | null;
  /** With an OTLP endpoint: spans exported, and where. */
  exported?: { spans: number; to: string };
  /** Records the correlator saw, by type. */
  records: { accept: number; retransmit: number };
  /** How the backend's context is read, or why not. */
  backendContext: string;
  dropped: DroppedPackets;
  /** RetransSegs of the frontend's (client) and the backend's (server) namespaces. */
  retransSegs: { frontend: number; backend: number };
  /** Data lost, by what; empty when none. */
  lost: Record<string, number>;
}

const LABEL = 21;

function counts<T>(list: T[], key: (x: T) => string): Map<string, number> {
  const m = new Map<string, number>();
  for (const x of list) m.set(key(x), (m.get(key(x)) ?? 0) + 1);
  return m;
}

const list = (m: Map<string, number>, fmt = (k: string, v: number) => `${k} ${v}`) => [...m].map(([k, v]) => fmt(k, v)).join(', ');
const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

export function summaryLines(s: DemoSummaryInput): string[] {
  const rows: [string, string][] = [];
  const row = (label: string, text: string) => rows.push([label, text]);
  row('requests', `${s.requests} in ${s.drivenS.toFixed(1)} s (${(s.requests / s.drivenS).toFixed(1)}/s), ${s.failed} failed${s.stoppedEarly ? ', stopped early' : ''}`);
  row('application spans', list(counts(s.appSpans, (x) => x.service)));

  const k = s.kernelSpans;
  if (k) {
    const byService = list(counts(k, (x) => x.service), (svc, n) => `${n} under ${svc}`) || 'none';
    row('kernel spans', `${k.length}: ${byService}\n${list(counts(k, (x) => x.name))}`);
    if (!k.some((x) => x.service === 'demo-backend')) row('', `none under demo-backend: ${s.backendContext}`);
    const accepts = counts(k.filter((x) => x.name === 'tcp.accept'), (x) => x.service);
    const be = accepts.get('demo-backend') ?? 0;
    const fe = accepts.get('demo-frontend') ?? 0;
    row('accepts', `${be + fe} = ${be} by the backend, one per request (the frontend connects anew each time)\n+ ${fe} by the frontend: the driver's keep-alive connections`);
  } else {
    row('kernel spans', `${s.exported?.spans ?? 0} exported to ${s.exported?.to ?? 'the OTLP endpoint'} (backend context: ${s.backendContext})`);
    row('accepts', `${s.records.accept}: the backend's, one per request (the frontend connects anew each time),\nand the frontend's: the driver's keep-alive connections`);
  }

  const d = s.dropped;
  row('dropped', `${plural(d.total, 'packet')}, all from the frontend to the backend (iptables):\n${plural(d.ack, 'pure ACK')}, ${plural(d.syn, 'SYN')}, ${plural(d.data, 'request segment')}, ${plural(d.fin, 'FIN')}`);
  const kernelCount = s.retransSegs.frontend + s.retransSegs.backend;
  const put = k?.flatMap((x) => x.events.filter((e) => e.name === 'tcp.retransmit'));
  // Where the kernel reports a retransmit's error, it traces attempts that did not go out too: not in RetransSegs.
  const unsent = put?.filter((e) => e.attrs['kspan.errno']).length ?? 0;
  const seen = put
    ? `;\nkspan saw ${s.records.retransmit} on traced sockets and put ${put.length} on kernel spans${unsent ? `,\n${unsent} of them attempts the kernel could not send (kspan.errno)` : ''}`
    : `;\nkspan saw ${s.records.retransmit} on traced sockets`;
  row('retransmitted', `${plural(kernelCount, 'segment')} (the kernel's RetransSegs): ${s.retransSegs.frontend} by the frontend, ${s.retransSegs.backend} by the backend${seen}`);
  if (k) {
    const byState = (service: string) =>
      list(counts(k.filter((x) => x.service === service).flatMap((x) => x.events.filter((e) => e.name === 'tcp.retransmit')), (e) => String(e.attrs['kspan.tcp.state'])));
    row('  by TCP state', `frontend: ${byState('demo-frontend') || 'none'};\nbackend: ${byState('demo-backend') || 'none'}`);
  }
  row('why fewer resent', 'a dropped SYN, request or FIN is sent again; a dropped pure ACK is not when a later ACK covers it,\nso the backend sends again only when none comes, as at the end of a connection');
  const lost = Object.entries(s.lost).filter(([, v]) => v).map(([key, v]) => `${key} ${v}`).join(', ');
  row('lost data', lost || 'none');

  return ['summary', ...rows.flatMap(([label, text]) => labelled(`  ${label}`, LABEL, text))];
}
