/**
 * protobufjs types for the opentelemetry-proto subset in otlp.proto. One place
 * for every decoder kspan needs: the OTEP 4719 process context payload (the
 * agent reads it; kspan/publisher writes it with src/export/proto-writer.ts, and
 * the tests hold those bytes equal to this encoder's) and OTLP trace export
 * requests (the tests' receiver).
 */
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

const root = protobuf.loadSync(fileURLToPath(new URL('./otlp.proto', import.meta.url)));

export const ProcessContextType = root.lookupType('opentelemetry.proto.ProcessContext');
export const ExportTraceServiceRequestType = root.lookupType(
  'opentelemetry.proto.ExportTraceServiceRequest',
);
export const ExportTraceServiceResponseType = root.lookupType(
  'opentelemetry.proto.ExportTraceServiceResponse',
);

/** A decoded AnyValue as plain JS: string, boolean, number, bigint-free. */
export type AttrValue = string | number | boolean | Uint8Array | AttrValue[] | null;

export interface PlainAnyValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: number | string;
  doubleValue?: number;
  arrayValue?: { values?: PlainAnyValue[] };
  kvlistValue?: { values?: PlainKeyValue[] };
  bytesValue?: Uint8Array;
}
export interface PlainKeyValue {
  key: string;
  value?: PlainAnyValue;
}

export function anyValueToJs(v: PlainAnyValue | undefined): AttrValue {
  if (!v) return null;
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  if (v.bytesValue !== undefined) return v.bytesValue;
  if (v.arrayValue) return (v.arrayValue.values ?? []).map(anyValueToJs);
  return null;
}

/** KeyValue list → plain object (the last value of a repeated key wins). */
export function attributesToObject(kvs: PlainKeyValue[] | undefined): Record<string, AttrValue> {
  const out: Record<string, AttrValue> = {};
  for (const kv of kvs ?? []) out[kv.key] = anyValueToJs(kv.value);
  return out;
}

/** Options for toObject() that keep 64-bit ints as strings and bytes as Uint8Array. */
export const TO_OBJECT = { longs: String, enums: Number, bytes: Uint8Array, defaults: false } as const;
