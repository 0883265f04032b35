/**
 * `kspan demo` as the user runs it (bin/kspan, a child process): it ends by
 * itself with exit 0, prints trees with the kernel's spans under the frontend's
 * spans and at least one retransmit, every line within 120 columns, a summary
 * whose accept, drop and retransmit lines add up, its spans are exact (bytes of
 * every response and backend request), and afterwards nothing it started is
 * left: no process, no network namespace, no BPF program.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { KSPAN_BIN } from '../helpers/kspan-cli.ts';
import { ProcessGroup, type Proc } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { scaled } from '../helpers/timeouts.ts';

interface SpanLine {
  trace_id: string;
  span_id: string;
  parent_span_id: string | null;
  name: string;
  kind: string;
  service: string;
  kernel: boolean;
  error: string | null;
  events: { name: string; attrs?: Record<string, unknown> }[];
  attrs: Record<string, unknown>;
}

/** BPF program ids a process holds through its fds (as in loader.test.ts). */
function progIdsOf(pid: number): number[] {
  const ids = new Set<number>();
  for (const fd of readdirSync(`/proc/${pid}/fdinfo`)) {
    try {
      const m = /^prog_id:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
      if (m) ids.add(Number(m[1]));
    } catch {
      /* fd closed meanwhile */
    }
  }
  return [...ids];
}

function loadedProgIds(): Set<number> {
  const list = JSON.parse(execFileSync('bpftool', ['prog', 'show', '-j'], { encoding: 'utf8' })) as { id: number }[];
  return new Set(list.map((p) => p.id));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

function namespaces(prefix: string): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => n.startsWith(prefix));
}

/** Starts a demo; resolves once traffic runs, with what it holds then. */
async function startDemo(group: ProcessGroup, args: string[]): Promise<{ p: Proc; progIds: number[]; pids: number[] }> {
  const p = group.start(KSPAN_BIN, ['demo', ...args]);
  await p.waitLine(/^driving traffic/, 60_000);
  const progIds = progIdsOf(p.pid);
  const pids = p.lines.flatMap((l) => [...l.matchAll(/\bpid (\d+)/g)].map((m) => Number(m[1])));
  return { p, progIds, pids };
}

async function assertNothingLeft(p: Proc, progIds: number[], pids: number[]): Promise<void> {
  assert.equal(alive(p.pid), false);
  for (const pid of pids) assert.equal(alive(pid), false, `demo process ${pid} still runs`);
  assert.deepEqual(namespaces(`kspan-demo-${p.pid}-`), []);
  const loaded = loadedProgIds();
  assert.deepEqual(progIds.filter((id) => loaded.has(id)), [], 'BPF programs of the demo are still loaded');
}

