/**
 * `kspan demo` as the user runs it (bin/kspan, a child process): it ends by
 * itself with exit 0, prints trees with the kernel's spans under the frontend's
 * spans and at least one retransmit, its spans are exact (bytes of every
 * response and backend request), and afterwards nothing it started is left:
 * no process, no network namespace, no BPF program.
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

interface SpanLine {
  trace_id: string;
  span_id: string;
  parent_span_id: string | null;
  name: string;
  kind: string;
  service: string;
  kernel: boolean;
  error: string | null;
  events: { name: string }[];
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
  test('runs to completion with kernel spans under the services\' spans, retransmits, and leaves nothing behind', { timeout: 180_000 }, async () => {
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
      const nestedUnder = (i: number): string[] => {
        const depth = text[i].search(/[├└]/);
        const out: string[] = [];
        for (let j = i + 1; j < text.length && text[j].search(/[├└•]/) > depth; j++) out.push(text[j]);
        return out;
      };
      const frontendLines = text.flatMap((l, i) => (/ demo-frontend (server|client) [0-9a-f]{16} /.test(l) ? [i] : []));
      assert.ok(frontendLines.length >= 2, 'trees show the frontend\'s spans');
      for (const i of frontendLines) {
        assert.ok(nestedUnder(i).some((l) => /[├└]─ tcp\.(recv|send|connect)\s+kernel/.test(l)), `no kernel span under:\n${text[i]}`);
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
      const kernelCount = Number(/the kernel's count (\d+) segments/.exec(text.join('\n'))?.[1]);
      assert.ok(events >= 1 && events <= kernelCount, `retransmit events ${events}, kernel count ${kernelCount}`);
    } finally {
      await group.killAll();
      rmSync(spansOut, { force: true });
    }
  });

  test('two demos at once, each with its own namespaces', { timeout: 120_000 }, async () => {
    const group = new ProcessGroup();
    try {
      const demos = await Promise.all([1, 2].map(() => startDemo(group, ['--duration', '3', '--traces', '1'])));
      assert.equal(namespaces(`kspan-demo-${demos[0].p.pid}-`).length, 2);
      assert.equal(namespaces(`kspan-demo-${demos[1].p.pid}-`).length, 2);
      for (const { p, progIds, pids } of demos) {
        const { code } = await p.exited;
        assert.equal(code, 0, `kspan demo exited ${code}:\n${p.lines.join('\n')}\n${p.stderr.join('\n')}`);
        assert.ok(p.lines.some((l) => /tcp\.send\s+kernel/.test(l)));
        await assertNothingLeft(p, progIds, pids);
      }
    } finally {
      await group.killAll();
    }
  });
});
