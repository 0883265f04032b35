/**
 * Bad input, fuzzed (fast-check, seeded): every parser of outside bytes or text
 * gets valid input with bytes and words changed and ends cut, and plain random
 * bytes. None may crash with anything but its typed error (a KspanError with its
 * code), hang, or allocate without bound (each case is timed; the heap is
 * checked after each target).
 *
 * KSPAN_FUZZ_RUNS sets the cases per target (default 10 000, what CI runs);
 * KSPAN_FUZZ_SEED the seed (default fixed, so a failure reproduces: fast-check
 * prints the seed and path of the failing case).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { parseBtf } from '../../tools/gen-records/btf.ts';
import { loadConfig, parseCommandLine, COMMANDS, SETTINGS, type Command } from '../../src/core/config.ts';
import { KspanError, type ErrorCode } from '../../src/core/errors.ts';
import { parseElf } from '../../src/elf/elf-file.ts';
import { decodeProcessContextPayload, parseOtelCtxHeader, threadLocalConfig } from '../../src/context/process-context-format.ts';
import { decodeRecords } from '../../src/records/decoder.ts';
import { KSPAN_EVENT_SIZE } from '../../src/records/abi.generated.ts';
import { RecordFileReader } from '../../src/records/record-file.ts';
import { SpanSpool } from '../../src/export/spool.ts';
import { deserializeTraceResponse } from '../../src/export/export-request.ts';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { ExportTraceServiceResponseType } from '../../src/proto/otlp.ts';
import { encodeProcessContext } from '../../src/publisher/process-context-payload.ts';

const RUNS = Number(process.env.KSPAN_FUZZ_RUNS) > 0 ? Number(process.env.KSPAN_FUZZ_RUNS) : 10_000;
const SEED = Number.isInteger(Number(process.env.KSPAN_FUZZ_SEED)) && process.env.KSPAN_FUZZ_SEED ? Number(process.env.KSPAN_FUZZ_SEED) : 0x6b7370;
/**
 * A case that takes longer than this is a hang. Generous: the slowest case takes
 * about 0.4 s alone (a recording fed in 1-byte chunks), and the machine is shared.
 */
const CASE_MS = 10_000;
/** Heap growth allowed over a whole target (its inputs are at most a few MB). */
const HEAP_GROWTH = 256 * 1024 * 1024;

const ROOT = new URL('../../', import.meta.url);
const probeObject = new Uint8Array(readFileSync(new URL('bpf/.output/probe.bpf.o', ROOT)));

/** Valid bytes with some bytes and 32-bit words changed, and maybe cut short. */
function mutated(seed: Uint8Array, hot = 128): fc.Arbitrary<Uint8Array> {
  const pos = fc.oneof(fc.nat({ max: Math.min(hot, seed.length) - 1 }), fc.nat({ max: seed.length - 1 }));
  // Lengths, offsets and counts: the edges, and any value within the input.
  const word = fc.oneof(fc.constantFrom(0, 1, 0xff, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff, seed.length, seed.length - 1), fc.nat({ max: seed.length }));
  return fc
    .record({
      bytes: fc.array(fc.tuple(pos, fc.integer({ min: 0, max: 255 })), { maxLength: 12 }),
      words: fc.array(fc.tuple(pos, word), { maxLength: 6 }),
      cut: fc.option(fc.nat({ max: seed.length }), { freq: 4 }),
    })
    .map(({ bytes, words, cut }) => {
      const b = Buffer.from(seed);
      for (const [i, v] of bytes) b[i] = v;
      for (const [i, v] of words) if (i + 4 <= b.length) b.writeUInt32LE(v >>> 0, i);
      return cut === null ? b : b.subarray(0, cut);
    });
}

/** Mostly mutated valid input, sometimes plain random bytes. */
function badBytes(seed: Uint8Array, hot?: number): fc.Arbitrary<Uint8Array> {
  return fc.oneof({ weight: 5, arbitrary: mutated(seed, hot) }, { weight: 1, arbitrary: fc.uint8Array({ maxLength: 4096 }) });
}

