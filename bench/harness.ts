/**
 * What the HTTP benchmarks share: the fixtures, the OTLP receiver and `kspan run`
 * in their own processes, the floor (bpf/bench.bpf.c's counter on the same hooks,
 * filtered to the target's pid), the kernel's BPF run-time statistics, and the
 * agent's CPU, RSS and exit counters.
 *
 * Cleanup on every path: every process is started through a ProcessGroup (killed
 * by the caller's finally), and each also ends by itself when the runner dies:
 * the fixtures and the Node service exit when their stdin closes, the receiver
 * when its IPC channel closes, `kspan run` when its target exits. The floor and
 * the statistics switch are file descriptors of this process: the kernel drops
 * them when it exits, however it exits.
 */
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import koffi from 'koffi';
import { BpfObject, type UprobeLink } from '../src/kernel/bpf-object.ts';
import { buildFixture, INCLUDE_FLAG, REPO_ROOT, THREAD_CTX_HEADER } from '../test/helpers/build-fixture.ts';
import { KSPAN_BIN } from '../test/helpers/kspan-cli.ts';
import { fdinfoTexts, type Proc, type ProcessGroup } from '../test/helpers/processes.ts';
import { cpuSeconds, parseWrk, type WrkResult } from './wrk.ts';

export { cpuSeconds };

const execFileAsync = promisify(execFile);

// --- fixtures ---------------------------------------------------------------

let fixtureDir: string | undefined;

/** bench/fixtures/*.c, built once into test/.build/ (cached by source hash). */
export function benchFixture(name: 'native_server' | 'hold_conns'): string {
  fixtureDir ??= buildFixture({
    name: 'bench-native',
    sources: [
      'bench/fixtures/native_server.c',
      'bench/fixtures/hold_conns.c',
      'test/fixtures/tcp/io.h',
      'test/fixtures/tls/otel_ctx_writer.c',
      THREAD_CTX_HEADER,
    ],
    steps: [
      {
        out: 'native_server',
        cmd: ['gcc', '-O2', '-Wall', '-rdynamic', '-pthread', INCLUDE_FLAG, '{native_server.c}', '{otel_ctx_writer.c}', '-o', 'native_server'],
      },
      { out: 'hold_conns', cmd: ['gcc', '-O2', '-Wall', '-Wno-unused-function', '{hold_conns.c}', '-o', 'hold_conns'] },
    ],
  });
  return join(fixtureDir, name);
}

export interface Server {
  proc: Proc;
  pid: number;
  port: number;
}

/** The native keep-alive server (bench/fixtures/native_server.c): one thread per connection. */
export async function startNativeServer(group: ProcessGroup, args: string[] = []): Promise<Server> {
  const proc = group.start(benchFixture('native_server'), args);
  const port = Number((await proc.waitLine(/^port (\d+)$/))[1]);
  return { proc, pid: proc.pid, port };
}

/** Loaded by wrk -s: a fresh traceparent per request, sampled on one in `every` (argument). */
export const TRACEPARENT_LUA = join(REPO_ROOT, 'bench/traceparent.lua');
/** Imported into the Node service: it exits when its stdin closes, as the C fixtures do. */
export const EXIT_ON_STDIN_END = join(REPO_ROOT, 'bench/exit-on-stdin-end.mjs');

// --- wrk ----------------------------------------------------------------------

/** wrk without blocking this process (so it can sample the agent meanwhile). */
export async function wrkAsync(args: string[], url: string, scriptArgs: string[] = []): Promise<WrkResult> {
  const argv = [...args, '--latency', url, ...(scriptArgs.length ? ['--', ...scriptArgs] : [])];
  const { stdout } = await execFileAsync('wrk', argv, { encoding: 'utf8', maxBuffer: 1 << 20 });
  return parseWrk(stdout);
}

// --- BPF run-time statistics ----------------------------------------------

const BPF_STATS_RUN_TIME = 0;

/**
 * Turns on the kernel's BPF run-time statistics (what kernel.bpf_stats_enabled=1
 * does) for as long as the returned handle is open: bpf(BPF_ENABLE_STATS) hands
 * back a file descriptor and the kernel counts its holders, so another user's
 * setting of the sysctl is neither read nor changed, and the statistics go off
 * when this process exits even if it is killed.
 */
