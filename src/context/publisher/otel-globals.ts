/**
 * Notices the application's global OpenTelemetry context manager, whenever it is
 * registered, without the application's code changing.
 *
 * @opentelemetry/api keeps its globals in one object at
 * globalThis[Symbol.for('opentelemetry.js.api.1')], shared by every copy of the
 * API package in the process (the app's own copy may differ from kspan's). We
 * watch for that object to be created, then for its `context` entry to be set, and
 * hand each manager to `onManager`. We never create the object ourselves: the API
 * refuses to register into an object created by another version.
 *
 * Limit: unregistering (`context.disable()`) deletes the entry and with it our
 * watch; a manager registered after that is not seen. Pass the manager to
 * startPublisher({ contextManager }) in that case.
 */
import type { ContextManager } from '@opentelemetry/api';

const API_KEY = Symbol.for('opentelemetry.js.api.1');
const kWatched = Symbol.for('kspan.publisher.watched');

type Registry = Record<string | symbol, unknown>;

export function watchGlobalContextManager(onManager: (manager: ContextManager) => void): void {
  const g = globalThis as unknown as Registry;
  const existing = g[API_KEY];
  if (existing && typeof existing === 'object') {
    watchRegistry(existing as Registry, onManager);
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
      if (value && typeof value === 'object') watchRegistry(value as Registry, onManager);
    },
  });
}

function watchRegistry(registry: Registry, onManager: (manager: ContextManager) => void): void {
  if (registry[kWatched]) return;
  const desc = Object.getOwnPropertyDescriptor(registry, 'context');
  if (desc && !desc.configurable) return;
  if (!Object.isExtensible(registry)) return;
  Object.defineProperty(registry, kWatched, { value: true });
  let current = registry.context as ContextManager | undefined;
  if (current) onManager(current);
  Object.defineProperty(registry, 'context', {
    configurable: true,
    enumerable: true,
    get: () => current,
    set: (manager: ContextManager | undefined) => {
      current = manager;
      if (manager) onManager(manager);
    },
  });
}
