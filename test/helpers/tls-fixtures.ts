/**
 * The OTEP 4947 publisher fixture (test/fixtures/tls/) under every TLS access
 * model, and a way to run it and read what each thread printed. Shared by the
 * resolver tests (no BPF) and the BPF reader tests.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { INCLUDE_FLAG, REQUIRE_ALL, THREAD_CTX_HEADER, buildFixture, hasTool, toolOptions } from './build-fixture.ts';
import { stopChild } from './processes.ts';
import { scaled } from './timeouts.ts';

const SRC = 'test/fixtures/tls';
const WRITER = `${SRC}/otel_ctx_writer.c`;
const MAIN = `${SRC}/tls_publisher.c`;
const CFLAGS = ['-O2', '-g', '-Wall', '-Werror', INCLUDE_FLAG];

export type TlsVariantName =
  | 'local-exec'
  | 'initial-exec'
  | 'tlsdesc'
  | 'general-dynamic'
  | 'dlopen-tlsdesc-static'
  | 'dlopen-tlsdesc-dynamic'
  | 'dlopen-general-dynamic'
  | 'musl-static'
  | 'musl-pie-local-exec'
  | 'musl-dlopen-tlsdesc'
  | 'musl-dlopen-general-dynamic';

export interface TlsVariant {
  name: TlsVariantName;
  /** Executable and arguments, relative to the build directory. */
  exe: string;
  args: string[];
  /** What the resolver must report. */
  model: 'local-exec' | 'initial-exec' | 'tlsdesc' | 'general-dynamic';
  dynamic: boolean;
  /** The libc the resolver must name ('unknown': static, no loader mapped). */
  libc: 'glibc' | 'musl' | 'unknown';
  /** The thread that never touched its TLS: a NULL pointer, or no TLS block at all. */
  idle: 'null-pointer' | 'block-unallocated';
}

export const TLS_VARIANTS: TlsVariant[] = [
  { name: 'local-exec', exe: 'le', args: [], model: 'local-exec', dynamic: false, libc: 'glibc', idle: 'null-pointer' },
  { name: 'initial-exec', exe: 'ie', args: [], model: 'initial-exec', dynamic: false, libc: 'glibc', idle: 'null-pointer' },
  { name: 'tlsdesc', exe: 'desc', args: [], model: 'tlsdesc', dynamic: false, libc: 'glibc', idle: 'null-pointer' },
  // A library linked at start-up: its block is static, its DTV entry set at thread creation.
  { name: 'general-dynamic', exe: 'gd', args: [], model: 'general-dynamic', dynamic: true, libc: 'glibc', idle: 'null-pointer' },
  // glibc puts a small dlopen'ed TLSDESC block into its static TLS surplus...
  { name: 'dlopen-tlsdesc-static', exe: 'dl', args: ['--dlopen', 'libotel_desc.so'], model: 'tlsdesc', dynamic: false, libc: 'glibc', idle: 'null-pointer' },
  // ...and a large one (16 KiB of TLS) into dynamic TLS, reached through the DTV,
  // allocated lazily per thread (so not for the idle thread).
  { name: 'dlopen-tlsdesc-dynamic', exe: 'dl', args: ['--dlopen', 'libotel_desc_big.so'], model: 'tlsdesc', dynamic: true, libc: 'glibc', idle: 'block-unallocated' },
  { name: 'dlopen-general-dynamic', exe: 'dl', args: ['--dlopen', 'libotel_gd.so'], model: 'general-dynamic', dynamic: true, libc: 'glibc', idle: 'block-unallocated' },
  { name: 'musl-static', exe: 'musl_static', args: [], model: 'local-exec', dynamic: false, libc: 'unknown', idle: 'null-pointer' },
  // musl-gcc's -static-pie still links the musl loader: a dynamic musl PIE.
  { name: 'musl-pie-local-exec', exe: 'musl_pie', args: [], model: 'local-exec', dynamic: false, libc: 'musl', idle: 'null-pointer' },
  // musl allocates a dlopen'ed library's TLS for every existing thread at dlopen time.
  { name: 'musl-dlopen-tlsdesc', exe: 'musl_dl', args: ['--dlopen', 'libotel_musl_desc.so'], model: 'tlsdesc', dynamic: true, libc: 'musl', idle: 'null-pointer' },
  { name: 'musl-dlopen-general-dynamic', exe: 'musl_dl', args: ['--dlopen', 'libotel_musl_gd.so'], model: 'general-dynamic', dynamic: true, libc: 'musl', idle: 'null-pointer' },
];

