/**
 * The function-span fixtures (test/fixtures/uprobes/): built at test time, and
 * their lines parsed.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { buildFixture, INCLUDE_FLAG, THREAD_CTX_HEADER } from './build-fixture.ts';
import { KSPAN_BIN } from './kspan-cli.ts';
import { OtlpReceiver } from './otlp-receiver.ts';
import { ProcessGroup, type Proc } from './processes.ts';

/** test/fixtures/uprobes/calls.c: threads, recursion, a call that never returns, getaddrinfo. */
export function callsFixturePath(): string {
  const dir = buildFixture({
    name: 'uprobe-calls',
    sources: ['test/fixtures/uprobes/calls.c', 'test/fixtures/uprobes/fixture.h', 'test/fixtures/tls/otel_ctx_writer.c', THREAD_CTX_HEADER],
    steps: [
      {
        out: 'calls',
        // -O0: the recursion stays a recursion (no accumulator loop), each level its own frame.
        cmd: ['gcc', '-O0', '-g', '-Wall', '-pthread', '-rdynamic', INCLUDE_FLAG, '{calls.c}', '{otel_ctx_writer.c}', '-o', 'calls'],
      },
    ],
  });
  return join(dir, 'calls');
}

/** test/fixtures/uprobes/tls_handshake.c, linked with the system's libssl. */
export function tlsFixturePath(): string {
  const dir = buildFixture({
    name: 'uprobe-tls',
    sources: ['test/fixtures/uprobes/tls_handshake.c', 'test/fixtures/uprobes/fixture.h', 'test/fixtures/tls/otel_ctx_writer.c', THREAD_CTX_HEADER],
    steps: [
      {
        out: 'tls_handshake',
        cmd: ['gcc', '-O2', '-Wall', '-pthread', '-rdynamic', INCLUDE_FLAG, '{tls_handshake.c}', '{otel_ctx_writer.c}', '-o', 'tls_handshake', '-lssl', '-lcrypto'],
      },
    ],
  });
  return join(dir, 'tls_handshake');
}

/** A "ctx WHO TID TRACE SPAN" line. */
export interface PublishedCtx {
  who: string;
  tid: number;
  traceId: string;
  spanId: string;
}

export function publishedContexts(lines: readonly string[]): PublishedCtx[] {
  return lines.flatMap((l) => {
    const m = /^ctx (\S+) (\d+) ([0-9a-f]{32}) ([0-9a-f]{16})$/.exec(l);
    return m ? [{ who: m[1], tid: Number(m[2]), traceId: m[3], spanId: m[4] }] : [];
  });
}

/** A uprobe link the agent holds (its fds), as /proc/PID/fdinfo tells. */
export interface HeldLink {
  linkId: number;
  progId: number;
  progName: string;
  /** uprobe or uretprobe */
  eventType: string;
  /** The probed file, as the agent named it (/proc/PID/root/...). */
  path: string;
  offset: number;
  /** The attach cookie; undefined where the kernel does not report a perf link's details (before 6.x: see heldUprobeLinks). */
  cookie: number | undefined;
}

/** `bpftool perf show`: the perf events of `pid` with a BPF program (BPF_TASK_FD_QUERY, every kernel kspan runs on). */
function perfEvents(pid: number): Map<number, { fd_type: string; filename?: string; offset?: number; prog_id: number }> {
  const all = JSON.parse(execFileSync('bpftool', ['perf', 'show', '--json'], { encoding: 'utf8' })) as { pid: number; fd: number; fd_type: string; filename?: string; offset?: number; prog_id: number }[];
  return new Map(all.filter((e) => e.pid === pid).map((e) => [e.fd, e]));
}

