/**
 * Start-up: the phase timer, and bin/kspan's compile cache (src/cli/kspan.ts).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { startupTimings, timed } from '../../src/core/startup-timing.ts';
import { KSPAN_BIN } from '../helpers/kspan-cli.ts';

test('timed(): returns the result, adds each run to its phase, and counts a throwing run too', () => {
  assert.equal(timed('unit_phase', () => 42), 42);
  const once = startupTimings().unit_phase;
  assert.ok(once >= 0);
  assert.throws(() => timed('unit_phase', () => {
    const until = performance.now() + 5;
    while (performance.now() < until);
    throw new Error('boom');
  }), /boom/);
  assert.ok(startupTimings().unit_phase >= once + 5, JSON.stringify(startupTimings()));
  assert.deepEqual(Object.keys(startupTimings()).slice(0, 2), ['since_start', 'node_bootstrap']);
});

test('bin/kspan fills its compile cache on the first start and reuses it; NODE_DISABLE_COMPILE_CACHE=1 turns it off', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kgu-cache-'));
  try {
    const run = (env: Record<string, string>) => execFileSync(KSPAN_BIN, ['--version'], { encoding: 'utf8', env: { ...process.env, ...env } });
    const files = () => readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name)).sort();
    assert.match(run({ KSPAN_COMPILE_CACHE: join(dir, 'cc') }), /^kspan \d+\.\d+\.\d+\n$/);
    const first = files();
    // one entry per module read (main.ts and what it imports): many, not one
    assert.ok(first.length > 20, first.join('\n'));
    run({ KSPAN_COMPILE_CACHE: join(dir, 'cc') });
    assert.deepEqual(files(), first);
    run({ KSPAN_COMPILE_CACHE: join(dir, 'off'), NODE_DISABLE_COMPILE_CACHE: '1' });
    assert.equal(existsSync(join(dir, 'off')), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