export const HAS_MUSL = hasTool('musl-gcc');

/** Test options for a variant: the musl ones need musl-gcc (a failure, not a skip, in CI). */
export function variantOptions(variant: Pick<TlsVariant, 'exe'>): { skip?: string } {
  return variant.exe.startsWith('musl') ? toolOptions('musl-gcc', 'musl-tools') : {};
}

const EXPORT = '-Wl,--export-dynamic-symbol=otel_thread_ctx_v1';
const RPATH = '-Wl,-rpath,$ORIGIN';

/**
 * Builds every glibc variant, and the musl ones when musl-gcc is there (always
 * under KSPAN_REQUIRE_BPF=1, so a missing musl-gcc fails); returns the directory.
 */
export function buildTlsFixtures(): string {
  const lib = (out: string, flags: string[], cc = 'gcc') => ({
    out,
    cmd: [cc, ...CFLAGS, '-shared', '-fPIC', ...flags, '{otel_ctx_writer.c}', '-o', out],
  });
  const exe = (out: string, flags: string[], cc = 'gcc') => ({
    out,
    cmd: [cc, ...CFLAGS, '-pthread', '{tls_publisher.c}', ...flags, '-o', out],
  });
  const steps = [
    exe('le', ['-ftls-model=local-exec', EXPORT, '{otel_ctx_writer.c}']),
    lib('libotel_ie.so', ['-ftls-model=initial-exec']),
    exe('ie', ['-L.', '-lotel_ie', RPATH]),
    lib('libotel_desc.so', ['-mtls-dialect=gnu2']),
    exe('desc', ['-L.', '-lotel_desc', RPATH]),
    lib('libotel_gd.so', ['-mtls-dialect=gnu']),
    exe('gd', ['-L.', '-lotel_gd', RPATH]),
    lib('libotel_desc_big.so', ['-mtls-dialect=gnu2', '-DOTEL_BIG_TLS']),
    exe('dl', ['-DOTEL_DLOPEN_ONLY', '-ldl']),
  ];
  if (HAS_MUSL || REQUIRE_ALL) {
    steps.push(
      exe('musl_static', ['-static', EXPORT, '{otel_ctx_writer.c}'], 'musl-gcc'),
      exe('musl_pie', ['-pie', '-fPIE', EXPORT, '{otel_ctx_writer.c}'], 'musl-gcc'),
      lib('libotel_musl_desc.so', ['-mtls-dialect=gnu2'], 'musl-gcc'),
      lib('libotel_musl_gd.so', ['-mtls-dialect=gnu'], 'musl-gcc'),
      exe('musl_dl', ['-DOTEL_DLOPEN_ONLY'], 'musl-gcc'),
    );
  }
  return buildFixture({ name: 'tls', sources: [WRITER, MAIN, THREAD_CTX_HEADER], steps });
}

export interface PublisherThread {
  index: number;
  tid: number;
  fsbase: number;
  /** &otel_thread_ctx_v1 as the thread itself computed it. */
  addr: number;
  /** The pointer it stored there. */
  record: number;
  traceId: string;
  spanId: string;
}

