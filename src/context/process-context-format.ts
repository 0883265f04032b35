/**
 * The OTEP 4719 process context as data: the OTEL_CTX header, the
 * ProcessContext payload, the `threadlocal.*` keys that say how to read the
 * process's thread context (OTEP 4947), and the fallbacks a Resource is made of
 * when there is none (environment, cgroup). Pure: process-context.ts reads the
 * bytes from /proc and hands them here.
 */
import { KspanError } from '../core/errors.ts';
import {
  type AttrValue,
  type PlainKeyValue,
  ProcessContextType,
  TO_OBJECT,
  attributesToObject,
} from '../proto/otlp.ts';

export const OTEL_CTX_SIGNATURE = 'OTEL_CTX';
export const OTEL_CTX_VERSION = 2;
export const OTEL_CTX_HEADER_SIZE = 32;
/** The spec expects payloads "in the KB range"; anything past this is refused. */
export const OTEL_CTX_MAX_PAYLOAD = 1 << 20;

export type ResourceAttributes = Record<string, AttrValue>;

/** The OTEP 4947 settings a process publishes for its thread context. */
export interface ThreadLocalConfig {
  /** threadlocal.schema_version as published. */
  schemaVersion: string;
  /** Which reader applies: the native record, the Node walk, or none we know. */
  scheme: 'otel_thread_ctx_v1' | 'nodejs_v1_dev' | 'unsupported';
  /** threadlocal.attribute_key_map: index N names record key N. */
  keyMap: string[];
  /** Every threadlocal.* attribute, for schemes that need more (the Node offsets). */
  raw: Record<string, AttrValue>;
}

export interface ProcessContextInfo {
  pid: number;
  /** Where service.name came from. */
  source: 'process-context' | 'environment' | 'executable';
  /** The target's Resource: what its spans must carry. */
  resource: ResourceAttributes;
  /** ProcessContext.attributes (field 2): non-resource keys such as threadlocal.*. */
  attributes: ResourceAttributes;
  threadLocal: ThreadLocalConfig | null;
  /**
   * Set when an OTEL_CTX mapping exists but could not be used this time (being
   * updated, bad header, undecodable payload): read again later.
   */
  problem?: string;
  /** The header's published_at_ns: a changed value means re-read the Resource. */
  publishedAtNs?: bigint;
  /**
   * Where the OTEL_CTX header is mapped in the target, when it has one (also
   * when `problem` is set): readPublishedAt() watches it for republication.
   */
  mappingAddress?: number;
}

/** The OTEL_CTX mapping in /proc/PID/maps, if the process published one. */
export function findOtelCtxMapping<M extends { path: string }>(maps: M[]): M | undefined {
  return maps.find(
    (m) =>
      m.path === '[anon:OTEL_CTX]' ||
      m.path.startsWith('[anon_shmem:OTEL_CTX]') ||
      m.path === '/memfd:OTEL_CTX' ||
      m.path.startsWith('/memfd:OTEL_CTX '),
  );
}

export interface OtelCtxHeader {
  version: number;
  payloadSize: number;
  publishedAtNs: bigint;
  payload: number;
}

/** Checks and decodes the 32-byte header; returns why it is unusable otherwise. */
export function parseOtelCtxHeader(bytes: Uint8Array): OtelCtxHeader | { problem: string; retry: boolean } {
  if (bytes.length < OTEL_CTX_HEADER_SIZE) return { problem: 'header too short', retry: false };
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // The signature is written last on publication: absent means not yet published.
  if (b.toString('latin1', 0, 8) !== OTEL_CTX_SIGNATURE) return { problem: 'no OTEL_CTX signature (yet)', retry: true };
  const version = b.readUInt32LE(8);
  if (version !== OTEL_CTX_VERSION) return { problem: `unsupported OTEL_CTX version ${version}`, retry: false };
  const payloadSize = b.readUInt32LE(12);
  const publishedAtNs = b.readBigUInt64LE(16);
  const payload = b.readBigUInt64LE(24);
  if (publishedAtNs === 0n) return { problem: 'being updated (published_at_ns = 0)', retry: true };
  if (payloadSize > OTEL_CTX_MAX_PAYLOAD) return { problem: `payload of ${payloadSize} bytes exceeds ${OTEL_CTX_MAX_PAYLOAD}`, retry: false };
  if (payload === 0n || payload > 0x7fffffffffffn) return { problem: `payload pointer 0x${payload.toString(16)} is not a user address`, retry: false };
  return { version, payloadSize, publishedAtNs, payload: Number(payload) };
}

