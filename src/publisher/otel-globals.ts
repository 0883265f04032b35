/**
 * Notices the application's global OpenTelemetry context manager and tracer
 * provider, whenever they are registered, without the application's code changing.
 *
 * @opentelemetry/api keeps its globals in one object at
 * globalThis[Symbol.for('opentelemetry.js.api.1')], shared by every copy of the
 * API package in the process (the app's own copy may differ from kspan's). We
 * watch for that object to be created, then for its `context` and `trace` entries
 * to be set. We never create the object ourselves: the API refuses to register
 * into an object created by another version.
 *
 * Limit: unregistering (`context.disable()`) deletes the entry and with it our
 * watch; a manager registered after that is not seen. Pass the manager to
 * startPublisher({ contextManager }) in that case.
 */
import type { ContextManager } from '@opentelemetry/api';

const API_KEY = Symbol.for('opentelemetry.js.api.1');
const kWatched = Symbol.for('kspan.publisher.watched');

type Registry = Record<string | symbol, unknown>;

export interface OtelGlobalsWatch {
  onContextManager(manager: ContextManager): void;
  /** The SDK's provider behind the API's ProxyTracerProvider, once it is set. */
  onTracerProvider(provider: object): void;
}

export function watchOtelGlobals(watch: OtelGlobalsWatch): void {
  const g = globalThis as unknown as Registry;
  const existing = g[API_KEY];
  if (existing && typeof existing === 'object') {
    watchRegistry(existing as Registry, watch);
    return;
  }
  const desc = Object.getOwnPropertyDescriptor(g, API_KEY);
  if (desc && !desc.configurable) return;
  let registry: unknown = existing;
  Object.defineProperty(g, API_KEY, {
    configurable: true,
    enumerable: false,
    get: () => registry,
    set: (value: unknown) => {
      registry = value;
      // Back to a plain property: the accessor is only needed until the object exists.
      Object.defineProperty(g, API_KEY, { value, writable: true, configurable: true, enumerable: false });
      if (value && typeof value === 'object') watchRegistry(value as Registry, watch);
    },
  });
}

/** Whether the application has a context manager registered in the API right now. */
export function contextManagerRegistered(): boolean {
  const registry = (globalThis as unknown as Registry)[API_KEY];
  return !!registry && typeof registry === 'object' && (registry as Registry).context !== undefined;
}

function watchRegistry(registry: Registry, watch: OtelGlobalsWatch): void {
  if (registry[kWatched] || !Object.isExtensible(registry)) return;
  Object.defineProperty(registry, kWatched, { value: true });
  watchEntry(registry, 'context', (m) => watch.onContextManager(m as ContextManager));
  // The API registers its ProxyTracerProvider first and sets the delegate after.
  watchEntry(registry, 'trace', (proxy) =>
    queueMicrotask(() => {
      const delegate = (proxy as { getDelegate?: () => object }).getDelegate?.();
      if (delegate) watch.onTracerProvider(delegate);
    }),
  );
}

function watchEntry(registry: Registry, key: string, onSet: (value: object) => void): void {
  const desc = Object.getOwnPropertyDescriptor(registry, key);
  if (desc && !desc.configurable) return;
  let current = registry[key] as object | undefined;
  if (current) onSet(current);
  Object.defineProperty(registry, key, {
    configurable: true,
    enumerable: true,
    get: () => current,
    set: (value: object | undefined) => {
      current = value;
      if (value) onSet(value);
    },
  });
}