export function enableBpfStats(): { close(): void } {
  const libbpf = koffi.load('libbpf.so.1');
  const libc = koffi.load('libc.so.6');
  const enable = libbpf.func('int bpf_enable_stats(int type)') as (t: number) => number;
  const close = libc.func('int close(int fd)') as (fd: number) => number;
  const fd = enable(BPF_STATS_RUN_TIME);
  if (fd < 0) throw new Error(`bpf_enable_stats failed (${fd}): the benchmark needs root (CAP_SYS_ADMIN) and Linux ≥ 5.8`);
  let open = true;
  return {
    close() {
      if (open) close(fd);
      open = false;
    },
  };
}

export interface ProgStat {
  id: number;
  runNs: number;
  runs: number;
}

/** Run time and run count of every BPF program a process holds (its fdinfo). */
export function progStats(pid: number | 'self'): Map<number, ProgStat> {
  const out = new Map<number, ProgStat>();
  for (const t of fdinfoTexts(pid)) {
    const id = /^prog_id:\s*(\d+)/m.exec(t);
    const rt = /^run_time_ns:\s*(\d+)/m.exec(t);
    const rc = /^run_cnt:\s*(\d+)/m.exec(t);
    if (id && rt && rc) out.set(Number(id[1]), { id: Number(id[1]), runNs: Number(rt[1]), runs: Number(rc[1]) });
  }
  return out;
}

/** What each program ran between two snapshots. */
export function statsDelta(before: Map<number, ProgStat>, after: Map<number, ProgStat>): ProgStat[] {
  return [...after.values()].map((a) => {
    const b = before.get(a.id);
    return { id: a.id, runNs: a.runNs - (b?.runNs ?? 0), runs: a.runs - (b?.runs ?? 0) };
  });
}

/** Program names by id (bpftool; names are the kernel's, up to 15 characters). */
export function progNames(ids: number[]): Map<number, string> {
  const out = new Map<number, string>();
  for (const id of ids) {
    try {
      const p = JSON.parse(execFileSync('bpftool', ['-j', 'prog', 'show', 'id', String(id)], { encoding: 'utf8' })) as { name?: string };
      out.set(id, p.name ?? `prog ${id}`);
    } catch {
      out.set(id, `prog ${id}`);
    }
  }
  return out;
}

export interface MapInfo {
  id: number;
  name: string;
  type: string;
  valueSize: number;
  maxEntries: number;
  /** Kernel memory charged to the map (bytes), as the kernel reports it. */
  memlock: number;
}

/** The BPF maps a process holds, with the kernel memory of each (fdinfo + bpftool for the names). */
export function mapsOf(pid: number): MapInfo[] {
  const out = new Map<number, MapInfo>();
  for (const t of fdinfoTexts(pid)) {
    const id = /^map_id:\s*(\d+)/m.exec(t);
    if (!id || out.has(Number(id[1]))) continue;
    const field = (k: string) => Number(new RegExp(`^${k}:\\s*(\\d+)`, 'm').exec(t)?.[1] ?? 0);
    out.set(Number(id[1]), {
      id: Number(id[1]),
      name: '',
      type: String(field('map_type')),
      valueSize: field('value_size'),
      maxEntries: field('max_entries'),
      memlock: field('memlock'),
    });
  }
  for (const m of out.values()) {
    try {
      const j = JSON.parse(execFileSync('bpftool', ['-j', 'map', 'show', 'id', String(m.id)], { encoding: 'utf8' })) as { name?: string; type?: string };
      m.name = j.name ?? '';
      m.type = j.type ?? m.type;
    } catch {
      // gone meanwhile: keep the fdinfo figures
    }
  }
  return [...out.values()];
}

// --- processes: CPU and memory ---------------------------------------------