function assertTyped(err: unknown, codes: readonly ErrorCode[]): void {
  if (!(err instanceof KspanError) || !codes.includes(err.code)) {
    assert.fail(`expected a KspanError ${codes.join('/')}, got ${(err as Error)?.stack ?? String(err)}`);
  }
}

/** Runs `target` on RUNS inputs: each returns or throws its typed error, in bounded time and memory. */
async function fuzz<T>(arb: fc.Arbitrary<T>, codes: readonly ErrorCode[], target: (input: T) => void | Promise<void>): Promise<void> {
  const heapBefore = process.memoryUsage().heapUsed;
  let slowest = 0;
  await fc.assert(
    fc.asyncProperty(arb, async (input) => {
      const t0 = performance.now();
      try {
        await target(input);
      } catch (err) {
        assertTyped(err, codes);
      }
      const ms = performance.now() - t0;
      slowest = Math.max(slowest, ms);
      assert.ok(ms < CASE_MS, `one case took ${ms.toFixed(0)} ms`);
    }),
    { seed: SEED, numRuns: RUNS },
  );
  if (process.env.KSPAN_FUZZ_VERBOSE) process.stderr.write(`# slowest case ${slowest.toFixed(1)} ms\n`);
  globalThis.gc?.();
  assert.ok(process.memoryUsage().heapUsed - heapBefore < HEAP_GROWTH, 'the heap grew without bound');
}

test('ELF reader: a mutated BPF object, or random bytes, parses or fails with KSPAN_ERR_ELF', async () => {
  await fuzz(badBytes(probeObject), ['KSPAN_ERR_ELF'], (bytes) => {
    const elf = parseElf(bytes);
    // Lazy parts too: every section, the symbols (looked up in the tables' bytes
    // first, then parsed whole), the relocations, the TLS segment.
    for (const s of elf.sections) elf.section(s.name);
    elf.findSymbol('otel_thread_ctx_v1');
    elf.findSymbols('otel_thread_ctx_v1', '.symtab');
    elf.allDynamicRelocations();
    elf.symbols('.symtab');
    elf.symbols('.dynsym');
    elf.findSymbol('otel_thread_ctx_v1');
    elf.tls();
    for (const s of elf.sections) if (s.name.startsWith('.rel')) elf.relocations(s.name);
  });
});

test('BTF parser: a mutated .BTF section, or random bytes, parses or fails with KSPAN_ERR_BTF', async () => {
  const btf = parseElf(probeObject).section('.BTF')!;
  assert.ok(btf.length > 24);
  await fuzz(badBytes(btf), ['KSPAN_ERR_BTF'], (bytes) => {
    const parsed = parseBtf(bytes);
    // Resolve and size every type, as the generator does.
    for (let id = 1; id < Math.min(parsed.types.length, 4096); id++) {
      parsed.resolve(id);
      parsed.sizeOf(id);
    }
  });
});

test('BTF parser: a type whose members run past the section, and an array of itself, are typed errors', async () => {
  // Header (24 bytes), then the types, then the strings ("\0a\0").
  const btf = (types: number[]): Uint8Array => {
    const t = Buffer.alloc(types.length * 4);
    types.forEach((w, i) => t.writeUInt32LE(w >>> 0, i * 4));
    const h = Buffer.alloc(24);
    h.writeUInt16LE(0xeb9f, 0);
    h.writeUInt32LE(24, 4);
    h.writeUInt32LE(0, 8);
    h.writeUInt32LE(t.length, 12);
    h.writeUInt32LE(t.length, 16);
    h.writeUInt32LE(3, 20);
    return Buffer.concat([h, t, Buffer.from('\0a\0')]);
  };
  const STRUCT = 4 << 24, ARRAY = 3 << 24;
  // A struct claiming 1000 members with none there: it read past the buffer (a RangeError) before.
  assert.throws(() => parseBtf(btf([1, STRUCT | 1000, 8])), { code: 'KSPAN_ERR_BTF', message: 'BTF: truncated type 1 (rebuild the BPF objects with clang -g (make -C bpf))' });
  // Type 1: an array whose elements are type 1.
  const self = parseBtf(btf([0, ARRAY, 0, 1, 1, 4]));
  assert.throws(() => self.sizeOf(1), { code: 'KSPAN_ERR_BTF', message: 'BTF: arrays nested too deep at type 1 (rebuild the BPF objects with clang -g (make -C bpf))' });
});

