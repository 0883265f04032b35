/**
 * Encodes the OTEP 4719 payload: ProcessContext { resource = the service's
 * Resource attributes; attributes = the threadlocal.* keys that tell a reader which
 * thread-context scheme this process writes and how to name record attributes }.
 */
import { ProcessContextType, type PlainAnyValue, type PlainKeyValue } from '../proto/otlp.ts';

/** An attribute value as OpenTelemetry JS holds it. */
export type AttributeValue =
  | string
  | number
  | boolean
  | bigint
  | readonly (string | number | boolean | null | undefined)[]
  | null
  | undefined;

export type AttributeMap = Readonly<Record<string, AttributeValue>>;

export function toAnyValue(v: AttributeValue): PlainAnyValue | undefined {
  if (v === null || v === undefined) return undefined;
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (typeof v === 'bigint') return { intValue: v.toString() };
  if (typeof v === 'number') return Number.isSafeInteger(v) ? { intValue: v } : { doubleValue: v };
  if (Array.isArray(v)) {
    const values: PlainAnyValue[] = [];
    for (const item of v) values.push(toAnyValue(item as AttributeValue) ?? {});
    return { arrayValue: { values } };
  }
  return undefined;
}

export function toKeyValues(attrs: AttributeMap): PlainKeyValue[] {
  const out: PlainKeyValue[] = [];
  for (const [key, value] of Object.entries(attrs)) {
    const v = toAnyValue(value);
    if (v) out.push({ key, value: v });
  }
  return out;
}

export function encodeProcessContext(resource: AttributeMap, threadlocal: AttributeMap): Uint8Array {
  const message = ProcessContextType.fromObject({
    resource: { attributes: toKeyValues(resource) },
    attributes: toKeyValues(threadlocal),
  });
  return ProcessContextType.encode(message).finish();
}
