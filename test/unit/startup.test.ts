/**
 * Start-up: the phase timer, bin/kspan's compile cache (src/cli/kspan.ts), and its
 * choice of entry (dist/ or the sources).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { startupTimings, timed } from '../../src/core/startup-timing.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';
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

test('bin/kspan runs dist/ while it is current, else the sources; KSPAN_FROM_SOURCE=1 runs the sources', () => {
  // A copy of the launcher over a tree whose two entries say which one ran.
  const root = mkdtempSync(join(tmpdir(), 'kgu-entry-'));
  try {
    mkdirSync(join(root, 'bin'));
    copyFileSync(KSPAN_BIN, join(root, 'bin', 'kspan'));
    chmodSync(join(root, 'bin', 'kspan'), 0o755);
    for (const [dir, file, says] of [['src/cli', 'kspan.ts', 'src'], ['dist/cli', 'kspan.js', 'dist']]) {
      mkdirSync(join(root, dir), { recursive: true });
      writeFileSync(join(root, dir, file), `console.log(${JSON.stringify(says)});\n`);
    }
    // The launcher's own Node is absent from this tree: it runs the `node` on PATH, this one.
    const env = { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH}` };
    const ran = (extra: Record<string, string> = {}) => execFileSync(join(root, 'bin', 'kspan'), [], { encoding: 'utf8', env: { ...env, ...extra } }).trim();
    const setTime = (rel: string, t: number) => utimesSync(join(root, rel), t, t);
    const now = Math.floor(Date.now() / 1000);
    assert.equal(ran(), 'src', 'no build: the sources');
    writeFileSync(join(root, 'dist', '.built'), '');
    setTime('src/cli/kspan.ts', now - 100);
    setTime('src/cli', now - 100);
    setTime('src', now - 100);
    setTime('dist/.built', now - 50);
    assert.equal(ran(), 'dist', 'a build newer than every source');
    assert.equal(ran({ KSPAN_FROM_SOURCE: '1' }), 'src');
    setTime('src/cli/kspan.ts', now - 10);
    assert.equal(ran(), 'src', 'a source edited since the build');
    rmSync(join(root, 'src'), { recursive: true });
    assert.equal(ran(), 'dist', 'no sources (an image holds dist/ alone)');
    rmSync(join(root, 'dist', '.built'));
    assert.throws(() => ran(), 'no complete build and no sources: nothing to run');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('kspan/publisher loads its compiled modules while dist/ is current, by the same rule', () => {
  const root = mkdtempSync(join(tmpdir(), 'kgu-pub-'));
  try {
    mkdirSync(join(root, 'src', 'publisher'), { recursive: true });
    mkdirSync(join(root, 'dist', 'publisher'), { recursive: true });
    copyFileSync(join(REPO_ROOT, 'src', 'publisher', 'compiled.mjs'), join(root, 'src', 'publisher', 'compiled.mjs'));
    writeFileSync(join(root, 'src', 'publisher', 'index.ts'), '');
    const probe = `import { publisherModule } from ${JSON.stringify(join(root, 'src', 'publisher', 'compiled.mjs'))}; console.log(publisherModule('index'));`;
    const loads = (extra: Record<string, string> = {}) =>
      execFileSync(process.execPath, ['--input-type=module', '-e', probe], { encoding: 'utf8', env: { ...process.env, ...extra } }).trim();
    const setTime = (rel: string, t: number) => utimesSync(join(root, rel), t, t);
    const now = Math.floor(Date.now() / 1000);
    const source = join(root, 'src', 'publisher', 'index.ts');
    const compiled = join(root, 'dist', 'publisher', 'index.js');
    assert.equal(loads(), source, 'no build');
    writeFileSync(join(root, 'dist', '.built'), '');
    for (const rel of ['src/publisher/index.ts', 'src/publisher/compiled.mjs', 'src/publisher', 'src']) setTime(rel, now - 100);
    setTime('dist/.built', now - 50);
    assert.equal(loads(), compiled, 'a build newer than every source');
    assert.equal(loads({ KSPAN_FROM_SOURCE: '1' }), source);
    setTime('src/publisher/index.ts', now - 10);
    assert.equal(loads(), source, 'a source edited since the build');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('no module names a sibling .ts file where tsc leaves it as written (require, URLs): dist/ would miss it', () => {
  // tsc rewrites `from './x.ts'` and `import('./x.ts')`; any other string naming a .ts file survives into dist/.
  const found: string[] = [];
  const src = join(REPO_ROOT, 'src');
  for (const e of readdirSync(src, { recursive: true, withFileTypes: true })) {
    if (!e.isFile() || !e.name.endsWith('.ts')) continue;
    const file = join(e.parentPath, e.name);
    readFileSync(file, 'utf8').split('\n').forEach((line, i) => {
      const code = line.replace(/^\s*(\*|\/\/).*$/, '');
      for (const m of code.matchAll(/(from\s+|import\(\s*)?['"`](\.{1,2}\/[^'"`]*\.ts)['"`]/g)) {
        if (!m[1]) found.push(`${file.slice(src.length + 1)}:${i + 1}: ${m[2]}`);
      }
    });
  }
  assert.deepEqual(found, []);
});