test('OTEP 4719 payload decoder: a mutated ProcessContext, or random bytes, decodes or fails with KSPAN_ERR_PROCESS_CONTEXT', async () => {
  const payload = encodeProcessContext(
    { 'service.name': 'fuzzed', 'service.instance.id': 'abc', 'process.pid': 42 },
    { 'threadlocal.schema_version': 'tlsdesc_v1_dev', 'threadlocal.attribute_key_map': ['http.route', 'user.id'] },
  );
  await fuzz(badBytes(payload, payload.length), ['KSPAN_ERR_PROCESS_CONTEXT'], (bytes) => {
    const { resource, attributes } = decodeProcessContextPayload(bytes);
    threadLocalConfig(attributes, resource);
  });
  // The header: never throws, says what is wrong.
  const header = Buffer.alloc(32);
  header.write('OTEL_CTX', 0, 'latin1');
  header.writeUInt32LE(2, 8);
  header.writeUInt32LE(100, 12);
  header.writeBigUInt64LE(1n, 16);
  header.writeBigUInt64LE(0x7f0000001000n, 24);
  await fuzz(badBytes(header, 32), [], (bytes) => {
    const h = parseOtelCtxHeader(bytes);
    if ('problem' in h) assert.equal(typeof h.problem, 'string');
    else assert.ok(h.payloadSize <= 1 << 20 && h.payload > 0);
  });
});

test('record decoder: a mutated ring-buffer record, or random bytes, decodes or fails with KSPAN_ERR_RECORD_DECODE', async () => {
  const valid = Buffer.alloc(KSPAN_EVENT_SIZE);
  valid.writeUInt32LE(1, 0);
  await fuzz(
    fc.tuple(badBytes(valid, KSPAN_EVENT_SIZE), fc.nat({ max: 16 })),
    ['KSPAN_ERR_RECORD_DECODE'],
    ([bytes, offset]) => {
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      decodeRecords(view, Math.min(offset, bytes.length), (r) => assert.ok(typeof r.type === 'string'));
    },
  );
});

test('recording-file reader: a mutated recording, or random bytes, reads or fails with KSPAN_ERR_RECORD_FILE', async () => {
  const recording = new Uint8Array(readFileSync(new URL('test/fixtures/records/traced-keepalive.records', ROOT)));
  await fuzz(
    fc.tuple(badBytes(recording, 256), fc.integer({ min: 1, max: 4096 })),
    ['KSPAN_ERR_RECORD_FILE'],
    async ([bytes, chunk]) => {
      const chunks: Uint8Array[] = [];
      for (let i = 0; i < bytes.length; i += chunk) chunks.push(bytes.subarray(i, i + chunk));
      const reader = await RecordFileReader.open(chunks);
      for await (const r of reader) assert.ok(typeof r.tsNs === 'bigint' && typeof r.cookie === 'bigint');
    },
  );
});

test('configuration: random command lines and environments are accepted or refused with KSPAN_ERR_USAGE', async () => {
  const commands = Object.keys(COMMANDS) as Command[];
  const flagWords = ['--pid', '--duration', '--otlp-endpoint', '--otlp-protocol', '--console', '--orphans', '--orphans-ratio', '--io-hooks',
    '--max-sockets', '--idle-flush-ms', '-o', '--output', '--force', '--json', '--requests', '--loss', '--traces', '--spans-out', '--log-level',
    '--spool', '--spool-dir', '--spool-max-mb', '--unsampled', '--', '-', '--bogus', '-x', '--pid=1', '--duration='];
  const values = fc.oneof(
    fc.constantFrom('1', '0', '-5', '1e309', 'NaN', '0x10', ' 7 ', '4194304', '4194305', 'http://h:4317', 'h:1', 'ftp://x', 'grpc', 'auto', 'info', '0.5', '1.0', ''),
    fc.string({ maxLength: 24 }),
  );
  const argv = fc.array(fc.oneof(fc.constantFrom(...flagWords), values), { maxLength: 10 });
  const envKeys = ['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'OTEL_EXPORTER_OTLP_PROTOCOL', 'KSPAN_LOG_LEVEL', 'KSPAN_SPOOL', 'KSPAN_SPOOL_DIR', 'KSPAN_SPOOL_MAX_MB'];
  const env = fc.dictionary(fc.constantFrom(...envKeys), values, { maxKeys: 4 });
  // The policy file's values as a parser would hand them over: any JSON-like value under any key of the table.
  const fileKeys = Object.values(SETTINGS).flatMap((spec) => ('fileKey' in spec && spec.fileKey ? [spec.fileKey] : []));
  const file = fc.option(fc.dictionary(fc.oneof(fc.constantFrom(...fileKeys), fc.string({ maxLength: 12 })), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }), { freq: 2 });
  await fuzz(fc.tuple(fc.constantFrom(...commands), argv, env, file), ['KSPAN_ERR_USAGE'], ([command, args, environment, values]) => {
    parseCommandLine(command, args);
    loadConfig(command, { argv: args, env: environment, ...(values ? { file: { path: 'kspan.yaml', values } } : {}) });
  });
});