/** Resident set size of a process, in bytes (VmRSS), or NaN once it is gone. */
export function rssBytes(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Samples a process's RSS on a timer until stopped. */
export class RssSampler {
  readonly samples: number[] = [];
  readonly #timer: NodeJS.Timeout;

  constructor(pid: number, everyMs = 250) {
    const take = () => {
      const v = rssBytes(pid);
      if (Number.isFinite(v)) this.samples.push(v);
    };
    take();
    this.#timer = setInterval(take, everyMs);
  }

  /** Stops; "steady" is the median of the second half of the samples, "max" the highest. */
  stop(): { steady: number; max: number } {
    clearInterval(this.#timer);
    const half = this.samples.slice(Math.floor(this.samples.length / 2));
    return { steady: median(half), max: Math.max(...this.samples) };
  }
}

// --- the OTLP receiver and the agent ----------------------------------------

export interface Receiver {
  proc: Proc;
  endpoint: string;
  /** Spans received so far. */
  count(): Promise<number>;
}

/** The OTLP gRPC receiver in its own process (counting spans off the wire, no decoding). */
export async function startReceiver(group: ProcessGroup): Promise<Receiver> {
  const proc = group.start(process.execPath, [join(REPO_ROOT, 'test/helpers/otlp-receiver.ts'), '--no-decode'], {
    stdio: ['pipe', 'pipe', 'pipe', 'ipc'],
  });
  const port = JSON.parse((await proc.waitLine(/^\{"port":\d+\}$/))[0]).port as number;
  const count = () =>
    new Promise<number>((resolve) => {
      proc.child.once('message', (m: { spans: number }) => resolve(m.spans));
      proc.child.send('count');
    });
  return { proc, endpoint: `http://127.0.0.1:${port}`, count };
}

/**
 * How bin/kspan runs the agent's Node: its V8 flags (the exec line) and the malloc
 * variables it sets. bench/pipeline.ts runs under the same, so that it measures the
 * collector and allocator the agent has.
 */
export function agentNodeRuntime(launcher = readFileSync(KSPAN_BIN, 'utf8')): { flags: string[]; env: Record<string, string> } {
  const exec = launcher.split('\n').find((l) => l.startsWith('exec "$node_bin"'));
  const vars = launcher.match(/^for kv in ([^;]+); do$/m);
  if (!exec || !vars) throw new Error(`${KSPAN_BIN}: no exec line or malloc variables to read the agent's runtime from`);
  const flags = exec.split(/\s+/).filter((t) => t.startsWith('--') && !t.startsWith('--disable-warning'));
  const env = Object.fromEntries(vars[1].trim().split(/\s+/).map((kv) => kv.split('=') as [string, string]));
  return { flags, env };
}

/** The JSON line `kspan run` logs at stop: every counter of the run. */
export interface AgentExitLog {
  kernel: Record<string, number | Record<string, number>>;
  spans: {
    correlator: Record<string, number> & { records: number; spans: number; unsampledSpans?: number };
    export: Record<string, number> & { exported: number; droppedQueueFull: number; droppedFailed: number; droppedShutdown: number };
  };
  msg: string;
}

/** The counters a benchmark reports, from the exit log. */
export interface AgentCounters {
  records: number;
  /** Spans the correlator made (handed to export). */
  spansMade: number;
  /** Spans of unsampled contexts the correlator threw away. */
  unsampledSpans: number;
  /** Records of unsampled contexts the kernel did not make (KSPAN_C_UNSAMPLED, where the kernel samples). */
  unsampledInKernel: number;
  spansExported: number;
  /** Spans made but not exported: queue full, export failed, still queued at shutdown. */
  spansDropped: number;
  /** Records lost before the correlator: ring buffer full, socket table full, undecodable. */
  recordsLost: number;
  lostBy: { ringbufFull: number; sockTableFull: number; decodeErrors: number };
  exitCode: number;
  /** The exit log's kernel counters as they are (they change as the agent does). */
  kernel: Record<string, number | Record<string, number>>;
  /** What the agent logged at level error, as `msg: cause` (at most 5 distinct): why a record was lost. */
  errors: string[];
}

const num = (v: unknown) => (typeof v === 'number' ? v : 0);

/** The distinct error-level lines of an agent's JSON log, as `msg: cause`, at most `max`. */
export function agentErrors(lines: readonly string[], max = 5): string[] {
  const out = new Set<string>();
  for (const line of lines) {
    if (out.size >= max) break;
    if (!line.startsWith('{') || !/"level":(5|6)\d/.test(line)) continue;
    try {
      const o = JSON.parse(line) as { level: number; msg?: string; err?: { message?: string } };
      if (o.level >= 50) out.add(o.err?.message ? `${o.msg}: ${o.err.message}` : String(o.msg));
    } catch {
      // not a log line
    }
  }
  return [...out];
}

export function agentCounters(log: AgentExitLog, exitCode: number, errors: string[] = []): AgentCounters {
  const c = log.spans.correlator;
  const e = log.spans.export;
  const k = log.kernel;
  return {
    records: c.records,
    spansMade: c.spans,
    unsampledSpans: num(c.unsampledSpans),
    unsampledInKernel: num(k.KSPAN_C_UNSAMPLED),
    spansExported: e.exported,
    spansDropped: num(e.droppedQueueFull) + num(e.droppedFailed) + num(e.droppedShutdown),
    recordsLost: num(k.KSPAN_C_RINGBUF_FULL) + num(k.KSPAN_C_SOCK_TABLE_FULL) + num(k.decode_errors),
    lostBy: { ringbufFull: num(k.KSPAN_C_RINGBUF_FULL), sockTableFull: num(k.KSPAN_C_SOCK_TABLE_FULL), decodeErrors: num(k.decode_errors) },
    exitCode,
    kernel: k,
    errors,
  };
}

export interface Agent {
  proc: Proc;
  pid: number;
  /** SIGTERM, then the exit log's counters (exit status 3, "data was lost", is a result, not an error). */
  stop(): Promise<AgentCounters>;
}

/** `bin/kspan run --pid <target>` exporting to the receiver; resolves once it traces the target. */
export async function startAgent(group: ProcessGroup, targetPid: number, endpoint: string, extraArgs: string[] = []): Promise<Agent> {
  const proc = group.start(KSPAN_BIN, ['run', '--pid', String(targetPid), '--otlp-endpoint', endpoint, '--log-level', 'info', ...extraArgs]);
  try {
    await proc.waitStderr(/"msg":"tracing"/, 60_000);
    await proc.waitStderr(/"msg":"target"/, 20_000);
  } catch (err) {
    proc.child.kill('SIGKILL');
    throw err;
  }
  return {
    proc,
    pid: proc.pid,
    async stop() {
      proc.child.kill('SIGTERM');
      const timer = setTimeout(() => proc.child.kill('SIGKILL'), 60_000);
      const { code } = await proc.exited;
      clearTimeout(timer);
      if (code !== 0 && code !== 3) throw new Error(`kspan run exited ${code}:\n${proc.stderr.slice(-20).join('\n')}`);
      const line = proc.stderr.find((l) => /"msg":"stopped/.test(l));
      if (!line) throw new Error(`kspan run logged no exit counters:\n${proc.stderr.slice(-20).join('\n')}`);
      return agentCounters(JSON.parse(line) as AgentExitLog, code, agentErrors(proc.stderr));
    },
  };
}

// --- the floor ----------------------------------------------------------------

function pidKey(pid: number): Buffer {
  const key = Buffer.alloc(4);
  key.writeUInt32LE(pid);
  return key;
}

/**
 * bpf/bench.bpf.c's floor: a per-CPU counter on the hooks kspan runs per
 * request, after the same first step kspan takes there: `floor_send`/`floor_recv`
 * on the tp_btf send/recv hooks and `floor_switch` on sched_switch after a pid
 * lookup, `floor_wakeup` on sched_wakeup. Loaded once in this process, attached
 * only for floor rounds.
 */
export class Floor {
  readonly #obj: BpfObject;
  readonly ids: number[];
  /** Program names by id, as the kernel gives them (bpfCost's `names`). */
  readonly names: Map<number, string>;

  private constructor(obj: BpfObject, ids: number[]) {
    this.#obj = obj;
    this.ids = ids;
    this.names = progNames(ids);
  }

  static open(): Floor {
    const before = new Set(progStats('self').keys());
    const obj = BpfObject.open(join(REPO_ROOT, 'bpf/.output/bench.bpf.o'));
    for (const p of obj.programNames) obj.setAutoload(p, p.startsWith('floor_'));
    obj.load();
    return new Floor(obj, [...progStats('self').keys()].filter((id) => !before.has(id)));
  }

  addPid(pid: number): void {
    this.#obj.map('floor_pids').update(pidKey(pid), Buffer.from([1]));
  }

  removePid(pid: number): void {
    this.#obj.map('floor_pids').delete(pidKey(pid));
  }

  attach(): void {
    this.#obj.attachAll();
  }

  /** The floor's uprobe and uretprobe on `offset` of `path` (bench/uprobe-cost.ts). */
  attachUprobes(path: string, offset: number): UprobeLink[] {
    return [false, true].map((retprobe) =>
      this.#obj.attachUprobe(retprobe ? 'floor_uretprobe' : 'floor_uprobe', { binaryPath: path, offset, retprobe, cookie: 0 }));
  }

  detach(): void {
    this.#obj.detachAll();
  }

  stats(): Map<number, ProgStat> {
    const all = progStats('self');
    return new Map(this.ids.map((id) => [id, all.get(id) ?? { id, runNs: 0, runs: 0 }]));
  }

  close(): void {
    this.#obj.close();
  }
}

// --- small statistics ---------------------------------------------------------

export function median(xs: number[]): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
