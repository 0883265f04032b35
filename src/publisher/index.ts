/**
 * kspan/publisher: makes a Node.js (>= 24) service that uses the OpenTelemetry JS
 * SDK readable by kspan.
 *
 * - It mirrors the active OTel span into @datadog/pprof's thread-context writer
 *   (scheme `nodejs_v1_dev`: an OTEP 4947 record reached through V8's
 *   AsyncContextFrame from the TLS struct `otel_thread_ctx_nodejs_v1`).
 * - It publishes the OTEP 4719 process context: the service's Resource and the
 *   `threadlocal.*` keys, in a mapping named OTEL_CTX.
 *
 * Zero code change: `node --import kspan/publisher/register app.mjs`.
 * Programmatic: `startPublisher()` (any time, before or after the SDK starts), and
 * optionally `new KspanSpanProcessor(publisher)` in the provider's span processors,
 * which hands over the Resource before the first span is active.
 *
 * Without AsyncContextFrame (`--no-async-context-frame`, old Node) it says so once
 * on stderr and changes nothing. When the service serves traffic but no span
 * ever becomes active (no SDK, or an ES module app without OpenTelemetry's loader
 * hook), it says so once too (./no-span-watch.ts).
 */
import { isMainThread } from 'node:worker_threads';
import type { Context, ContextManager } from '@opentelemetry/api';
import type { ReadableSpan, Span, SpanProcessor } from '@opentelemetry/sdk-trace';
import { ProcessContextMapping, type MappingKind } from './process-context-mapping.ts';
import { encodeProcessContext, type AttributeMap } from './process-context-payload.ts';
import { loadThreadContextWriter } from './pprof-writer.ts';
import { SpanMirror, type MirrorStats } from './span-mirror.ts';
import { contextManagerRegistered, watchOtelGlobals } from './otel-globals.ts';
import { NO_SPAN_WARNING_CODE, NoSpanWatch } from './no-span-watch.ts';

export interface PublisherOptions {
  /**
   * The Resource to publish until the SDK's own shows up on a span (a Resource
   * object, or a plain attribute map). Default: OTEL_SERVICE_NAME /
   * OTEL_RESOURCE_ATTRIBUTES and the SDK's defaults.
   */
  resource?: ResourceLike | AttributeMap;
  /** Wrap this context manager (default: every global one the app registers). */
  contextManager?: ContextManager;
  /** Names of record attribute keys (index = wire key); published as threadlocal.attribute_key_map. */
  attributeKeys?: string[];
  /** Publish the OTEP 4719 mapping (default true; main thread only). */
  processContext?: boolean;
  /** Where its warnings go, each with its code (default: process.emitWarning). */
  warn?: (message: string, code: string) => void;
  /**
   * When no span has become active this long after the start although the
   * service served traffic, say so once (and look again as often until then).
   * Default 10 000 ms; 0: never.
   */
  noSpanWarningMs?: number;
}

export interface ResourceLike {
  attributes: AttributeMap;
  asyncAttributesPending?: boolean;
  waitForAsyncAttributes?: () => Promise<void>;
}

export interface PublisherStats extends MirrorStats {
  processContextPublished: number;
  processContextFailures: number;
}

export interface Publisher {
  /** True when span contexts are being mirrored. */
  readonly active: boolean;
  /** Why the publisher declined, when it did. */
  readonly reason: string | undefined;
  /** Where the OTEL_CTX mapping is, once published. */
  readonly processContext: { address: bigint; kind: MappingKind } | undefined;
  readonly stats: PublisherStats;
  /** Wrap another context manager. */
  addContextManager(manager: ContextManager): void;
  /** Republish the process context with this Resource. */
  setResource(resource: ResourceLike | AttributeMap): void;
  /** Removes the OTEL_CTX mapping; mirroring stays installed. */
  stop(): void;
}

const kPublisher = Symbol.for('kspan.publisher.instance');
const WARNING_CODE = 'KSPAN_PUBLISHER_DECLINED';

class PublisherImpl implements Publisher {
  active = false;
  reason: string | undefined;
  readonly stats: PublisherStats;
  readonly #mirror: SpanMirror | undefined;
  readonly #threadlocal: AttributeMap = {};
  readonly #publishProcessContext: boolean;
  #mapping: ProcessContextMapping | undefined;
  #lastPayloadKey = '';
  #warn: (message: string, code: string) => void;
  #failureWarned = false;

  constructor(options: PublisherOptions) {
    this.#warn = options.warn ?? ((m, code) => process.emitWarning(m, { code }));
    this.#publishProcessContext = (options.processContext ?? true) && isMainThread;
    const loaded = loadThreadContextWriter(options.attributeKeys ?? []);
    const base = { contexts: 0, createFailures: 0, invalidated: 0, managers: 0, calls: 0, switches: 0 };
    if (!loaded.ok) {
      this.reason = loaded.reason;
      this.stats = { ...base, processContextPublished: 0, processContextFailures: 0 };
      this.#warn(`kspan/publisher is not publishing trace context: ${loaded.reason}. The application runs unchanged.`, WARNING_CODE);
      return;
    }
    this.#threadlocal = loaded.threadlocal;
    const mirror = new SpanMirror(loaded.writer, (resource) => this.setResource(resource as ResourceLike));
    this.#mirror = mirror;
    const stats = mirror.stats as PublisherStats;
    stats.processContextPublished = 0;
    stats.processContextFailures = 0;
    this.stats = stats;
    this.active = true;
    mirror.prime();
    this.setResource(options.resource ?? initialResource());
    if (options.contextManager) mirror.wrapManager(options.contextManager);
    watchOtelGlobals({
      onContextManager: (m) => {
        if (!options.contextManager) mirror.wrapManager(m);
      },
      onTracerProvider: (provider) => {
        const resource = providerResource(provider);
        if (resource) mirror.noteResource(resource);
      },
    });
    if (options.noSpanWarningMs !== 0) {
      new NoSpanWatch({
        state: () => ({ managers: mirror.stats.managers, contexts: mirror.stats.contexts, managerRegistered: contextManagerRegistered() }),
        warn: (m) => this.#warn(m, NO_SPAN_WARNING_CODE),
        afterMs: options.noSpanWarningMs,
      });
    }
  }