test('spool segments: a mutated segment is read up to its first damaged record, the rest counted as torn; nothing throws', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kspan-fuzz-spool-'));
  try {
    const spool = new SpanSpool({ dir, maxBytes: 1 << 20 });
    for (let i = 0; i < 8; i++) spool.append(Buffer.alloc(40 + i * 7, i), i + 1);
    spool.close();
    const [name] = readdirSync(dir).filter((f) => f.endsWith('.kspool'));
    const segment = new Uint8Array(readFileSync(join(dir, name)));
    rmSync(dir, { recursive: true });
    const runs = Math.max(1, Math.floor(RUNS / 5)); // file I/O per case
    fc.assert(
      fc.property(badBytes(segment, segment.length), (bytes) => {
        const d = mkdtempSync(join(tmpdir(), 'kspan-fuzz-spool-'));
        try {
          writeFileSync(join(d, name), bytes);
          const s = new SpanSpool({ dir: d, maxBytes: 1 << 20 });
          let spans = 0;
          for (let b = s.next(); b; b = s.next()) {
            spans += b.spans;
            s.done(b, true);
          }
          // Whole records only, each as written: span counts 1..8 in order, so a prefix of them.
          const k = s.counters.recoveredRecords;
          assert.ok(k <= 8);
          assert.equal(spans, (k * (k + 1)) / 2);
          assert.equal(spans, s.counters.replayedSpans);
          assert.ok(s.counters.tornSegments <= 1);
          if (s.counters.tornSegments === 0) assert.equal(s.counters.tornBytes, 0);
          s.close();
        } finally {
          rmSync(d, { recursive: true, force: true });
        }
      }),
      { seed: SEED, numRuns: runs },
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('export responses: decoded as the OpenTelemetry transformer decodes them; a partial success reaches the handler exactly', () => {
  const response = fc.record(
    { partialSuccess: fc.record({ rejectedSpans: fc.nat({ max: Number.MAX_SAFE_INTEGER }), errorMessage: fc.string() }, { requiredKeys: [] }) },
    { requiredKeys: [] },
  );
  const body = fc.oneof(
    response.map((r) => ExportTraceServiceResponseType.encode(r).finish()),
    fc.uint8Array({ maxLength: 64 }),
  );
  fc.assert(
    fc.property(body, (bytes) => {
      let official: unknown;
      try {
        official = ProtobufTraceSerializer.deserializeResponse(bytes);
      } catch {
        assert.throws(() => deserializeTraceResponse(bytes, () => assert.fail('no handler call for an undecodable body')));
        return;
      }
      const seen: [number, string][] = [];
      assert.deepEqual(deserializeTraceResponse(bytes, (n, m) => void seen.push([n, m])), official);
      const p = (official as { partialSuccess?: { rejectedSpans?: number; errorMessage?: string } }).partialSuccess;
      const rejected = Number(p?.rejectedSpans ?? 0);
      const message = p?.errorMessage ?? '';
      assert.deepEqual(seen, p && (rejected > 0 || message) ? [[rejected, message]] : []);
    }),
    { seed: SEED, numRuns: RUNS },
  );
});
