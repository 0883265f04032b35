/** The policy file: YAML + schema, errors naming file, line and key; values checked like flags; reloads checked the same way. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { parsePolicy } from '../../src/policy/policy-file.ts';
import { loadCommandConfig, reloadPolicy } from '../../src/policy/policy-config.ts';
import { PolicyWatcher } from '../../src/policy/policy-watcher.ts';
import { selectionFromSettings } from '../../src/discovery/selectors.ts';

const policyError = (source: string, message: string) =>
  assert.throws(
    () => parsePolicy('kspan.yaml', source),
    (e: Error & { code?: string }) => e.code === 'KSPAN_ERR_POLICY' && e.message.startsWith(message),
    message,
  );

describe('policy file schema', () => {
  test('a whole policy parses; one value or a list both work', () => {
    const p = parsePolicy('kspan.yaml', [
      'select:',
      '  all: true',
      '  exe: /usr/sbin/*',
      '  port: [8080, 8443]',
      'exclude:',
      '  comm: [sshd]',
      'spans:',
      '  orphans: true',
      'kernel:',
      '  orphans_ratio: 0.25',
      'export:',
      '  endpoint: http://collector:4317',
      '',
    ].join('\n'));
    assert.deepEqual(p.values, {
      select: { all: true, exe: '/usr/sbin/*', port: [8080, 8443] },
      exclude: { comm: ['sshd'] },
      spans: { orphans: true },
      kernel: { orphans_ratio: 0.25 },
      export: { endpoint: 'http://collector:4317' },
    });
    assert.equal(p.lineOf('select.port'), 4);
    assert.equal(p.lineOf('kernel.orphans_ratio'), 10);
  });

  test('an unknown key: its line and its path', () => {
    policyError('select:\n  comm: nginx\n  exes: /bin/*\n', 'kspan.yaml:3: select.exes: unknown key');
    policyError('selct:\n  comm: nginx\n', 'kspan.yaml:1: selct: unknown key');
  });

  test('a wrong type or range: the line of the value', () => {
    policyError('select:\n  port:\n    - 80\n    - 70000\n', 'kspan.yaml:4: select.port[1]: Too big');
    policyError('select:\n  all: "yes"\n', 'kspan.yaml:2: select.all: Invalid input: expected boolean');
    policyError('kernel:\n  orphans_ratio: 1\n', 'kspan.yaml:2: kernel.orphans_ratio: Too big');
  });

  test('not YAML, or a key twice: the line', () => {
    policyError('select:\n  comm: [nginx\n', 'kspan.yaml:3: not valid YAML');
    policyError('select:\n  comm: a\n  comm: b\n', 'kspan.yaml:3: not valid YAML: Map keys must be unique');
  });
});

describe('policy file with the command line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kspan-policy-unit-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'kspan.yaml');

  test('the file sits between the environment and the flags; a bad value names the file, line and key', () => {
    writeFileSync(file, 'select:\n  comm: [nginx]\n  cmdline: "--port 80"\nkernel:\n  orphans_ratio: 0.5\n');
    const c = loadCommandConfig('events', ['--config', file, '--orphans-ratio', '0.1']);
    assert.deepEqual(c.comm, ['nginx']);
    assert.deepEqual(c.cmdline, ['--port 80']);
    assert.equal(c.orphansRatio, 0.1);
    assert.deepEqual(c.origins.orphansRatio, { source: 'flag', name: '--orphans-ratio' });
    assert.deepEqual(c.origins.comm, { source: 'file', name: `${file}:2: select.comm` });
    writeFileSync(file, 'select:\n  comm: [nginx]\n  cmdline: "(x"\n');
    assert.throws(() => loadCommandConfig('events', ['--config', file]), (e: Error & { code?: string }) => {
      return e.code === 'KSPAN_ERR_POLICY' && e.message.startsWith(`${file}:3: select.cmdline: (x: not a regular expression`);
    });
  });

  test('a file that selects nothing is refused like a command line that does', () => {
    writeFileSync(file, 'exclude:\n  comm: [nginx]\n');
    assert.throws(() => loadCommandConfig('events', ['--config', file]), /no target: give --pid PID, --all, or a selector/);
  });

  test('reload: checked as at start; an invalid file keeps the policy in force and is logged and counted', () => {
    writeFileSync(file, 'select:\n  comm: [nginx]\n');
    const c = loadCommandConfig('events', ['--config', file]);
    const reload = reloadPolicy(c)!;
    const applied: string[][] = [];
    const errors: string[] = [];
    const w = new PolicyWatcher({
      path: file,
      reload,
      apply: (next) => applied.push([...selectionFromSettings(next).include.comm]),
      log: { info: () => {}, error: (o: { err: Error }) => errors.push(o.err.message) } as never,
    });
    writeFileSync(file, 'select:\n  comm: [redis]\n');
    assert.equal(w.reload('SIGHUP'), true);
    writeFileSync(file, 'select:\n  comm: [redis]\n  port: 0\n');
    assert.equal(w.reload('SIGHUP'), false);
    assert.deepEqual(applied, [['redis']]);
    assert.equal(errors.length, 1);
    assert.match(errors[0], new RegExp(`^${file}:3: select\\.port: Too small`));
    assert.deepEqual(w.stats, { applied: 1, invalid: 1 });
    w.close();
  });
});