export interface RunningPublisher {
  child: ChildProcess;
  pid: number;
  threads: PublisherThread[];
  idle: { tid: number; fsbase: number };
  /** With --connect: lets the workers start their I/O. */
  go(): void;
  /** Resolves with the first line (printed after "ready") that matches. */
  waitLine(re: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  /** Closes stdin and waits for exit (kills after 2 s). */
  stop(): Promise<void>;
}

/** Starts a variant and resolves once it printed "ready". */
export function startPublisher(
  dir: string,
  variant: Pick<TlsVariant, 'exe' | 'args'>,
  opts: {
    threads?: number;
    hostile?: 'unmapped' | 'kernel' | 'invalid';
    env?: Record<string, string>;
    /** TCP I/O against 127.0.0.1:port after go(). */
    connect?: number;
    rounds?: number;
    flip?: boolean;
    /** Sleep before the dlopen (the process is visible before it publishes). */
    delayMs?: number;
    /** Wait for load() before the dlopen (the test decides when publishing starts). */
    loadOnStdin?: boolean;
    /** Called right after spawn, before "ready". */
    onSpawn?: (child: ChildProcess) => void;
  } = {},
): Promise<RunningPublisher> {
  const args = variant.args.map((a) => (a.endsWith('.so') ? join(dir, a) : a));
  if (opts.threads !== undefined) args.push('--threads', String(opts.threads));
  if (opts.hostile) args.push('--hostile', opts.hostile);
  if (opts.connect !== undefined) args.push('--connect', String(opts.connect));
  if (opts.rounds !== undefined) args.push('--rounds', String(opts.rounds));
  if (opts.flip) args.push('--flip');
  if (opts.delayMs !== undefined) args.push('--delay-ms', String(opts.delayMs));
  if (opts.loadOnStdin) args.push('--load-on-stdin');
  const child = spawn(join(dir, variant.exe), args, {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  opts.onSpawn?.(child);
  const stop = () => stopChild(child);
  return new Promise((resolve, reject) => {
    const threads: PublisherThread[] = [];
    let idle: RunningPublisher['idle'] | undefined;
    let ready = false;
    const later: string[] = [];
    const waiters: Array<{ re: RegExp; resolve: (m: RegExpExecArray) => void }> = [];
    const waitLine = (re: RegExp, timeoutMs = 10_000) =>
      new Promise<RegExpExecArray>((res, rej) => {
        for (const l of later) {
          const m = re.exec(l);
          if (m) return res(m);
        }
        const t = setTimeout(() => rej(new Error(`${variant.exe}: no line matching ${re} in ${timeoutMs} ms; stderr: ${stderr}`)), scaled(timeoutMs));
        waiters.push({ re, resolve: (m) => (clearTimeout(t), res(m)) });
      });
    const go = () => void child.stdin!.write('g');
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${variant.exe} exited (${code ?? signal}) before ready: ${stderr}`));
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${variant.exe} did not get ready in 10 s: ${stderr}`));
    }, scaled(10_000));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (ready) {
        later.push(line);
        for (let i = waiters.length - 1; i >= 0; i--) {
          const m = waiters[i].re.exec(line);
          if (m) waiters.splice(i, 1)[0].resolve(m);
        }
        return;
      }
      const hex = (s: string) => parseInt(s, 16);
      let m = /^thread (\d+) tid (\d+) fsbase 0x([0-9a-f]+) addr 0x([0-9a-f]+) record 0x([0-9a-f]+) trace ([0-9a-f]{32}) span ([0-9a-f]{16})$/.exec(line);
      if (m) {
        threads.push({ index: +m[1], tid: +m[2], fsbase: hex(m[3]), addr: hex(m[4]), record: hex(m[5]), traceId: m[6], spanId: m[7] });
        return;
      }
      m = /^idle tid (\d+) fsbase 0x([0-9a-f]+)$/.exec(line);
      if (m) {
        idle = { tid: +m[1], fsbase: hex(m[2]) };
        return;
      }
      m = /^ready pid (\d+)$/.exec(line);
      if (m && idle) {
        ready = true;
        clearTimeout(timer);
        child.removeAllListeners('exit');
        threads.sort((a, b) => a.index - b.index);
        resolve({ child, pid: +m[1], threads, idle, go, waitLine, stop });
      }
    });
  });
}

/** test/fixtures/tls/ctx_tx_spill.c: four spans on one socket before its data is acknowledged. */
export function buildTxSpillFixture(): string {
  const dir = buildFixture({
    name: 'tls-tx-spill',
    sources: [WRITER, `${SRC}/ctx_tx_spill.c`, `${SRC}/fixture_ctx.h`, THREAD_CTX_HEADER],
    steps: [{ out: 'ctx_tx_spill', cmd: ['gcc', ...CFLAGS, '{ctx_tx_spill.c}', '{otel_ctx_writer.c}', '-ftls-model=local-exec', EXPORT, '-o', 'ctx_tx_spill'] }],
  });
  return join(dir, 'ctx_tx_spill');
}

/** The "sockets outlive the moment of context" fixture (test/fixtures/tls/ctx_flush.c); returns the binary. */
export function buildCtxFlushFixture(): string {
  const dir = buildFixture({
    name: 'tls-flush',
    sources: [WRITER, `${SRC}/ctx_flush.c`, `${SRC}/fixture_ctx.h`, THREAD_CTX_HEADER],
    steps: [{ out: 'ctx_flush', cmd: ['gcc', ...CFLAGS, '{ctx_flush.c}', '{otel_ctx_writer.c}', '-ftls-model=local-exec', EXPORT, '-o', 'ctx_flush'] }],
  });
  return join(dir, 'ctx_flush');
}
