/** The C TCP server/client fixtures (test/fixtures/tcp), built at test time. */
import { join } from 'node:path';
import { buildFixture, INCLUDE_FLAG, THREAD_CTX_HEADER } from './build-fixture.ts';
import type { Proc, ProcessGroup } from './processes.ts';

let dir: string | undefined;

export function tcpFixtureDir(): string {
  dir ??= buildFixture({
    name: 'tcp',
    sources: ['test/fixtures/tcp/server.c', 'test/fixtures/tcp/client.c', 'test/fixtures/tcp/io.h'],
    steps: [
      { out: 'server', cmd: ['gcc', '-O2', '-Wall', '{server.c}', '-o', 'server'] },
      { out: 'client', cmd: ['gcc', '-O2', '-Wall', '{client.c}', '-o', 'client'] },
    ],
  });
  return dir;
}

let connLoopDir: string | undefined;

/** test/fixtures/tcp/conn_loop.c: rounds of many short connections, one after another (bursts, churn). */
export function connLoopPath(): string {
  connLoopDir ??= buildFixture({
    name: 'conn-loop',
    sources: ['test/fixtures/tcp/conn_loop.c', 'test/fixtures/tcp/io.h'],
    steps: [{ out: 'conn_loop', cmd: ['gcc', '-O2', '-Wall', '-Wno-unused-function', '{conn_loop.c}', '-o', 'conn_loop'] }],
  });
  return join(connLoopDir, 'conn_loop');
}

export interface Server {
  proc: Proc;
  port: number;
}

/** Starts the server (listening, not yet accepting: call go()). `netns` runs it inside one. */
export async function startServer(group: ProcessGroup, args: string[], netns?: string): Promise<Server> {
  const bin = join(tcpFixtureDir(), 'server');
  const proc = netns ? group.start('ip', ['netns', 'exec', netns, bin, ...args]) : group.start(bin, args);
  const m = await proc.waitLine(/^port (\d+)$/);
  return { proc, port: Number(m[1]) };
}

/** Starts the client; it connects when sent a line. */
export function startClient(group: ProcessGroup, args: string[], netns?: string): Proc {
  const bin = join(tcpFixtureDir(), 'client');
  return netns ? group.start('ip', ['netns', 'exec', netns, bin, ...args]) : group.start(bin, args);
}

let tracedDir: string | undefined;

/** The traced server (test/fixtures/tcp/traced_server.c): publishes otel_thread_ctx_v1 per request. */
export function tracedServerPath(): string {
  tracedDir ??= buildFixture({
    name: 'traced-server',
    sources: ['test/fixtures/tcp/traced_server.c', 'test/fixtures/tcp/io.h', 'test/fixtures/tls/otel_ctx_writer.c', THREAD_CTX_HEADER],
    steps: [
      {
        out: 'traced_server',
        cmd: ['gcc', '-O2', '-Wall', '-rdynamic', INCLUDE_FLAG, '{traced_server.c}', '{otel_ctx_writer.c}', '-o', 'traced_server'],
      },
    ],
  });
  return join(tracedDir, 'traced_server');
}

export interface AppSpan {
  traceId: string;
  spanId: string;
  parentId: string;
  startNs: bigint;
  endNs: bigint;
}

export function parseAppSpan(line: string): AppSpan | undefined {
  const m = /^span ([0-9a-f]{32}) ([0-9a-f]{16}) ([0-9a-f]{16}) (\d+) (\d+)$/.exec(line);
  return m ? { traceId: m[1], spanId: m[2], parentId: m[3], startNs: BigInt(m[4]), endNs: BigInt(m[5]) } : undefined;
}
