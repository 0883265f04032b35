/**
 * An OTEP 4719 reader for tests, written from the spec independently of
 * kspan/publisher's writer: finds the OTEL_CTX mapping in /proc/PID/maps, checks
 * the header (signature, version 2, published_at_ns non-zero and unchanged across
 * the copy) and decodes the ProcessContext payload.
 */
import { readFileSync } from 'node:fs';
import { ProcessMemory } from '../../src/context/proc-mem.ts';
import { ProcessContextType, TO_OBJECT, attributesToObject, type AttrValue, type PlainKeyValue } from '../../src/proto/otlp.ts';

export interface OtelCtxMapping {
  start: number;
  end: number;
  perms: string;
  name: string;
}

export function otelCtxMappings(pid: number): OtelCtxMapping[] {
  const out: OtelCtxMapping[] = [];
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (!m) continue;
    const name = m[4];
    if (/^(\/memfd:OTEL_CTX|\[anon:OTEL_CTX\]|\[anon_shmem:OTEL_CTX\])/.test(name)) {
      out.push({ start: parseInt(m[1], 16), end: parseInt(m[2], 16), perms: m[3], name });
    }
  }
  return out;
}

export interface ProcessContextRead {
  mapping: OtelCtxMapping;
  version: number;
  publishedAtNs: bigint;
  payloadAddress: number;
  resource: Record<string, AttrValue>;
  attributes: Record<string, AttrValue>;
}

export function readProcessContext(pid: number): ProcessContextRead | undefined {
  const [mapping] = otelCtxMappings(pid);
  if (!mapping) return undefined;
  const mem = new ProcessMemory(pid);
  try {
    for (let attempt = 0; attempt < 5; attempt++) {
      const header = mem.read(mapping.start, 32);
      if (header.toString('latin1', 0, 8) !== 'OTEL_CTX') throw new Error('bad OTEL_CTX signature');
      const version = header.readUInt32LE(8);
      if (version !== 2) throw new Error(`OTEL_CTX version ${version}`);
      const size = header.readUInt32LE(12);
      const publishedAtNs = header.readBigUInt64LE(16);
      const payloadAddress = Number(header.readBigUInt64LE(24));
      if (publishedAtNs === 0n) continue;
      const payload = mem.read(payloadAddress, size);
      if (mem.read(mapping.start + 16, 8).readBigUInt64LE(0) !== publishedAtNs) continue;
      const obj = ProcessContextType.toObject(ProcessContextType.decode(payload), TO_OBJECT) as {
        resource?: { attributes?: PlainKeyValue[] };
        attributes?: PlainKeyValue[];
      };
      return {
        mapping,
        version,
        publishedAtNs,
        payloadAddress,
        resource: attributesToObject(obj.resource?.attributes),
        attributes: attributesToObject(obj.attributes),
      };
    }
    throw new Error('OTEL_CTX kept changing while read');
  } finally {
    mem.close();
  }
}
