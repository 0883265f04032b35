/**
 * Mirrors the active OpenTelemetry span into the pprof thread-context writer.
 *
 * Every OTel context switch goes through ContextManager.with() (context.with(),
 * bound callbacks and event emitters all land there). Wrapping it keeps the
 * writer's AsyncLocalStorage equal to "the ThreadContext of the active span" for
 * exactly the same scope, and AsyncContextFrame carries both stores to the same
 * continuations afterwards at no cost of ours.
 *
 * The writer's store is switched with enterWith() before the call and restored
 * after it, mirroring what AsyncLocalStorage.run() does under AsyncContextFrame.
 * (Calling enter() *inside* OTel's run() would leak: its finally re-enters the
 * prior OTel store on a copy of the frame that still holds ours.)
 *
 * One ThreadContext per span, created the first time the span becomes active and
 * cached on the span; span.end() invalidates its record (valid = 0), so frames that
 * still hold it stop reporting a finished span.
 */
import { trace, type Context, type ContextManager, type Span } from '@opentelemetry/api';
import type { ThreadContext, ThreadContextWriter } from './pprof-writer.ts';

const kThreadContext = Symbol.for('kspan.publisher.threadContext');
const kEndHooked = Symbol.for('kspan.publisher.endHooked');
const kMirrored = Symbol.for('kspan.publisher.mirrored');

export interface MirrorStats {
  /** ThreadContexts created (one per span that became active). */
  contexts: number;
  /** Spans whose ThreadContext could not be created (their context is not published). */
  createFailures: number;
  /** Records invalidated because their span ended. */
  invalidated: number;
  /** Context managers wrapped. */
  managers: number;
  /** with()/attach() calls seen, and how many of them switched the writer's store. */
  calls: number;
  switches: number;
}

type SpanWithCache = Span & { [kThreadContext]?: ThreadContext | null; resource?: unknown; ended?: boolean };

interface TokenLike {
  dispose(): void;
}

export class SpanMirror {
  readonly stats: MirrorStats = { contexts: 0, createFailures: 0, invalidated: 0, managers: 0, calls: 0, switches: 0 };
  readonly #writer: ThreadContextWriter;
  readonly #onResource: (resource: unknown) => void;
  /** Spans that cannot carry a property (frozen): their contexts live here. */
  readonly #sideTable = new WeakMap<object, ThreadContext | null>();
  #lastResource: unknown;

  constructor(writer: ThreadContextWriter, onResource: (resource: unknown) => void) {
    this.#writer = writer;
    this.#onResource = onResource;
  }

  /** Installs the writer's hook now, so the TLS struct is filled before the first span. */
  prime(): void {
    const tc = new this.#writer.ThreadContext(new Uint8Array(16), new Uint8Array(8), 0);
    tc.invalidate();
    tc.run(() => undefined);
  }

  /** The ThreadContext of the span active in `ctx`, or undefined when none may be published. */
  contextFor(ctx: Context): ThreadContext | undefined {
    const span = trace.getSpan(ctx) as SpanWithCache | undefined;
    if (span === undefined) return undefined;
    const cached = this.#lookup(span);
    if (cached !== undefined) return cached ?? undefined;
    return this.#create(span) ?? undefined;
  }

  /** The span ended: its record must stop being reported, wherever a frame still holds it. */
  invalidate(span: object): void {
    const tc = this.#lookup(span as SpanWithCache);
    if (tc) {
      tc.invalidate();
      this.stats.invalidated++;
    }
  }

  /** Sees a span's Resource (SpanProcessor.onStart), before it is first active. */
  noteResource(resource: unknown): void {
    if (resource && resource !== this.#lastResource) {
      this.#lastResource = resource;
      this.#onResource(resource);
    }
  }