describe('kspan demo', e2eOptions(), () => {
  test('runs to completion with kernel spans under the services\' spans, retransmits, and leaves nothing behind', { timeout: scaled(180_000) }, async () => {
    const group = new ProcessGroup();
    const spansOut = join(tmpdir(), `kspan-demo-test-${process.pid}.jsonl`);
    try {
      const { p, progIds, pids } = await startDemo(group, ['--duration', '10', '--spans-out', spansOut]);
      assert.ok(progIds.length >= 5, `the demo holds its BPF programs while running: ${progIds}`);
      assert.equal(pids.length, 3, `frontend, backend and driver pids announced:\n${p.lines.join('\n')}`);
      const { code } = await p.exited;
      assert.equal(code, 0, `kspan demo exited ${code}:\n${p.lines.join('\n')}\n${p.stderr.join('\n')}`);
      await assertNothingLeft(p, progIds, pids);

      // The trees: a frontend span with tcp.* lines nested under it, and a retransmit.
      const text = p.lines;
      assert.match(text[1], /frontend .*otel_thread_ctx_v1/);
      for (const l of text) assert.ok([...l].length <= 120, `${[...l].length} columns: ${l}`);
      const nestedUnder = (i: number): string[] => {
        const depth = text[i].search(/[├└]/);
        const out: string[] = [];
        // Lines with no tree mark continue the details of the line above.
        for (let j = i + 1; j < text.length && text[j] !== '' && (text[j].search(/[├└•]/) > depth || !/[├└•]/.test(text[j])); j++) out.push(text[j]);
        return out;
      };
      const frontendLines = text.flatMap((l, i) => (/ demo-frontend (server|client) [0-9a-f]{8}… /.test(l) ? [i] : []));
      assert.ok(frontendLines.length >= 2, 'trees show the frontend\'s spans');
      for (const i of frontendLines) {
        assert.ok(nestedUnder(i).some((l) => /[├└]─ tcp\.(recv|send|connect) .* ms {2}kernel\b/.test(l)), `no kernel span under:\n${text[i]}`);
      }
      assert.ok(text.some((l) => /• tcp\.retransmit \+/.test(l)), 'a tree shows a retransmit');
      assert.ok(text.some((l) => /^ {2}lost data +none$/.test(l)), 'nothing lost');

      // The spans themselves, exactly.
      const spans = readFileSync(spansOut, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as SpanLine);
      const byId = new Map(spans.map((s) => [s.span_id, s]));
      const kernelUnder = (s: SpanLine) => spans.filter((k) => k.kernel && k.parent_span_id === s.span_id);
      const bytes = (list: SpanLine[], name: string) => list.filter((k) => k.name === name).reduce((n, k) => n + Number(k.attrs['kspan.bytes']), 0);
      for (const k of spans.filter((s) => s.kernel)) {
        const parent = byId.get(k.parent_span_id ?? '');
        assert.ok(parent && !parent.kernel, `kernel span ${k.name} ${k.span_id} has no application parent`);
        assert.equal(k.trace_id, parent.trace_id);
        assert.equal(k.service, parent.service);
      }
      const servers = spans.filter((s) => !s.kernel && s.service === 'demo-frontend' && s.kind === 'server');
      const requests = spans.filter((s) => s.service === 'demo-driver');
      assert.ok(requests.length >= 50, `requests: ${requests.length}`);
      assert.equal(servers.length, requests.length);
      assert.equal(requests.filter((s) => s.error).length, 0);
      for (const srv of servers) {
        const client = spans.find((s) => s.parent_span_id === srv.span_id && s.kind === 'client' && !s.kernel);
        assert.ok(client, `server span ${srv.span_id} has no client span`);
        const n = Number(client.attrs['http.response.body.size']);
        // frontend.c's response and backend request, byte for byte.
        const body = `{"backend_bytes":${n}}\n`;
        const response = `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
        assert.equal(bytes(kernelUnder(srv), 'tcp.send'), response.length, `response bytes of ${srv.span_id}`);
        assert.ok(bytes(kernelUnder(srv), 'tcp.recv') > 0, `request bytes of ${srv.span_id}`);
        const request =
          `GET /data?bytes=${n} HTTP/1.1\r\nHost: ${String(client.attrs['server.address'])}\r\n` +
          `traceparent: 00-${client.trace_id}-${client.span_id}-01\r\nUser-Agent: kspan-demo-frontend\r\nConnection: close\r\n\r\n`;
        const underClient = kernelUnder(client);
        assert.equal(bytes(underClient, 'tcp.send'), request.length, `backend request bytes of ${client.span_id}`);
        const received = bytes(underClient, 'tcp.recv');
        assert.ok(received > n && received < n + 1024, `backend response bytes ${received} for a ${n} B body`);
        assert.equal(underClient.filter((k) => k.name === 'tcp.connect').length, 1);
      }
      const retransmits = spans.filter((s) => s.kernel && s.events.some((e) => e.name === 'tcp.retransmit'));
      assert.ok(
        retransmits.some((k) => byId.get(k.parent_span_id!)?.service === 'demo-frontend'),
        'a retransmit under a frontend span',
      );
      // The kernel's own count bounds what kspan attributed (RetransSegs counts segments, kspan skbs).
      const events = retransmits.reduce((n, k) => n + k.events.filter((e) => e.name === 'tcp.retransmit').length, 0);
      const summary = text.slice(text.indexOf('summary')).join('\n');
      const retrans = /retransmitted +(\d+) segments? \(the kernel's RetransSegs\): (\d+) by the frontend, (\d+) by the backend;\n +kspan saw (\d+) on traced sockets and put (\d+) on kernel spans(?:,\n +(\d+) of them attempts the kernel could not send \(kspan\.errno\))?/.exec(summary);
      assert.ok(retrans, summary);
      const [kernelCount, byFrontend, byBackend, seen, put, unsent] = retrans.slice(1).map((x) => Number(x ?? 0));
      assert.equal(kernelCount, byFrontend + byBackend);
      assert.equal(put, events, 'the summary counts the events on the spans written');
      // Where the tracepoint carries an err (on_retransmit), the kernel also traces a retransmit
      // that did not go out, with its error (kspan.errno on the event; -EBUSY while the first
      // copy is still queued on the host), and such an attempt may never reach RetransSegs:
      // only those that went out are bounded by it.
      const failed = retransmits.reduce((n, k) => n + k.events.filter((e) => e.name === 'tcp.retransmit' && e.attrs?.['kspan.errno']).length, 0);
      assert.ok(events >= 1 && events <= seen && seen - failed <= kernelCount, `retransmit events ${events} (${failed} not sent), seen ${seen}, kernel count ${kernelCount}`);
      assert.equal(unsent, failed, 'the summary names the attempts that did not go out');

      // Why accepts exceed requests: one backend connection per request, plus the driver's keep-alive connections.
      const acc = /accepts +(\d+) = (\d+) by the backend, one per request \(the frontend connects anew each time\)\n +\+ (\d+) by the frontend: the driver's keep-alive connections/.exec(summary);
      assert.ok(acc, summary);
      const accepts = (service: string) => spans.filter((k) => k.kernel && k.name === 'tcp.accept' && k.service === service).length;
      assert.deepEqual(acc.slice(1).map(Number), [requests.length + 4, requests.length, 4]);
      assert.deepEqual([accepts('demo-backend'), accepts('demo-frontend')], [requests.length, 4]);
      // Why drops exceed retransmits: what was dropped, by kind, and the retransmits by TCP state.
      const drop = /dropped +(\d+) packets?, all from the frontend to the backend \(iptables\):\n +(\d+) pure ACKs?, (\d+) SYNs?, (\d+) request segments?, (\d+) FINs?\n/.exec(summary);
      assert.ok(drop, summary);
      const [total, ...kinds] = drop.slice(1).map(Number);
      assert.equal(kinds.reduce((a, b) => a + b, 0), total);
      assert.ok(kinds[0] > byBackend, `pure ACKs dropped (${kinds[0]}) outnumber the backend's retransmits (${byBackend})`);
      const statesText = summary.slice(summary.indexOf('by TCP state') + 12, summary.indexOf('why fewer resent')).replace(/\s+/g, ' ');
      const states = /^ frontend: (.*); backend: (.*) $/.exec(statesText);
      assert.ok(states, summary);
      const stateSum = (list: string) => list === 'none' ? 0 : list.split(', ').reduce((n, x) => n + Number(x.split(' ')[1]), 0);
      assert.equal(stateSum(states[1]) + stateSum(states[2]), events);
      assert.match(summary, /why fewer resent +a dropped SYN, request or FIN is sent again; a dropped pure ACK is not when a later ACK covers it,\n +so the backend sends again only when none comes, as at the end of a connection/);
    } finally {
      await group.killAll();
      rmSync(spansOut, { force: true });
    }
  });

  test('two demos at once, each with its own namespaces', { timeout: scaled(120_000) }, async () => {
    const group = new ProcessGroup();
    try {
      const demos = await Promise.all([1, 2].map(() => startDemo(group, ['--duration', '3', '--traces', '1'])));
      assert.equal(namespaces(`kspan-demo-${demos[0].p.pid}-`).length, 2);
      assert.equal(namespaces(`kspan-demo-${demos[1].p.pid}-`).length, 2);
      for (const { p, progIds, pids } of demos) {
        const { code } = await p.exited;
        assert.equal(code, 0, `kspan demo exited ${code}:\n${p.lines.join('\n')}\n${p.stderr.join('\n')}`);
        assert.ok(p.lines.some((l) => /tcp\.send .* ms {2}kernel\b/.test(l)));
        await assertNothingLeft(p, progIds, pids);
      }
    } finally {
      await group.killAll();
    }
  });
});
