/**
 * The attributes a target published in its thread-context record (OTEP 4947),
 * as span attributes: names from the process's threadlocal.attribute_key_map,
 * values as strings. Pure.
 */
import type { Attributes } from '@opentelemetry/api';
import { decodeRecordAttributes } from '../context/record-attributes.ts';
import type { TraceContext } from '../records/kernel-record.ts';

/**
 * Span attributes from a context's record attributes, or undefined when it has
 * none. What cannot be named or was cut is not dropped silently: entries whose
 * key the map lacks are counted in `kspan.context.unknown_attribute_keys`, and a
 * record longer than the kernel copies (or cut mid-entry) sets
 * `kspan.context.attributes_truncated`.
 */
export function contextAttributes(ctx: TraceContext | null, keyMap: readonly string[] | undefined): Attributes | undefined {
  if (!ctx?.attributes) return undefined;
  const decoded = decodeRecordAttributes(ctx.attributes, keyMap ?? []);
  const out: Attributes = decoded.attributes;
  if (decoded.unknownKeys) out['kspan.context.unknown_attribute_keys'] = decoded.unknownKeys;
  if (decoded.truncated || ctx.attributesTruncated) out['kspan.context.attributes_truncated'] = true;
  return out;
}
