/**
 * The function-span fixtures (test/fixtures/uprobes/): built at test time, and
 * their lines parsed.
 */
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
