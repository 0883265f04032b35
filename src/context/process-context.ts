/**
 * The target's own Resource, from the OTEP 4719 process context it publishes
 * (a mapping named OTEL_CTX holding a header and a protobuf ProcessContext),
 * with fallbacks: OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES from its
 * environment, then its executable name; and the `threadlocal.*` keys that say
 * how to read its thread context (OTEP 4947).
 *
 * Reads /proc/PID/{maps,mem,environ,exe,cgroup}; what the bytes mean is
 * process-context-format.ts (pure).
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename } from 'node:path';
import { KspanError } from '../core/errors.ts';
import { type Mapping, readProcMaps } from './proc-maps.ts';
import { ProcMemError, procFailure, withProcessMemory } from './proc-mem.ts';
import { targetReadHint } from '../kernel/privileges.ts';
import {
  OTEL_CTX_HEADER_SIZE,
  OTEL_CTX_SIGNATURE,
  type ProcessContextInfo,
  type ResourceAttributes,
  decodeProcessContextPayload,
  findOtelCtxMapping,
  parseEnviron,
  parseOtelCtxHeader,
  parseResourceAttributesEnv,
  threadLocalConfig,
} from './process-context-format.ts';
import { parseProcCgroup } from '../discovery/cgroup-path.ts';

export interface ReadProcessContextOptions {
  /** host.name to report (default: this machine's hostname). */
  hostName?: string;
  /** Header re-reads when the writer is mid-update (default 5). */
  attempts?: number;
}

/** Reads the target's Resource and thread-local config. Throws only when the process is gone (or /proc fails otherwise). */
export function readProcessContext(pid: number, opts: ReadProcessContextOptions = {}): ProcessContextInfo {
  let maps: Mapping[];
  let exePath: string | undefined;
  try {
    maps = readProcMaps(pid);
  } catch (err) {
    // Another user's process without CAP_SYS_PTRACE: no mapping to read a publication from, and
    // the rest from what is readable (comm); the TLS resolver then says what to grant.
    if (procFailure(err) !== 'permission') throw processError(pid, err);
    maps = [];
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
  const containerId = cgroup ? parseProcCgroup(cgroup).containerId : undefined;
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
  try {
    return withProcessMemory(pid, (mem) => {
      const header = mem.read(address, OTEL_CTX_HEADER_SIZE);
      if (header.toString('latin1', 0, 8) !== OTEL_CTX_SIGNATURE) return undefined;
      return header.readBigUInt64LE(16);
    });
  } catch (err) {
    if (err instanceof ProcMemError && (err.reason === 'unmapped' || err.reason === 'gone')) return undefined;
    throw processError(pid, err);
  }
}

type Published =
  | { resource: ResourceAttributes; attributes: ResourceAttributes; publishedAtNs: bigint }
  | { problem: string };

function readPublished(pid: number, mapping: Mapping, attempts: number): Published {
  try {
    return withProcessMemory(pid, (mem) => {
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
          // The payload may have been freed by an update under way: try again.
          if (!(err instanceof ProcMemError && err.reason === 'unmapped')) throw err;
          last = err.message;
          continue;
        }
        try {
          return { ...decodeProcessContextPayload(payload), publishedAtNs: header.publishedAtNs };
        } catch (err) {
          return { problem: `undecodable payload: ${(err as Error).message}` };
        }
      }
      return { problem: `${last} after ${attempts} attempts` };
    });
  } catch (err) {
    throw processError(pid, err);
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
        hint: reason === 'permission' ? targetReadHint((err as NodeJS.ErrnoException)?.path) : undefined,
        cause: err,
        details: { pid, reason },
      },
    );
  }
  return err instanceof Error ? err : new Error(String(err));
}
