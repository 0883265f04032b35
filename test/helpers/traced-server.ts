/**
 * The traced Node service (test/fixtures/nodejs/traced-server.cjs) under test:
 * started with or without kspan/publisher, with a FIFO that holds a request inside
 * its server span (the main thread blocks in open()/read() there) until released.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync, mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { ProcessGroup, Proc } from './processes.ts';
import { TlsResolver, type TlsResolution } from '../../src/context/tls-resolver.ts';
import { tlsAddress } from '../../src/context/tls-walk.ts';
import { withProcessMemory } from '../../src/context/proc-mem.ts';
import { KspanCtxScheme } from '../../src/records/abi.generated.ts';
import {
  NODE_TLS_SYMBOL,
  nodeLayoutFromProcessContext,
  walkNodeContext,
  type NodeWalkResult,
} from '../../src/context/nodejs/v8-walk.ts';
import { readProcessContext } from './process-context.ts';
import { scaled } from './timeouts.ts';

export const ROOT = resolve(import.meta.dirname, '../..');
export const FIXTURE = join(ROOT, 'test/fixtures/nodejs/traced-server.cjs');
export const REGISTER_PATH = join(ROOT, 'src/publisher/register.ts');

export interface ReadyLine {
  ready: true;
  port: number;
  pid: number;
  fsbase?: string;
  tls?: string | null;
  addon?: string;
}

export interface SpanIds {
  traceId: string;
  spanId: string;
  traceFlags: number;
}

export interface TracedServerOptions {
  /**
   * How the publisher is loaded: by file path, by package name (`kspan/publisher/register`,
   * resolved through a node_modules/kspan symlink in a scratch app directory), or not at all.
   */
  publisher: 'path' | 'package' | 'programmatic' | 'none';
  nodeArgs?: string[];
  env?: Record<string, string>;
  serviceName?: string;
  /** Print fsbase and the dlsym address of the TLS struct (debug path). */
  tlsDebug?: boolean;
}

export interface TracedServer {
  proc: Proc;
  pid: number;
  port: number;
  ready: ReadyLine;
  /** Sends GET /hold; resolves once the handler is blocked inside its span. */
  hold(headers?: Record<string, string>): Promise<{ ids: SpanIds; response: Promise<string> }>;
  /** Lets the held handler answer. */
  release(): void;
  get(path: string, headers?: Record<string, string>): Promise<string>;
  cleanup(): void;
}

export async function startTracedServer(group: ProcessGroup, opts: TracedServerOptions): Promise<TracedServer> {
  const dir = mkdtempSync(join(tmpdir(), 'kspan-traced-'));
  const fifo = join(dir, 'hold.fifo');
  execFileSync('mkfifo', [fifo]);
  const args = [...(opts.nodeArgs ?? [])];
  let cwd = ROOT;
  if (opts.publisher === 'path') args.push('--import', REGISTER_PATH);
  if (opts.publisher === 'package') {
    // An app directory that has kspan as a dependency (a symlink, like `npm link`).
    cwd = join(dir, 'app');
    mkdirSync(join(cwd, 'node_modules'), { recursive: true });
    symlinkSync(ROOT, join(cwd, 'node_modules/kspan'));
    writeFileSync(join(cwd, 'package.json'), '{"name":"app","private":true}\n');
    args.push('--import', 'kspan/publisher/register');
  }
  const extraEnv: Record<string, string> = {};
  if (opts.publisher === 'programmatic') extraEnv.FIXTURE_PUBLISHER_MODULE = join(ROOT, 'src/publisher/index.mjs'); // the package's entry
  args.push(FIXTURE);
  const proc = group.start(process.execPath, args, {
    cwd,
    env: {
      ...process.env,
      NODE_OPTIONS: '',
      FIXTURE_FIFO: fifo,
      FIXTURE_SERVICE_NAME: opts.serviceName ?? 'traced-server',
      FIXTURE_TLS_DEBUG: opts.tlsDebug ? '1' : '0',
      ...extraEnv,
      ...opts.env,
    },
  });
  const m = await proc.waitLine(/^\{"ready":true.*\}$/, 20_000);
  const ready = JSON.parse(m[0]) as ReadyLine;
  let holds = 0;

  const get = (path: string, headers?: Record<string, string>) =>
    new Promise<string>((resolveBody, reject) => {
      http
        .get({ host: '127.0.0.1', port: ready.port, path, headers, agent: false }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c) => (body += c));
          res.on('end', () => resolveBody(body));
        })
        .on('error', reject);
    });

  return {
    proc,
    pid: proc.pid,
    port: ready.port,
    ready,
    get,
    async hold(headers) {
      const n = ++holds;
      const response = get('/hold', headers);
      const line = await until(() => proc.lines.filter((l) => l.startsWith('{"held":true'))[n - 1], 10_000, 'the held request');
      return { ids: JSON.parse(line) as SpanIds, response };
    },
    release() {
      writeFileSync(fifo, 'x');
    },
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Polls `probe` until it returns a value. */
export async function until<T>(probe: () => T | undefined | Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + scaled(timeoutMs);
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Where the main thread's otel_thread_ctx_nodejs_v1 is, found the way the agent
 * finds it (TLS resolver, then fsbase + loc through /proc/PID/mem). The fsbase
 * comes from the fixture (debug path): BPF reads it from the task instead.
 */
export function resolveMainThreadTls(server: TracedServer): { address: bigint; resolution: TlsResolution } {
  if (!server.ready.fsbase) throw new Error('start the server with tlsDebug: true');
  const resolution = new TlsResolver().resolve(server.pid, {
    symbol: NODE_TLS_SYMBOL,
    scheme: KspanCtxScheme.KSPAN_SCHEME_NODEJS_V1,
  });
  if (!resolution) throw new Error(`no ${NODE_TLS_SYMBOL} in process ${server.pid}`);
  const at = withProcessMemory(server.pid, (mem) => tlsAddress(mem, Number(BigInt(server.ready.fsbase!)), resolution.loc));
  if (!at.ok) throw new Error(`TLS block not reachable: ${at.why}`);
  return { address: BigInt(at.address), resolution };
}

/** The main thread's active record, walked through /proc/PID/mem with the published layout. */
export function walkServer(server: TracedServer, tls: bigint): NodeWalkResult {
  const pc = readProcessContext(server.pid);
  if (!pc) throw new Error('no OTEL_CTX mapping');
  const layout = nodeLayoutFromProcessContext(pc.attributes);
  if (!layout.ok) throw new Error(layout.reason);
  return withProcessMemory(server.pid, (mem) => walkNodeContext(mem, tls, layout.layout));
}