  get processContext() {
    return this.#mapping ? { address: this.#mapping.address, kind: this.#mapping.kind } : undefined;
  }

  addContextManager(manager: ContextManager): void {
    this.#mirror?.wrapManager(manager);
  }

  /** @internal SpanProcessor hooks. */
  spanStarted(span: { resource?: unknown }): void {
    if (span.resource !== undefined) this.#mirror?.noteResource(span.resource);
  }
  spanEnded(span: object): void {
    this.#mirror?.invalidate(span);
  }

  setResource(resource: ResourceLike | AttributeMap): void {
    if (!this.active || !this.#publishProcessContext) return;
    const r = resource as ResourceLike;
    const attrs: AttributeMap = isResourceLike(r) ? r.attributes : (resource as AttributeMap);
    this.#publish(attrs);
    if (isResourceLike(r) && r.asyncAttributesPending && typeof r.waitForAsyncAttributes === 'function') {
      r.waitForAsyncAttributes().then(
        () => this.#publish(r.attributes),
        () => undefined,
      );
    }
  }

  stop(): void {
    this.#mapping?.drop();
    this.#mapping = undefined;
    this.#lastPayloadKey = '';
  }

  #publish(resource: AttributeMap): void {
    let payload: Uint8Array;
    try {
      payload = encodeProcessContext(resource, this.#threadlocal);
    } catch (cause) {
      this.#failed(cause);
      return;
    }
    const key = Buffer.from(payload).toString('base64');
    if (key === this.#lastPayloadKey) return;
    try {
      if (this.#mapping?.fits(payload)) {
        this.#mapping.update(payload);
      } else {
        this.#mapping?.drop();
        this.#mapping = undefined;
        this.#mapping = ProcessContextMapping.publish(payload);
      }
      this.#lastPayloadKey = key;
      this.stats.processContextPublished++;
    } catch (cause) {
      this.#failed(cause);
    }
  }

  #failed(cause: unknown): void {
    this.stats.processContextFailures++;
    if (this.#failureWarned) return;
    this.#failureWarned = true;
    this.#warn(`kspan/publisher could not publish the process context (OTEL_CTX): ${(cause as Error).message}`, WARNING_CODE);
  }
}

/** The SDK keeps the provider's Resource in `_resource` (2.x, 3.x) or `resource` (1.x). */
function providerResource(provider: object): ResourceLike | undefined {
  const p = provider as { _resource?: unknown; resource?: unknown };
  const r = p._resource ?? p.resource;
  return isResourceLike(r) ? r : undefined;
}

function isResourceLike(r: unknown): r is ResourceLike {
  return !!r && typeof r === 'object' && 'attributes' in r && typeof (r as ResourceLike).attributes === 'object';
}

/** What the SDK would call the service before it is configured: env, then defaults. */
function initialResource(): AttributeMap {
  const attrs: Record<string, string> = {};
  for (const pair of (process.env.OTEL_RESOURCE_ATTRIBUTES ?? '').split(',')) {
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    try {
      attrs[decodeURIComponent(pair.slice(0, eq).trim())] = decodeURIComponent(pair.slice(eq + 1).trim());
    } catch {
      // A malformed pair is skipped, as the SDK's env detector does.
    }
  }
  const serviceName = process.env.OTEL_SERVICE_NAME?.trim();
  if (serviceName) attrs['service.name'] = serviceName;
  attrs['service.name'] ??= `unknown_service:${process.argv0}`;
  attrs['telemetry.sdk.language'] = 'nodejs';
  return attrs;
}

/**
 * Starts the publisher in this thread (idempotent: a second call returns the first
 * publisher, wrapping `options.contextManager` if one is given).
 */
export function startPublisher(options: PublisherOptions = {}): Publisher {
  const g = globalThis as unknown as Record<symbol, PublisherImpl | undefined>;
  const existing = g[kPublisher];
  if (existing) {
    if (options.contextManager) existing.addContextManager(options.contextManager);
    return existing;
  }
  const publisher = new PublisherImpl(options);
  Object.defineProperty(globalThis, kPublisher, { value: publisher, configurable: true });
  return publisher;
}

/**
 * Optional SpanProcessor: publishes the provider's Resource as soon as a span
 * starts, and invalidates a span's record when it ends (the publisher also does
 * that by itself by wrapping Span.end).
 */
export class KspanSpanProcessor implements SpanProcessor {
  readonly #publisher: PublisherImpl;

  constructor(publisher: Publisher = startPublisher()) {
    this.#publisher = publisher as PublisherImpl;
  }

  onStart(span: Span, _parentContext: Context): void {
    this.#publisher.spanStarted(span as unknown as { resource?: unknown });
  }

  onEnd(span: ReadableSpan): void {
    this.#publisher.spanEnded(span);
  }

  forceFlush(): Promise<void> {
    return Promise.resolve();
  }

  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}
