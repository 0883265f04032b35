/**
 * What a running agent holds, seen from outside as an operator would: its BPF
 * maps (found through its fds, /proc/PID/fdinfo's map_id, named and counted by
 * bpftool), its open fds and its resident memory. For the churn tests.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { KspanLimit } from '../../src/records/abi.generated.ts';

/** The BPF maps the process holds, by name → map id. */
export function agentMaps(pid: number): Map<string, number> {
  const ids = new Set<number>();
  for (const fd of readdirSync(`/proc/${pid}/fdinfo`)) {
    let info: string;
    try {
      info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    } catch {
      continue; // closed meanwhile
    }
    const m = /^map_id:\s*(\d+)$/m.exec(info);
    if (m) ids.add(Number(m[1]));
  }
  const out = new Map<string, number>();
  for (const id of ids) {
    const show = JSON.parse(execFileSync('bpftool', ['map', 'show', 'id', String(id), '-j'], { encoding: 'utf8' })) as { name: string };
    out.set(show.name, id);
  }
  return out;
}

/** Entries in a hash map (bpftool map dump). */
export function mapEntryCount(id: number): number {
  const dump = JSON.parse(execFileSync('bpftool', ['map', 'dump', 'id', String(id), '-j'], { encoding: 'utf8', maxBuffer: 256 << 20 })) as unknown[];
  return dump.length;
}

/** The u64 in slot 0 of a one-slot array map (as bpftool shows it: bytes, or a BTF-formatted number). */
export function arrayU64(id: number): bigint {
  const dump = JSON.parse(execFileSync('bpftool', ['map', 'dump', 'id', String(id), '-j'], { encoding: 'utf8' })) as { value: unknown; formatted?: { value: unknown } }[];
  const v = dump[0].formatted?.value ?? dump[0].value;
  if (typeof v === 'number') return BigInt(v);
  if (Array.isArray(v)) return Buffer.from((v as string[]).map((b) => parseInt(b, 16))).readBigUInt64LE(0);
  throw new Error(`unexpected bpftool value ${JSON.stringify(v)}`);
}

/**
 * Sockets in the idle flush's queue, from its count: 0 where the flush has no
 * queue (the walking variant, on kernels whose verifier refuses the queued one,
 * as 6.1), whose count holds KSPAN_IDLE_NO_QUEUE (bpf/kspan.bpf.c, idle_watch()).
 */
function idleQueued(count: number): number {
  return count === KspanLimit.KSPAN_IDLE_NO_QUEUE ? 0 : count;
}

/** Entry counts of the agent's hash maps, and how many sockets wait in the idle queue (0 where there is none: the walking flush). */
export function agentMapCounts(pid: number, names: readonly string[]): Record<string, number> {
  const maps = agentMaps(pid);
  const out: Record<string, number> = {};
  for (const n of names) {
    const id = maps.get(n);
    if (id === undefined) throw new Error(`the agent (pid ${pid}) holds no map ${n}: ${[...maps.keys()].join(', ')}`);
    out[n] = n === 'idle_queued' ? idleQueued(Number(arrayU64(id))) : mapEntryCount(id);
  }
  return out;
}

export function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/**
 * The agent's resting fd count: the fewest of `samples` looks 50 ms apart (its
 * target refresh holds a /proc file open for a moment now and then).
 */
export async function restingFds(pid: number, samples = 10): Promise<number> {
  let fewest = Infinity;
  for (let i = 0; i < samples; i++) {
    fewest = Math.min(fewest, openFds(pid));
    await new Promise((r) => setTimeout(r, 50));
  }
  return fewest;
}

/** Resident set size in KiB (VmRSS). */
export function rssKiB(pid: number): number {
  const m = /^VmRSS:\s*(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

/** Node options that open the agent's inspector on a free loopback port (its URL is printed on stderr). */
export const INSPECT_OPTION = '--inspect=127.0.0.1:0';

/** The inspector URL an agent started with INSPECT_OPTION printed. */
export function inspectorUrl(stderr: readonly string[]): string {
  for (const l of stderr) {
    const m = /^Debugger listening on (ws:\/\/\S+)$/.exec(l);
    if (m) return m[1];
  }
  throw new Error(`no inspector URL on the agent's stderr:\n${stderr.slice(0, 5).join('\n')}`);
}

/**
 * The agent's V8 heap in use right after a full garbage collection, through its
 * inspector: what it keeps, without the garbage that RSS also counts.
 */
export async function heapAfterGc(url: string): Promise<number> {
  const ws = new WebSocket(url);
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error(`cannot connect to the agent's inspector at ${url}`));
  });
  let next = 1;
  const pending = new Map<number, (r: { result?: Record<string, unknown>; error?: unknown }) => void>();
  ws.onmessage = (m) => {
    const msg = JSON.parse(String(m.data)) as { id?: number; result?: Record<string, unknown>; error?: unknown };
    if (msg.id !== undefined) pending.get(msg.id)?.(msg);
  };
  const call = (method: string) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const id = next++;
      pending.set(id, (r) => (r.error ? reject(new Error(`${method}: ${JSON.stringify(r.error)}`)) : resolve(r.result ?? {})));
      ws.send(JSON.stringify({ id, method }));
    });
  try {
    await call('HeapProfiler.collectGarbage');
    await call('HeapProfiler.collectGarbage');
    const usage = await call('Runtime.getHeapUsage');
    return usage.usedSize as number;
  } finally {
    ws.close();
  }
}

/** The u64 keys of a hash map (cookies), from bpftool's raw key bytes. */
export function mapU64Keys(id: number): bigint[] {
  const dump = JSON.parse(execFileSync('bpftool', ['map', 'dump', 'id', String(id), '-j'], { encoding: 'utf8', maxBuffer: 256 << 20 })) as { key: string[] }[];
  return dump.map((e) => Buffer.from(e.key.map((b) => parseInt(b, 16))).readBigUInt64LE(0));
}
