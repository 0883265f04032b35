/**
 * The thread-context writer we mirror spans into: @datadog/pprof's ThreadContext
 * (`nodejs_v1_dev`). It keeps an OTEP 4947 record behind a JS wrapper stored in its
 * own AsyncLocalStorage, so V8's AsyncContextFrame carries it across async hops and
 * an outside reader walks to it from the `otel_thread_ctx_nodejs_v1` TLS struct of
 * the addon. Only its otel-thread-ctx module is loaded, not the profilers.
 */
import { createRequire } from 'node:module';

export interface ThreadContext {
  invalidate(): void;
  setTraceFlags(flags: number): void;
  enter(): void;
  run<T>(fn: () => T): T;
  debugBytes(): Uint8Array;
}

export interface ThreadContextWriter {
  ThreadContext: new (
    traceId: Uint8Array,
    spanId: Uint8Array,
    traceFlags?: number,
    attributes?: Array<string | null | undefined>,
  ) => ThreadContext;
  getContext(): ThreadContext | undefined;
  clearContext(): void;
  getProcessContextAttributes(keys: string[]): {
    readonly 'threadlocal.schema_version': string;
    readonly 'threadlocal.attribute_key_map': readonly string[];
  };
}

export type WriterLoad =
  | { ok: true; writer: ThreadContextWriter; threadlocal: Record<string, string | readonly string[]> }
  | { ok: false; reason: string };

const require = createRequire(import.meta.url);

function loadModule(): ThreadContextWriter {
  try {
    return require('@datadog/pprof/out/src/otel-thread-ctx.js') as ThreadContextWriter;
  } catch {
    return (require('@datadog/pprof') as { otelThreadCtx: ThreadContextWriter }).otelThreadCtx;
  }
}

/**
 * Loads the writer and asks it whether this Node can publish (AsyncContextFrame
 * active, V8 layout as the addon expects). Feature-detected by the writer itself,
 * never from argv or the Node version.
 */
export function loadThreadContextWriter(attributeKeys: string[]): WriterLoad {
  if (process.platform !== 'linux') return { ok: false, reason: 'the thread-context reader contract is Linux-only' };
  let writer: ThreadContextWriter;
  try {
    writer = loadModule();
  } catch (cause) {
    return { ok: false, reason: `@datadog/pprof could not be loaded: ${(cause as Error).message}` };
  }
  if (typeof writer?.ThreadContext !== 'function' || typeof writer.getProcessContextAttributes !== 'function') {
    return { ok: false, reason: 'this @datadog/pprof has no otel thread-context writer (5.16 or later is needed)' };
  }
  try {
    const attrs = writer.getProcessContextAttributes(attributeKeys);
    return { ok: true, writer, threadlocal: { ...attrs } };
  } catch (cause) {
    return { ok: false, reason: (cause as Error).message };
  }
}
