/**
 * The target's own Resource, from the OTEP 4719 process context it publishes
 * (a mapping named OTEL_CTX holding a header and a protobuf ProcessContext),
 * with fallbacks: OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES from its
 * environment, then its executable name. Also the `threadlocal.*` keys that say
 * how to read its thread context (OTEP 4947), and the decoder for the
 * attributes of a thread-context record.
 *
 * The parsing and decoding functions are pure; readProcessContext is the one
 * that reads /proc/PID/{maps,mem,environ,exe,cgroup}.
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename } from 'node:path';
import { KspanError } from '../core/errors.ts';
import {
  type AttrValue,
  type PlainKeyValue,
  ProcessContextType,
  TO_OBJECT,
  attributesToObject,
} from '../proto/otlp.ts';
import { type Mapping, readProcMaps } from './proc-maps.ts';
import { ProcMemError, ProcessMemory, procFailure } from './proc-mem.ts';

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

/* ---------------------------------------------------------------- pure parts */

/** The OTEL_CTX mapping in /proc/PID/maps, if the process published one. */
export function findOtelCtxMapping(maps: Mapping[]): Mapping | undefined {
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
      throw err;
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

/**
 * The container id from /proc/PID/cgroup: the last 64-hex-digit id in a cgroup
 * path (docker-<id>.scope, /docker/<id>, cri-containerd-<id>.scope, crio-<id>,
 * /kubepods/.../<id>). Undefined outside containers.
 */
export function containerIdFromCgroup(text: string): string | undefined {
  for (const line of text.split('\n')) {
    const path = line.split(':').slice(2).join(':');
    const ids = path.match(/[0-9a-f]{64}/g);
    if (ids) return ids[ids.length - 1];
  }
  return undefined;
}

export interface RecordAttributes {
  attributes: Record<string, string>;
  /** Entries whose key index is not in the key map (kept out of `attributes`). */
  unknownKeys: number;
  /** The data ended inside an entry. */
  truncated: boolean;
}

/**
 * Decodes the attributes of an OTEP 4947 record ({key u8, len u8, val[len]}…)
 * with the process's key map. A repeated key: the last one wins.
 */
export function decodeRecordAttributes(bytes: Uint8Array, keyMap: readonly string[]): RecordAttributes {
  const attributes: Record<string, string> = {};
  let unknownKeys = 0;
  let i = 0;
  while (i < bytes.length) {
    if (i + 2 > bytes.length) return { attributes, unknownKeys, truncated: true };
    const key = bytes[i];
    const len = bytes[i + 1];
    if (i + 2 + len > bytes.length) return { attributes, unknownKeys, truncated: true };
    const name = keyMap[key];
    const value = Buffer.from(bytes.buffer, bytes.byteOffset + i + 2, len).toString('utf8');
    if (name === undefined) unknownKeys++;
    else attributes[name] = value;
    i += 2 + len;
  }
  return { attributes, unknownKeys, truncated: false };
}

/* -------------------------------------------------------------- /proc reader */

export interface ReadProcessContextOptions {
  /** host.name to report (default: this machine's hostname). */
  hostName?: string;
  /** Header re-reads when the writer is mid-update (default 5). */
  attempts?: number;
}

/** Reads the target's Resource and thread-local config. Throws only when the process is unreadable. */
export function readProcessContext(pid: number, opts: ReadProcessContextOptions = {}): ProcessContextInfo {
  let maps: Mapping[];
  let exePath: string | undefined;
  try {
    maps = readProcMaps(pid);
  } catch (err) {
    throw processError(pid, err);
  }
  try {
    exePath = readlinkSync(`/proc/${pid}/exe`).replace(/ \(deleted\)$/, '');
  } catch (err) {
    if (procFailure(err) === 'gone') throw processError(pid, err);
    exePath = undefined; // kernel threads, or exe hidden from us
  }
  const exeName = exePath ? basename(exePath) : readOptional(`/proc/${pid}/comm`)?.trim() ?? `pid-${pid}`;

  const detected: ResourceAttributes = {
    'process.pid': pid,
    'process.executable.name': exeName,
    'host.name': opts.hostName ?? hostname(),
  };
  if (exePath) detected['process.executable.path'] = exePath;
  const cgroup = readOptional(`/proc/${pid}/cgroup`);
  const containerId = cgroup ? containerIdFromCgroup(cgroup) : undefined;
  if (containerId) detected['container.id'] = containerId;

  let problem: string | undefined;
  const mapping = findOtelCtxMapping(maps);
  if (mapping) {
    const got = readPublished(pid, mapping, opts.attempts ?? 5);
    if ('problem' in got) problem = got.problem;
    else {
      const resource = { ...detected, ...got.resource };
      // The published Resource wins, except for what only we can know for sure.
      resource['process.pid'] = pid;
      if (typeof resource['service.name'] !== 'string' || resource['service.name'] === '') {
        resource['service.name'] = exeName;
      }
      return {
        pid,
        source: 'process-context',
        resource,
        attributes: got.attributes,
        threadLocal: threadLocalConfig(got.attributes, got.resource),
        publishedAtNs: got.publishedAtNs,
        mappingAddress: mapping.start,
      };
    }
  }

  const env = parseEnviron(readOptionalBytes(`/proc/${pid}/environ`) ?? new Uint8Array(0));
  const resource: ResourceAttributes = { ...detected };
  const fromEnv = env.get('OTEL_RESOURCE_ATTRIBUTES');
  if (fromEnv) Object.assign(resource, parseResourceAttributesEnv(fromEnv));
  resource['process.pid'] = pid;
  const serviceName = env.get('OTEL_SERVICE_NAME');
  if (serviceName) resource['service.name'] = serviceName;
  const source = typeof resource['service.name'] === 'string' && resource['service.name'] !== '' ? 'environment' : 'executable';
  if (source === 'executable') resource['service.name'] = exeName;
  return {
    pid,
    source,
    resource,
    attributes: {},
    threadLocal: null,
    ...(problem ? { problem } : {}),
    ...(mapping ? { mappingAddress: mapping.start } : {}),
  };
}

/**
 * The published_at_ns of the OTEL_CTX header at `address` in process `pid`: a
 * 32-byte read, cheap enough for every refresh. A writer may republish in place
 * (same mapping, new payload), which /proc/PID/maps does not show; a changed
 * value says the Resource must be read again. 0n while the writer is updating;
 * undefined when the header is gone or no longer one (unmapped, signature).
 */
export function readPublishedAt(pid: number, address: number): bigint | undefined {
  let mem: ProcessMemory;
  try {
    mem = new ProcessMemory(pid);
  } catch (err) {
    if (err instanceof ProcMemError && err.reason === 'gone') return undefined;
    throw processError(pid, err);
  }
  try {
    const header = mem.read(address, OTEL_CTX_HEADER_SIZE);
    if (header.toString('latin1', 0, 8) !== OTEL_CTX_SIGNATURE) return undefined;
    return header.readBigUInt64LE(16);
  } catch (err) {
    if (err instanceof ProcMemError && (err.reason === 'unmapped' || err.reason === 'gone')) return undefined;
    throw processError(pid, err);
  } finally {
    mem.close();
  }
}

type Published =
  | { resource: ResourceAttributes; attributes: ResourceAttributes; publishedAtNs: bigint }
  | { problem: string };

function readPublished(pid: number, mapping: Mapping, attempts: number): Published {
  let mem: ProcessMemory;
  try {
    mem = new ProcessMemory(pid);
  } catch (err) {
    throw processError(pid, err);
  }
  try {
    let last = 'not read';
    for (let i = 0; i < attempts; i++) {
      let header: ReturnType<typeof parseOtelCtxHeader>;
      let payload: Buffer;
      try {
        header = parseOtelCtxHeader(mem.read(mapping.start, OTEL_CTX_HEADER_SIZE));
        if ('problem' in header) {
          last = header.problem;
          if (header.retry) continue;
          return { problem: last };
        }
        payload = mem.read(header.payload, header.payloadSize);
        // Unchanged timestamp after the copy: header and payload belong together.
        const after = mem.readU64(mapping.start + 16);
        if (after !== header.publishedAtNs) {
          last = 'updated while being read';
          continue;
        }
      } catch (err) {
        if (err instanceof ProcMemError && err.reason === 'unmapped') {
          // The payload may have been freed by an update under way: try again.
          last = err.message;
          continue;
        }
        throw processError(pid, err);
      }
      try {
        return { ...decodeProcessContextPayload(payload), publishedAtNs: header.publishedAtNs };
      } catch (err) {
        return { problem: `undecodable payload: ${(err as Error).message}` };
      }
    }
    return { problem: `${last} after ${attempts} attempts` };
  } finally {
    mem.close();
  }
}

function readOptional(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function readOptionalBytes(path: string): Uint8Array | undefined {
  try {
    return readFileSync(path);
  } catch {
    return undefined;
  }
}

function processError(pid: number, err: unknown): Error {
  const reason = err instanceof ProcMemError ? err.reason : procFailure(err);
  if (reason === 'gone' || reason === 'permission') {
    return new KspanError(
      'KSPAN_ERR_PROCESS_CONTEXT',
      reason === 'gone' ? `process ${pid} exited` : `cannot read process ${pid}'s /proc files`,
      {
        hint: reason === 'permission' ? 'run as root, or grant CAP_SYS_PTRACE' : undefined,
        cause: err,
        details: { pid, reason },
      },
    );
  }
  return err instanceof Error ? err : new Error(String(err));
}
