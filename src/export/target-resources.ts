/**
 * One OpenTelemetry Resource object per target process (the exporter groups
 * spans into ResourceSpans by object identity), built from the target's own
 * process context (OTEP 4719), its environment, or its executable name.
 */
import type { AttributeValue, Attributes } from '@opentelemetry/api';
import { resourceFromAttributes, type Resource } from '@opentelemetry/resources';
import { readProcessContext } from '../context/process-context.ts';
import { unknownTargetResource } from '../context/process-context-format.ts';

function toAttributeValue(v: unknown): AttributeValue | undefined {
  if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return v;
  if (Array.isArray(v)) {
    const prim = v.filter((x) => typeof x === 'string' || typeof x === 'number' || typeof x === 'boolean');
    if (prim.length === v.length && prim.every((x) => typeof x === typeof prim[0])) return prim as AttributeValue;
  }
  return undefined;
}

/** Plain attributes (e.g. from a process context) → OTel attributes; unrepresentable values dropped. */
export function toAttributes(attrs: Record<string, unknown>): Attributes {
  const out: Attributes = {};
  for (const [k, v] of Object.entries(attrs)) {
    const a = toAttributeValue(v);
    if (a !== undefined) out[k] = a;
  }
  return out;
}

export class TargetResources {
  readonly #cache = new Map<number, Resource>();
  readonly #attrs = new Map<number, Record<string, unknown>>();
  readonly #lookup: (pid: number) => Record<string, unknown> | undefined;

  /** `lookup`: the attributes already known for a pid (e.g. from the thread-context reader). */
  constructor(lookup: (pid: number) => Record<string, unknown> | undefined = () => undefined) {
    this.#lookup = lookup;
  }

  /** Sets (or replaces) a target's attributes; later spans get a new Resource object. */
  set(pid: number, attrs: Record<string, unknown>): void {
    this.#attrs.set(pid, attrs);
    this.#cache.delete(pid);
  }

  attributes(pid: number): Record<string, unknown> {
    let a = this.#attrs.get(pid);
    if (a) return a;
    a = this.#lookup(pid);
    if (!a) {
      try {
        a = readProcessContext(pid).resource;
      } catch {
        a = unknownTargetResource(pid);
      }
    }
    this.#attrs.set(pid, a);
    return a;
  }

  resourceFor(pid: number): Resource {
    let r = this.#cache.get(pid);
    if (!r) {
      r = resourceFromAttributes(toAttributes(this.attributes(pid)));
      this.#cache.set(pid, r);
    }
    return r;
  }

  /** Attributes of every known target, keyed by pid (for record-file headers). */
  snapshot(): Record<string, Record<string, unknown>> {
    return Object.fromEntries([...this.#attrs].map(([pid, a]) => [String(pid), a]));
  }
}