/** The uprobe and uretprobe links `agentPid` holds, oldest first (`names: false`: without asking bpftool the programs' names). */
export function heldUprobeLinks(agentPid: number, opts: { names?: boolean } = {}): HeldLink[] {
  const links: Omit<HeldLink, 'progName'>[] = [];
  let perf: ReturnType<typeof perfEvents> | undefined;
  for (const fd of readdirSync(`/proc/${agentPid}/fdinfo`)) {
    let info: string;
    try {
      info = readFileSync(`/proc/${agentPid}/fdinfo/${fd}`, 'utf8');
    } catch {
      continue; // closed meanwhile
    }
    const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(info)?.[1]?.trim();
    if (field('link_type') !== 'perf') continue;
    let eventType = field('event_type');
    let path = field('name') ?? '';
    let offset = Number(field('offset'));
    const cookie = field('cookie');
    if (eventType === undefined) {
      // A kernel whose fdinfo tells only the link and its program (6.1, 6.12): the
      // event is the perf event fd libbpf opened just before the link's (fd − 1).
      perf ??= perfEvents(agentPid);
      const ev = perf.get(Number(fd) - 1);
      if (!ev || ev.prog_id !== Number(field('prog_id'))) continue;
      eventType = ev.fd_type;
      path = ev.filename ?? '';
      offset = ev.offset ?? NaN;
    }
    if (eventType !== 'uprobe' && eventType !== 'uretprobe') continue;
    links.push({
      linkId: Number(field('link_id')),
      progId: Number(field('prog_id')),
      eventType,
      path,
      offset,
      cookie: cookie === undefined ? undefined : Number(cookie),
    });
  }
  if (!links.length || opts.names === false) return links.map((l) => ({ ...l, progName: '' })).sort((a, b) => a.linkId - b.linkId);
  const progs = JSON.parse(execFileSync('bpftool', ['prog', 'show', '--json'], { encoding: 'utf8' })) as { id: number; name?: string }[];
  const names = new Map(progs.map((p) => [p.id, p.name ?? '']));
  return links.map((l) => ({ ...l, progName: names.get(l.progId) ?? '' })).sort((a, b) => a.linkId - b.linkId);
}

/** Ids of every BPF link on the machine (`bpftool link show`). */
export function systemLinkIds(): Set<number> {
  const links = JSON.parse(execFileSync('bpftool', ['link', 'show', '--json'], { encoding: 'utf8' })) as { id: number }[];
  return new Set(links.map((l) => l.id));
}

/** Lines of /sys/kernel/tracing/uprobe_events naming `path` (uprobes made through tracefs rather than perf). */
export function tracefsUprobes(path: string): string[] {
  const file = '/sys/kernel/tracing/uprobe_events';
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8').split('\n').filter((l) => l.includes(path));
}

/** What `kspan run` logs when it stops: the kernel's counters and the function spans' counts. */
export interface AgentStopLog {
  msg: string;
  kernel?: Record<string, number>;
  uprobes?: { calls: Record<string, number> };
}

export function agentStopLog(agent: Proc): AgentStopLog {
  const l = agent.stderr.filter((x) => x.startsWith('{')).map((x) => JSON.parse(x) as AgentStopLog).find((x) => x.msg === 'stopped');
  assert.ok(l, `no stop log:\n${agent.stderr.join('\n')}`);
  return l;
}

/**
 * Runs a fixture that prints "ready pid P", works on "go" until it prints
 * "done", and exits on "exit", under `kspan run --no-sched --pid P AGENT_ARGS` (function spans alone); the agent
 * stops on its own once the fixture is gone and must exit 0.
 */
export async function runFixtureTraced(group: ProcessGroup, cmd: string, args: string[], agentArgs: string[]): Promise<{ fixture: Proc; agent: Proc; pid: number }> {
  const fixture = group.start(cmd, args);
  const pid = Number((await fixture.waitLine(/^ready pid (\d+)$/))[1]);
  const agent = group.start(KSPAN_BIN, ['run', '--no-sched', '--pid', String(pid), ...agentArgs]);
  await agent.waitStderr(/"msg":"tracing"/, 20_000);
  fixture.send('go');
  await fixture.waitLine(/^done$/, 60_000);
  fixture.send('exit');
  await fixture.exited;
  const { code } = await agent.exited;
  assert.equal(code, 0, agent.stderr.join('\n'));
  return { fixture, agent, pid };
}

/** What each function-span test gets fresh: its processes (killed after), an OTLP receiver, a scratch directory. */
export interface TestBed {
  group: ProcessGroup;
  receiver: OtlpReceiver;
  dir: string;
}

/** Registers the hooks that make and clean up a TestBed around each test of the calling describe(). */
export function useTestBed(): TestBed {
  const bed = {} as TestBed;
  beforeEach(async () => {
    bed.group = new ProcessGroup();
    bed.receiver = new OtlpReceiver({ protocol: 'grpc' });
    await bed.receiver.start();
    bed.dir = mkdtempSync(join(tmpdir(), 'kspan-uprobes-'));
  });
  afterEach(async () => {
    await bed.group.killAll();
    await bed.receiver.stop();
    rmSync(bed.dir, { recursive: true, force: true });
  });
  return bed;
}