  /** Wraps with() (and attach(), where present) of a context manager, once. */
  wrapManager(manager: ContextManager): void {
    const m = manager as ContextManager & { [kMirrored]?: boolean; attach?: (ctx: Context) => TokenLike };
    if (m[kMirrored]) return;
    Object.defineProperty(m, kMirrored, { value: true });
    this.stats.managers++;
    const mirror = this;
    const writer = this.#writer;
    const originalWith = m.with;
    const stats = this.stats;
    // Plain function (not arrow): keeps `this` and `arguments` as the caller passed them.
    m.with = function kspanMirroredWith(this: ContextManager, ctx: Context) {
      stats.calls++;
      const tc = mirror.contextFor(ctx);
      const prior = writer.getContext();
      if (tc === prior) return originalWith.apply(this, arguments as never);
      stats.switches++;
      if (tc) tc.enter();
      else writer.clearContext();
      try {
        return originalWith.apply(this, arguments as never);
      } finally {
        if (prior) prior.enter();
        else writer.clearContext();
      }
    } as ContextManager['with'];

    const originalAttach = m.attach;
    if (typeof originalAttach === 'function') {
      m.attach = function kspanMirroredAttach(this: ContextManager, ctx: Context): TokenLike {
        stats.calls++;
        const prior = writer.getContext();
        const token = originalAttach.call(this, ctx);
        const tc = mirror.contextFor(ctx);
        if (tc !== prior) {
          if (tc) tc.enter();
          else writer.clearContext();
        }
        let disposed = false;
        const dispose = () => {
          if (disposed) return;
          disposed = true;
          token.dispose();
          if (prior) prior.enter();
          else writer.clearContext();
        };
        return { dispose, [Symbol.dispose]: dispose } as TokenLike;
      };
    }
  }

  /** undefined: never seen; null: seen, nothing to publish. */
  #lookup(span: SpanWithCache): ThreadContext | null | undefined {
    const v = span[kThreadContext];
    if (v !== undefined) return v;
    return Object.isExtensible(span) ? undefined : this.#sideTable.get(span);
  }

  #create(span: SpanWithCache): ThreadContext | null {
    let tc: ThreadContext | null = null;
    const sc = span.spanContext();
    // Remote parents are another service's spans; an ended span has nothing to publish.
    if (validIds(sc.traceId, sc.spanId) && !sc.isRemote && span.ended !== true) {
      try {
        hexInto(sc.traceId, ID_TRACE);
        hexInto(sc.spanId, ID_SPAN);
        tc = new this.#writer.ThreadContext(ID_TRACE, ID_SPAN, sc.traceFlags & 0xff);
        this.stats.contexts++;
        this.#hookEnd(span);
      } catch {
        this.stats.createFailures++;
        tc = null;
      }
    }
    if (Object.isExtensible(span)) {
      // A plain symbol-keyed property: invisible to JSON and Object.keys, and cheap.
      span[kThreadContext] = tc;
    } else {
      this.#sideTable.set(span, tc);
    }
    if (span.resource !== undefined) this.noteResource(span.resource);
    return tc;
  }

  /** Wraps end() once per span class (or per span when end is an own property). */
  #hookEnd(span: SpanWithCache): void {
    const owner = Object.hasOwn(span, 'end') ? span : Object.getPrototypeOf(span);
    if (!owner || Object.hasOwn(owner, kEndHooked) || typeof owner.end !== 'function') return;
    if (!Object.isExtensible(owner)) return;
    const mirror = this;
    const originalEnd = owner.end as (...args: unknown[]) => unknown;
    Object.defineProperty(owner, kEndHooked, { value: true });
    owner.end = function kspanEnd(this: object) {
      mirror.invalidate(this);
      return originalEnd.apply(this, arguments as never);
    };
  }
}

const INVALID_TRACE_ID = '0'.repeat(32);
const INVALID_SPAN_ID = '0'.repeat(16);

/**
 * isSpanContextValid without its regexes (they cost more than the rest of the
 * check): ids come from the SDK's generator or a propagator that validated them.
 */
function validIds(traceId: string, spanId: string): boolean {
  return traceId.length === 32 && spanId.length === 16 && traceId !== INVALID_TRACE_ID && spanId !== INVALID_SPAN_ID;
}

const HEX = new Uint8Array(128).fill(255);
for (let i = 0; i < 10; i++) HEX[48 + i] = i;
for (let i = 0; i < 6; i++) HEX[97 + i] = HEX[65 + i] = 10 + i;

/**
 * Scratch ids handed to the writer, which copies them at once. Views of an
 * explicit ArrayBuffer: its backing store is already off the V8 heap, so the
 * addon's Buffer()/GetBackingStore() does not have to move a small on-heap
 * typed array out first (that cost more than the rest of the constructor).
 */
const ID_SCRATCH = new ArrayBuffer(24);
const ID_TRACE = new Uint8Array(ID_SCRATCH, 0, 16);
const ID_SPAN = new Uint8Array(ID_SCRATCH, 16, 8);

export function hexInto(hex: string, out: Uint8Array): Uint8Array {
  for (let i = 0; i < out.length; i++) {
    out[i] = (HEX[hex.charCodeAt(2 * i) & 127] << 4) | HEX[hex.charCodeAt(2 * i + 1) & 127];
  }
  return out;
}

/** Hex id → bytes. */
export function hexBytes(hex: string): Uint8Array {
  return hexInto(hex, new Uint8Array(hex.length >> 1));
}