const ResourceType = ProcessContextType.root.lookupType('opentelemetry.proto.Resource');

/**
 * ProcessContext { Resource resource = 1; repeated KeyValue attributes = 2 } →
 * plain objects. Early drafts of OTEP 4719 published a bare Resource; such a
 * payload fails to decode as ProcessContext (wire types differ) and is then
 * read as a Resource.
 */
export function decodeProcessContextPayload(bytes: Uint8Array): { resource: ResourceAttributes; attributes: ResourceAttributes } {
  try {
    const msg = ProcessContextType.toObject(ProcessContextType.decode(bytes), TO_OBJECT) as {
      resource?: { attributes?: PlainKeyValue[] };
      attributes?: PlainKeyValue[];
    };
    return { resource: attributesToObject(msg.resource?.attributes), attributes: attributesToObject(msg.attributes) };
  } catch (err) {
    try {
      const res = ResourceType.toObject(ResourceType.decode(bytes), TO_OBJECT) as { attributes?: PlainKeyValue[] };
      return { resource: attributesToObject(res.attributes), attributes: {} };
    } catch {
      throw new KspanError('KSPAN_ERR_PROCESS_CONTEXT', `undecodable OTEL_CTX payload: ${(err as Error).message}`, { cause: err });
    }
  }
}

const NATIVE_SCHEMAS = new Set(['tls_v1', 'tlsdesc_v1_dev']);

/**
 * The threadlocal.* keys, looked up in ProcessContext.attributes first (where
 * the spec puts them), then in the Resource (where early writers put them).
 */
export function threadLocalConfig(attributes: ResourceAttributes, resource: ResourceAttributes = {}): ThreadLocalConfig | null {
  const raw: Record<string, AttrValue> = {};
  for (const src of [resource, attributes]) {
    for (const [k, v] of Object.entries(src)) if (k.startsWith('threadlocal.')) raw[k] = v;
  }
  const schema = raw['threadlocal.schema_version'];
  if (typeof schema !== 'string') return null;
  const map = raw['threadlocal.attribute_key_map'];
  const keyMap = Array.isArray(map) ? map.map((k) => (typeof k === 'string' ? k : String(k))) : [];
  const scheme = NATIVE_SCHEMAS.has(schema) ? 'otel_thread_ctx_v1' : schema === 'nodejs_v1_dev' ? 'nodejs_v1_dev' : 'unsupported';
  return { schemaVersion: schema, scheme, keyMap, raw };
}

/** service.name of a target nothing is known about (OpenTelemetry's default). */
export const UNKNOWN_SERVICE_NAME = 'unknown_service';

/** The Resource of a target that cannot be read, or that a recording does not describe. */
export function unknownTargetResource(pid: number): ResourceAttributes {
  return { 'service.name': UNKNOWN_SERVICE_NAME, 'process.pid': pid };
}

/** Parses NUL-separated KEY=VALUE pairs (/proc/PID/environ). */
export function parseEnviron(bytes: Uint8Array): Map<string, string> {
  const env = new Map<string, string>();
  for (const entry of Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8').split('\0')) {
    const eq = entry.indexOf('=');
    if (eq > 0) env.set(entry.slice(0, eq), entry.slice(eq + 1));
  }
  return env;
}

/** OTEL_RESOURCE_ATTRIBUTES: comma-separated key=value, values percent-encoded (W3C Baggage style). */
export function parseResourceAttributesEnv(value: string): ResourceAttributes {
  const out: ResourceAttributes = {};
  for (const part of value.split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) continue;
    const key = part.slice(0, eq).trim();
    let val = part.slice(eq + 1).trim();
    try {
      val = decodeURIComponent(val);
    } catch {
      // keep the raw value: a stray % is not worth dropping the attribute
    }
    if (key) out[key] = val;
  }
  return out;
}
