/**
 * libbpf's debug lines are dropped unformatted when the agent's logger does not
 * want them, and only then; warn and info lines always reach the sink.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { BpfObject } from '../../src/kernel/bpf-object.ts';
import { captureLibbpfLog, libbpfLogStats, setLibbpfLogSink } from '../../src/kernel/libbpf-log.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';

const OBJECT = join(REPO_ROOT, 'bpf/.output/kspan.bpf.o');

function openCapturing(debug: boolean): { sunk: string[]; captured: string[]; skipped: number } {
  const sunk: string[] = [];
  setLibbpfLogSink((level, line) => sunk.push(`${level} ${line}`), { debug });
  const before = libbpfLogStats.debugSkipped;
  const capture = captureLibbpfLog();
  BpfObject.open(OBJECT).close();
  return { sunk, captured: capture.stop(), skipped: libbpfLogStats.debugSkipped - before };
}

test('opening an object: debug lines reach sink and capture with debug on; none, counted, with debug off', () => {
  const on = openCapturing(true);
  assert.ok(on.captured.some((l) => l.startsWith('libbpf: elf: section')), on.captured.slice(0, 5).join('\n'));
  assert.deepEqual(on.sunk, on.captured.map((l) => `debug ${l}`));
  assert.equal(on.skipped, 0);

  const off = openCapturing(false);
  assert.deepEqual(off.captured, []);
  assert.deepEqual(off.sunk, []);
  assert.equal(off.skipped, on.captured.length);
  setLibbpfLogSink(() => {});
});
