/**
 * bin/kspan as a user types it, for everything decided before the kernel is
 * touched (no root needed): help and version, usage errors with their exact
 * `kspan: KSPAN_ERR_…: message (hint)` line and exit 2, targets that do not
 * exist, output files that cannot be written, recordings that are missing or cut.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { COMMANDS } from '../../src/core/config.ts';
import { helpText, usageText } from '../../src/cli/usage.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';
import { KSPAN_BIN } from '../helpers/kspan-cli.ts';

/** Above any pid_max (PID_MAX_LIMIT is 4194304, pids stay below it), yet a well-formed pid. */
const NO_SUCH_PID = '4194304';
const dir = mkdtempSync(join(tmpdir(), 'kspan-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function kspan(args: string[], env: Record<string, string> = {}) {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('OTEL_') && k !== 'KSPAN_LOG_LEVEL'));
  const r = spawnSync(KSPAN_BIN, args, { encoding: 'utf8', env: { ...clean, ...env }, timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Exit status and the whole of stderr. */
function fails(args: string[], status: number, stderr: string, env?: Record<string, string>) {
  const r = kspan(args, env);
  assert.deepEqual({ status: r.status, stderr: r.stderr, stdout: r.stdout }, { status, stderr: `${stderr}\n`, stdout: '' }, `kspan ${args.join(' ')}`);
}

describe('help and version', () => {
  test('--version prints package.json\'s version', () => {
    const { version } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    assert.deepEqual(kspan(['--version']), { status: 0, stdout: `kspan ${version}\n`, stderr: '' });
  });

  test('--help on every command prints that command\'s usage, generated from the configuration table', () => {
    for (const command of Object.keys(COMMANDS) as (keyof typeof COMMANDS)[]) {
      assert.deepEqual(kspan([command, '--help']), { status: 0, stdout: `${helpText(command)}\n`, stderr: '' }, command);
    }
    assert.deepEqual(kspan(['run', '--pid', '1', '-h']), { status: 0, stdout: `${helpText('run')}\n`, stderr: '' });
    assert.deepEqual(kspan(['help', 'record']), { status: 0, stdout: `${helpText('record')}\n`, stderr: '' });
    assert.deepEqual(kspan(['--help']), { status: 0, stdout: `${usageText()}\n`, stderr: '' });
    assert.deepEqual(kspan([]), { status: 2, stdout: `${usageText()}\n`, stderr: '' });
  });
});

describe('usage errors: one KSPAN_ERR_USAGE line, exit 2', () => {
  test('negative numbers are checked by kspan, not refused as "ambiguous"', () => {
    fails(['run', '--pid', '1', '--duration', '-5'], 2, 'kspan: KSPAN_ERR_USAGE: --duration -5: not a duration (give seconds > 0, e.g. 30 or 0.5)');
    fails(['events', '--pid', '-1'], 2, 'kspan: KSPAN_ERR_USAGE: --pid -1: not a process id (give the pid of a running process, from 1 to 4194304)');
  });

  test('--log-level bogus lists the levels; so does KSPAN_LOG_LEVEL', () => {
    fails(['run', '--pid', '1', '--log-level', 'bogus'], 2,
      'kspan: KSPAN_ERR_USAGE: --log-level bogus: not a log level (use trace, debug, info, warn, error, fatal or silent)');
    fails(['events', '--pid', '1'], 2,
      'kspan: KSPAN_ERR_USAGE: KSPAN_LOG_LEVEL=loud: not a log level (use trace, debug, info, warn, error, fatal or silent)', { KSPAN_LOG_LEVEL: 'loud' });
  });

  test('a malformed OTLP endpoint is refused at start, naming the flag or the variable it came from', () => {
    const hint = '(give http://host:port or https://host:port; a bare host:port means http)';
    fails(['run', '--pid', '1', '--otlp-endpoint', 'garbage'], 2, `kspan: KSPAN_ERR_USAGE: --otlp-endpoint garbage: not a URL ${hint}`);
    fails(['run', '--pid', '1'], 2, `kspan: KSPAN_ERR_USAGE: OTEL_EXPORTER_OTLP_ENDPOINT=garbage: not a URL ${hint}`, { OTEL_EXPORTER_OTLP_ENDPOINT: 'garbage' });
    fails(['replay', 'x.records'], 2, `kspan: KSPAN_ERR_USAGE: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http//c:4317: not a URL ${hint}`,
      { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http//c:4317' });
  });

  test('--idle-flush-ms abc is refused before anything is attached', () => {
    fails(['run', '--pid', '1', '--idle-flush-ms', 'abc'], 2,
      'kspan: KSPAN_ERR_USAGE: --idle-flush-ms abc: not a time in milliseconds (give a whole number from 1 to 3600000)');
  });

  test('unknown commands and options, missing arguments', () => {
    fails(['frob'], 2, 'kspan: KSPAN_ERR_USAGE: unknown command "frob" (kspan --help lists the commands)');
    fails(['run', '--pid', '1', '--bogus'], 2, 'kspan: KSPAN_ERR_USAGE: unknown option --bogus (kspan run --help lists the options)');
    fails(['run'], 2, 'kspan: KSPAN_ERR_USAGE: no target: give --pid PID, --all, or a selector (--exe, --comm, --cmdline, --container, --cgroup, --k8s-pod-uid, --port) (kspan run --help lists the options)');
    fails(['doctor', '--jsn'], 2, 'kspan: KSPAN_ERR_USAGE: unknown option --jsn (kspan doctor --help lists the options)');
    fails(['demo', '--loss', '2'], 2, 'kspan: KSPAN_ERR_USAGE: --loss 2: not a fraction (give a number from 0 up to (not including) 1, e.g. 0.05)');
  });
});

describe('targets and files, checked before the kernel', () => {
  test('a pid that does not exist is KSPAN_ERR_TARGET, exit 1, for run, events and record', () => {
    const line = `kspan: KSPAN_ERR_TARGET: --pid ${NO_SUCH_PID}: no such process (give the pid of a running process, e.g. from ps -e; kspan traces processes that run when it starts)`;
    fails(['run', '--pid', NO_SUCH_PID, '--duration', '2'], 1, line);
    fails(['events', '--pid', NO_SUCH_PID], 1, line);
    fails(['record', '--pid', NO_SUCH_PID, '-o', join(dir, 'never.records')], 1, line);
    fails(['run', '--pid', String(process.pid), '--pid', NO_SUCH_PID], 1, line);
  });

  test('record -o into a missing directory: KSPAN_ERR_RECORD_FILE, no stack trace', () => {
    const out = join(dir, 'missing', 'x.records');
    fails(['record', '--pid', String(process.pid), '-o', out], 1,
      `kspan: KSPAN_ERR_RECORD_FILE: cannot create ${out}: the directory ${join(dir, 'missing')} does not exist (create it first, or give another -o FILE)\n` +
      `  cause: ENOENT: no such file or directory, open '${out}'`);
  });

  test('record refuses to overwrite a file without --force, and leaves it as it was', () => {
    const out = join(dir, 'precious.records');
    writeFileSync(out, 'keep me');
    fails(['record', '--pid', String(process.pid), '-o', out], 1,
      `kspan: KSPAN_ERR_RECORD_FILE: ${out} exists (give --force to overwrite it, or another -o FILE)`);
    assert.equal(readFileSync(out, 'utf8'), 'keep me');
  });

  test('replay of a missing file says it does not exist', () => {
    const file = join(dir, 'nothing.records');
    fails(['replay', file], 1,
      `kspan: KSPAN_ERR_RECORD_FILE: ${file} does not exist (give a file written by kspan record -o FILE)\n` +
      `  cause: ENOENT: no such file or directory, open '${file}'`);
    fails(['replay', dir], 1, `kspan: KSPAN_ERR_RECORD_FILE: ${dir} is a directory (give a file written by kspan record -o FILE)`);
  });

  test('a recording cut short: the records before the cut are replayed and exported, the count said, exit 3', () => {
    const whole = readFileSync(join(REPO_ROOT, 'test/fixtures/records/traced-keepalive.records'));
    const file = join(dir, 'cut.records');
    writeFileSync(file, whole.subarray(0, whole.length - 5)); // inside the last record (the close)
    const r = kspan(['replay', file, '--console']);
    assert.equal(r.status, 3, r.stderr);
    const lines = r.stderr.trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
    assert.equal(lines.length, 1, r.stderr);
    assert.equal(lines[0].level, 40);
    assert.equal(lines[0].msg, 'the recording is cut short: replayed the 11 records before the cut; the rest of the file is lost');
    assert.equal(lines[0].records, 11);
    assert.equal(lines[0].cut, true);
    // accept + 5 recv + 5 send: every span of those 11 records reached the exporter
    assert.equal(lines[0].spans.correlator.records, 11);
    assert.equal(lines[0].spans.export.exported, 11);
    assert.equal(r.stdout.split('\n').filter((l) => /tcp\.(accept|recv|send)/.test(l)).length, 11);
    // the whole file: same spans, exit 0
    const full = kspan(['replay', join(REPO_ROOT, 'test/fixtures/records/traced-keepalive.records'), '--console']);
    assert.equal(full.status, 0, full.stderr);
    assert.equal(full.stdout, r.stdout);
  });
});
