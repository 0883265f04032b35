/** The pure parts of the OTEP 4719 reader (process-context-format.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodeProcessContextPayload,
  findOtelCtxMapping,
  parseEnviron,
  parseOtelCtxHeader,
  parseResourceAttributesEnv,
  threadLocalConfig,
} from '../../src/context/process-context-format.ts';
import { parseProcCgroup } from '../../src/discovery/cgroup-path.ts';
import { parseProcMaps } from '../../src/context/proc-maps.ts';
import { ProcessContextType } from '../../src/proto/otlp.ts';

function header(fields: { sig?: string; version?: number; size?: number; at?: bigint; payload?: bigint }): Buffer {
  const b = Buffer.alloc(32);
  b.write(fields.sig ?? 'OTEL_CTX', 0, 'latin1');
  b.writeUInt32LE(fields.version ?? 2, 8);
  b.writeUInt32LE(fields.size ?? 100, 12);
  b.writeBigUInt64LE(fields.at ?? 123456789n, 16);
  b.writeBigUInt64LE(fields.payload ?? 0x7f0000001000n, 24);
  return b;
}

test('header: valid, and each way it can be unusable', () => {
  assert.deepEqual(parseOtelCtxHeader(header({})), { version: 2, payloadSize: 100, publishedAtNs: 123456789n, payload: 0x7f0000001000 });
  assert.deepEqual(parseOtelCtxHeader(header({ sig: '\0\0\0\0\0\0\0\0' })), { problem: 'no OTEL_CTX signature (yet)', retry: true });
  assert.deepEqual(parseOtelCtxHeader(header({ version: 1 })), { problem: 'unsupported OTEL_CTX version 1', retry: false });
  assert.deepEqual(parseOtelCtxHeader(header({ at: 0n })), { problem: 'being updated (published_at_ns = 0)', retry: true });
  assert.deepEqual(parseOtelCtxHeader(header({ size: (1 << 20) + 1 })), { problem: 'payload of 1048577 bytes exceeds 1048576', retry: false });
  assert.equal((parseOtelCtxHeader(header({ payload: 0xffffffff81000000n })) as { problem: string }).problem, 'payload pointer 0xffffffff81000000 is not a user address');
  assert.equal((parseOtelCtxHeader(header({ payload: 0n })) as { retry: boolean }).retry, false);
  assert.deepEqual(parseOtelCtxHeader(new Uint8Array(31)), { problem: 'header too short', retry: false });
});

test('the mapping by any of its three names', () => {
  const maps = (name: string) => parseProcMaps(`7f0000000000-7f0000001000 rw-s 00000000 00:01 1041 ${name}\n`);
  assert.ok(findOtelCtxMapping(maps('/memfd:OTEL_CTX (deleted)')));
  assert.ok(findOtelCtxMapping(maps('[anon:OTEL_CTX]')));
  assert.ok(findOtelCtxMapping(maps('[anon_shmem:OTEL_CTX]')));
  assert.equal(findOtelCtxMapping(maps('/memfd:OTEL_CTXX (deleted)')), undefined);
  assert.equal(findOtelCtxMapping(maps('[anon:OTHER]')), undefined);
});

const kv = (key: string, value: object) => ({ key, value });

test('payload: ProcessContext with resource and threadlocal attributes', () => {
  const bytes = ProcessContextType.encode(
    ProcessContextType.fromObject({
      resource: { attributes: [kv('service.name', { stringValue: 'cart' }), kv('service.instance.id', { stringValue: 'i-1' }), kv('n', { intValue: 7 })] },
      attributes: [
        kv('threadlocal.schema_version', { stringValue: 'tlsdesc_v1_dev' }),
        kv('threadlocal.attribute_key_map', { arrayValue: { values: [{ stringValue: 'datadog.local_root_span_id' }, { stringValue: 'http.route' }] } }),
      ],
    }),
  ).finish();
  const got = decodeProcessContextPayload(bytes);
  assert.deepEqual(got.resource, { 'service.name': 'cart', 'service.instance.id': 'i-1', n: 7 });
  assert.deepEqual(threadLocalConfig(got.attributes, got.resource), {
    schemaVersion: 'tlsdesc_v1_dev',
    scheme: 'otel_thread_ctx_v1',
    keyMap: ['datadog.local_root_span_id', 'http.route'],
    raw: got.attributes,
  });
});

test('payload: a bare Resource (early drafts) is still read', () => {
  const ResourceType = ProcessContextType.root.lookupType('opentelemetry.proto.Resource');
  const bytes = ResourceType.encode(ResourceType.fromObject({ attributes: [kv('service.name', { stringValue: 'legacy' })] })).finish();
  assert.deepEqual(decodeProcessContextPayload(bytes), { resource: { 'service.name': 'legacy' }, attributes: {} });
});

test('payload: garbage is an error, not an empty Resource', () => {
  assert.throws(() => decodeProcessContextPayload(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0x0f])));
});

test('threadlocal schemas: tls_v1 and tlsdesc_v1_dev are native; nodejs_v1_dev; unknown; absent', () => {
  const cfg = (s: string) => threadLocalConfig({ 'threadlocal.schema_version': s })!.scheme;
  assert.equal(cfg('tls_v1'), 'otel_thread_ctx_v1');
  assert.equal(cfg('tlsdesc_v1_dev'), 'otel_thread_ctx_v1');
  assert.equal(cfg('nodejs_v1_dev'), 'nodejs_v1_dev');
  assert.equal(cfg('tls_v9'), 'unsupported');
  assert.equal(threadLocalConfig({ 'service.name': 'x' }), null);
  // Early writers put the keys in the Resource; the attributes win when both have them.
  assert.equal(threadLocalConfig({ 'threadlocal.schema_version': 'tls_v1' }, { 'threadlocal.schema_version': 'nodejs_v1_dev' })!.scheme, 'otel_thread_ctx_v1');
  assert.deepEqual(threadLocalConfig({}, { 'threadlocal.schema_version': 'tls_v1' })!.keyMap, []);
});

test('environment: environ parsing and OTEL_RESOURCE_ATTRIBUTES', () => {
  const env = parseEnviron(Buffer.from('A=1\0OTEL_SERVICE_NAME=svc\0EMPTY=\0B=x=y\0\0'));
  assert.deepEqual([...env], [['A', '1'], ['OTEL_SERVICE_NAME', 'svc'], ['EMPTY', ''], ['B', 'x=y']]);
  assert.deepEqual(parseResourceAttributesEnv(' a = 1 ,b=hello%20world,bad,=x,c=%zz'), { a: '1', b: 'hello world', c: '%zz' });
});

test('container id from cgroup v1 and v2 paths (the Resource reader uses the selectors\' parser)', () => {
  const containerIdFromCgroup = (text: string) => parseProcCgroup(text).containerId;
  const id = 'a'.repeat(8) + '0123456789abcdef'.repeat(3) + 'b'.repeat(8);
  assert.equal(id.length, 64);
  assert.equal(containerIdFromCgroup(`0::/system.slice/docker-${id}.scope\n`), id);
  assert.equal(containerIdFromCgroup(`12:pids:/docker/${id}\n11:cpu:/docker/${id}\n`), id);
  assert.equal(containerIdFromCgroup(`0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-${id}.scope\n`), id);
  assert.equal(containerIdFromCgroup('0::/user.slice/user-0.slice/session-1.scope\n'), undefined);
  assert.equal(containerIdFromCgroup('0::/\n'), undefined);
});
