/** src/core/errors.ts: errno names, the verifier's message, every class and code documented. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import * as errors from '../../src/core/errors.ts';
import { BtfFormatError, KspanError, RecordDecodeError, VerifierError, errnoError, errnoName, verifierLogLastLine } from '../../src/core/errors.ts';
import { connectErrorName } from '../../src/records/kernel-record.ts';

const ROOT = new URL('../../', import.meta.url);

test('errno names come from the platform: negative or positive, kernel-internal ENOTSUPP, unknown numbers', () => {
  assert.equal(errnoName(1), 'EPERM');
  assert.equal(errnoName(-13), 'EACCES');
  assert.equal(errnoName(11), 'EAGAIN');
  assert.equal(errnoName(28), 'ENOSPC');
  assert.equal(errnoName(111), 'ECONNREFUSED');
  assert.equal(errnoName(-524), 'ENOTSUPP');
  assert.equal(errnoName(9999), 'errno 9999');
  assert.equal(errnoName(0), 'errno 0');
  const err = errnoError('bpf_object__load', -13);
  assert.equal(err.message, 'bpf_object__load failed: EACCES (13)');
  assert.equal(err.errno, 13);
  assert.equal(err.syscall, 'bpf_object__load');
});

test('connect failures keep their words, keyed by the errno numbers of this platform', () => {
  assert.deepEqual([103, 104, 110, 111, 113, 101, 99, 0].map(connectErrorName), [
    'aborted', 'reset', 'timed_out', 'refused', 'host_unreachable', 'network_unreachable', 'errno_99', null,
  ]);
});

/** What the kernel (6.x) logs for test/fixtures/bpf/invalid.bpf.c. */
const LOG = [
  "arg#0 reference type('UNKNOWN ') size cannot be determined: -22",
  '0: R1=ctx() R10=fp0',
  '; return v[4]; @ invalid.bpf.c:22',
  '8: (79) r6 = *(u64 *)(r0 +32)',
  'invalid access to map value, value_size=8 off=32 size=8',
  'R0 min value is outside of the allowed memory range',
  'processed 8 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0',
  '',
].join('\n');

const HINT = ' (this is a kspan bug or an unsupported kernel: report it with the verifier log (err.log))';

test('a verifier rejection ends with where the verifier stopped; the whole log stays on the error', () => {
  const err = new VerifierError('out_of_bounds', LOG, { cause: errnoError('bpf_object__load', -13), details: { libbpfLog: ['x'] } });
  assert.equal(err.code, 'KSPAN_ERR_VERIFIER');
  assert.equal(
    err.message,
    'the kernel\'s BPF verifier rejected program "out_of_bounds": invalid access to map value, value_size=8 off=32 size=8: ' +
      'R0 min value is outside of the allowed memory range' + HINT,
  );
  assert.equal(err.log, LOG);
  assert.equal(err.truncated, false);
  assert.deepEqual(err.details, { libbpfLog: ['x'], program: 'out_of_bounds', truncated: false });
  assert.equal((err.cause as Error).message, 'bpf_object__load failed: EACCES (13)');
});

test('a truncated verifier log says so, and gives the last line it kept', () => {
  const err = new VerifierError('big', 'insn 1\ninsn 2\n5000: (85) call unknown#1234', { truncated: true });
  assert.equal(err.truncated, true);
  assert.equal(err.message, 'the kernel\'s BPF verifier rejected program "big" (its log was truncated; the last line kept): 5000: (85) call unknown#1234' + HINT);
});

test('where the verifier stopped: statistics and blank lines skipped, a register or indented line keeps the line before', () => {
  assert.equal(verifierLogLastLine('a\nb\nverification time 12 usec\nstack depth 8\nprocessed 3 insns (limit 1000000)\n\n'), 'b');
  assert.equal(verifierLogLastLine('0: (95) exit\nR0 !read_ok\n'), '0: (95) exit: R0 !read_ok');
  assert.equal(verifierLogLastLine('[13] STRUCT drm_rect size=16 vlen=4\n\tx1 type_id=2'), '[13] STRUCT drm_rect size=16 vlen=4: x1 type_id=2');
  assert.equal(verifierLogLastLine('R1 type=ctx expected=fp'), 'R1 type=ctx expected=fp');
  assert.equal(verifierLogLastLine('processed 1 insns\n'), 'processed 1 insns');
  assert.equal(new VerifierError('p', '').message, 'the kernel\'s BPF verifier rejected program "p": (empty log)' + HINT);
});

test('the record decoder and the BTF reader fail with codes and hints', () => {
  const r = new RecordDecodeError('unknown record type 99');
  assert.ok(r instanceof KspanError);
  assert.equal(r.code, 'KSPAN_ERR_RECORD_DECODE');
  assert.equal(r.name, 'RecordDecodeError');
  assert.equal(r.message, 'unknown record type 99 (rebuild the BPF objects with this version of kspan: make -C bpf)');
  const b = new BtfFormatError('bad magic 0x9feb');
  assert.equal(b.code, 'KSPAN_ERR_BTF');
  assert.equal(b.message, 'BTF: bad magic 0x9feb (rebuild the BPF objects with clang -g (make -C bpf))');
});

test('every error class in errors.ts is a KspanError, and every code is documented in docs/ERRORS.md', () => {
  for (const [name, value] of Object.entries(errors)) {
    if (typeof value === 'function' && value.prototype instanceof Error) {
      assert.ok(value === KspanError || value.prototype instanceof KspanError, `${name} has no code`);
    }
  }
  const source = readFileSync(new URL('src/core/errors.ts', ROOT), 'utf8');
  const union = /export type ErrorCode =([^;]+);/.exec(source)![1];
  const codes = [...union.matchAll(/'(KSPAN_ERR_[A-Z_]+)'/g)].map((m) => m[1]);
  assert.ok(codes.length >= 19);
  const doc = readFileSync(new URL('docs/ERRORS.md', ROOT), 'utf8');
  const documented = new Set([...doc.matchAll(/^\| `(KSPAN_ERR_[A-Z_]+)` \|/gm)].map((m) => m[1]));
  assert.deepEqual(codes.filter((c) => !documented.has(c)), []);
});
