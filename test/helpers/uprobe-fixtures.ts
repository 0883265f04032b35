/**
 * The function-span fixtures (test/fixtures/uprobes/): built at test time, and
 * their lines parsed.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildFixture, INCLUDE_FLAG, THREAD_CTX_HEADER } from './build-fixture.ts';

/** test/fixtures/uprobes/calls.c: threads, recursion, a call that never returns, getaddrinfo. */
export function callsFixturePath(): string {
  const dir = buildFixture({
    name: 'uprobe-calls',
    sources: ['test/fixtures/uprobes/calls.c', 'test/fixtures/tls/otel_ctx_writer.c', THREAD_CTX_HEADER],
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
    sources: ['test/fixtures/uprobes/tls_handshake.c', 'test/fixtures/tls/otel_ctx_writer.c', THREAD_CTX_HEADER],
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
  cookie: number;
}

/** The uprobe and uretprobe links `agentPid` holds, oldest first. */
export function heldUprobeLinks(agentPid: number): HeldLink[] {
  const links: Omit<HeldLink, 'progName'>[] = [];
  for (const fd of readdirSync(`/proc/${agentPid}/fdinfo`)) {
    let info: string;
    try {
      info = readFileSync(`/proc/${agentPid}/fdinfo/${fd}`, 'utf8');
    } catch {
      continue; // closed meanwhile
    }
    const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(info)?.[1]?.trim();
    const eventType = field('event_type');
    if (field('link_type') !== 'perf' || (eventType !== 'uprobe' && eventType !== 'uretprobe')) continue;
    links.push({
      linkId: Number(field('link_id')),
      progId: Number(field('prog_id')),
      eventType,
      path: field('name') ?? '',
      offset: Number(field('offset')),
      cookie: Number(field('cookie')),
    });
  }
  if (!links.length) return [];
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
