/**
 * The configuration module: layers (default < env < file < flag), every check,
 * the source named in each error, the command-line parsing, the help texts
 * generated from the same table, and the chained stop timer.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { COMMANDS, commandSettings, loadConfig, loadSettings, SETTINGS, type ConfigSources } from '../../src/core/config.ts';
import { KspanError } from '../../src/core/errors.ts';
import { after, MAX_TIMER_MS, ringErrorLog } from '../../src/cli/options.ts';
import { helpText } from '../../src/cli/usage.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';

const run = (argv: string[], more: Omit<ConfigSources, 'argv'> = {}) => loadConfig('run', { argv, env: {}, ...more });

/** Asserts a KSPAN_ERR_USAGE with exactly this message (hint included). */
function usage(fn: () => unknown, message: string) {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof KspanError, String(err));
    assert.equal(err.code, 'KSPAN_ERR_USAGE');
    assert.equal(err.message, message);
    return true;
  });
}

describe('layers: default < environment < policy file < command line', () => {
  test('defaults, each with origin "default"', () => {
    const c = run(['--pid', '7']);
    assert.deepEqual(
      { pids: c.pids, duration: c.duration, otlpEndpoint: c.otlpEndpoint, otlpProtocol: c.otlpProtocol, console: c.console, orphans: c.orphans,
        ioHooks: c.ioHooks, maxSockets: c.maxSockets, idleFlushMs: c.idleFlushMs, logLevel: c.logLevel, waitForTargets: c.waitForTargets },
      { pids: [7], duration: undefined, otlpEndpoint: undefined, otlpProtocol: 'grpc', console: false, orphans: false,
        ioHooks: 'auto', maxSockets: 57344, idleFlushMs: 500, logLevel: 'info', waitForTargets: false },
    );
    assert.deepEqual(c.origins.pids, { source: 'flag', name: '--pid' });
    assert.deepEqual(c.origins.idleFlushMs, { source: 'default', name: 'default' });
    assert.equal(c.command, 'run');
  });

  test('the environment overrides the default; the _TRACES_ variable wins over the generic one', () => {
    const env = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://generic:4317', KSPAN_LOG_LEVEL: 'debug', OTEL_EXPORTER_OTLP_PROTOCOL: ' http/protobuf ' };
    const c = run(['--pid', '7'], { env });
    assert.equal(c.otlpEndpoint, 'http://generic:4317');
    assert.deepEqual(c.origins.otlpEndpoint, { source: 'env', name: 'OTEL_EXPORTER_OTLP_ENDPOINT' });
    assert.equal(c.logLevel, 'debug');
    assert.deepEqual(c.origins.logLevel, { source: 'env', name: 'KSPAN_LOG_LEVEL' });
    assert.equal(c.otlpProtocol, 'http/protobuf');
    const t = run(['--pid', '7'], { env: { ...env, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://traces:4318/v1/traces' } });
    assert.equal(t.otlpEndpoint, 'http://traces:4318/v1/traces');
    assert.deepEqual(t.origins.otlpEndpoint, { source: 'env', name: 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT' });
    // blank is unset
    assert.equal(run(['--pid', '7'], { env: { OTEL_EXPORTER_OTLP_ENDPOINT: '  ' } }).otlpEndpoint, undefined);
  });

  test('a flag overrides the environment; the policy file sits between them', () => {
    const env = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://env:4317', KSPAN_LOG_LEVEL: 'debug' };
    const file = { path: 'kspan.yaml', values: { export: { endpoint: 'http://file:4317' }, log: { level: 'warn' }, kernel: { max_sockets: 1024 } } };
    const fromFile = run(['--pid', '7'], { env, file });
    assert.equal(fromFile.otlpEndpoint, 'http://file:4317');
    assert.deepEqual(fromFile.origins.otlpEndpoint, { source: 'file', name: 'kspan.yaml: export.endpoint' });
    assert.equal(fromFile.logLevel, 'warn');
    assert.equal(fromFile.maxSockets, 1024);
    const fromFlag = run(['--pid', '7', '--otlp-endpoint', 'http://flag:4317', '--log-level', 'error'], { env, file });
    assert.equal(fromFlag.otlpEndpoint, 'http://flag:4317');
    assert.deepEqual(fromFlag.origins.otlpEndpoint, { source: 'flag', name: '--otlp-endpoint' });
    assert.equal(fromFlag.logLevel, 'error');
    assert.deepEqual(fromFlag.origins.logLevel, { source: 'flag', name: '--log-level' });
  });

  test('a command\'s own defaults: the demo drives 20 s and logs at warn', () => {
    const d = loadConfig('demo', { argv: [], env: {} });
    assert.deepEqual([d.duration, d.logLevel, d.loss, d.traces, d.requests], [20, 'warn', 0.05, 4, undefined]);
    assert.equal(loadConfig('demo', { argv: [], env: { KSPAN_LOG_LEVEL: 'info' } }).logLevel, 'info');
  });

  test('loadSettings: the export settings alone, for an embedding caller', () => {
    const s = loadSettings(['otlpEndpoint', 'otlpProtocol', 'console'], { flags: { otlpEndpoint: 'collector:4317' }, env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://env:1' } });
    assert.deepEqual([s.otlpEndpoint, s.otlpProtocol, s.console], ['http://collector:4317', 'grpc', false]);
  });
});

describe('every check, naming where the value came from', () => {
  test('--pid', () => {
    usage(() => run([]), 'no target: give --pid PID, --all, or a selector (--exe, --comm, --cmdline, --container, --cgroup, --k8s-pod-uid, --port) (kspan run --help lists the options)');
    usage(() => run(['--pid', 'abc']), '--pid abc: not a process id (give the pid of a running process, from 1 to 4194304)');
    usage(() => run(['--pid', '0']), '--pid 0: not a process id (give the pid of a running process, from 1 to 4194304)');
    usage(() => run(['--pid', '-3']), '--pid -3: not a process id (give the pid of a running process, from 1 to 4194304)');
    usage(() => run(['--pid', '1.5']), '--pid 1.5: not a process id (give the pid of a running process, from 1 to 4194304)');
    assert.deepEqual(run(['--pid', '7', '--pid=9', '--pid', '7']).pids, [7, 9], 'repeatable, each once');
  });

  test('--duration: seconds > 0, any length', () => {
    for (const bad of ['-5', '0', 'abc', '', '1e400', '0x10', '5s']) {
      usage(() => run(['--pid', '1', '--duration', bad]), `--duration ${bad}: not a duration (give seconds > 0, e.g. 30 or 0.5)`);
    }
    assert.equal(run(['--pid', '1', '--duration', '0.25']).duration, 0.25);
    assert.equal(run(['--pid', '1', '--duration', '3000000']).duration, 3_000_000, 'beyond a 32-bit timer: accepted, the timer is chained');
  });

  test('--idle-flush-ms, --max-sockets: whole numbers in range', () => {
    usage(() => run(['--pid', '1', '--idle-flush-ms', 'abc']), '--idle-flush-ms abc: not a time in milliseconds (give a whole number from 1 to 3600000)');
    usage(() => run(['--pid', '1', '--idle-flush-ms', '0']), '--idle-flush-ms 0: not a time in milliseconds (give a whole number from 1 to 3600000)');
    assert.equal(run(['--pid', '1', '--idle-flush-ms', '250']).idleFlushMs, 250);
    usage(() => run(['--pid', '1', '--max-sockets', '0']), '--max-sockets 0: not a socket count (give a whole number from 1 to 16777216)');
    usage(() => run(['--pid', '1', '--max-sockets', '16777217']), '--max-sockets 16777217: not a socket count (give a whole number from 1 to 16777216)');
    assert.equal(run(['--pid', '1', '--max-sockets', '1']).maxSockets, 1);
  });

  test('--io-hooks, --otlp-protocol, --log-level: one of a list', () => {
    usage(() => run(['--pid', '1', '--io-hooks', 'kprobe']), '--io-hooks kprobe: not an I/O hook set (use auto, sock_length or syscalls)');
    usage(() => run(['--pid', '1', '--otlp-protocol', 'http/json']), '--otlp-protocol http/json: not a supported OTLP protocol (use grpc or http/protobuf)');
    usage(() => run(['--pid', '1', '--log-level', 'bogus']), '--log-level bogus: not a log level (use trace, debug, info, warn, error, fatal or silent)');
    usage(() => run(['--pid', '1'], { env: { KSPAN_LOG_LEVEL: 'loud' } }), 'KSPAN_LOG_LEVEL=loud: not a log level (use trace, debug, info, warn, error, fatal or silent)');
    usage(() => run(['--pid', '1'], { env: { OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json' } }),
      'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json: not a supported OTLP protocol (use grpc or http/protobuf)');
    assert.equal(run(['--pid', '1', '--io-hooks', 'syscalls']).ioHooks, 'syscalls');
    usage(() => run(['--pid', '1', '--socket-table', 'lru']), '--socket-table lru: not a socket table allocation (use auto, on-use or preallocated)');
    assert.equal(run(['--pid', '1']).socketTable, 'auto');
    assert.equal(run(['--pid', '1', '--socket-table', 'preallocated']).socketTable, 'preallocated');
  });

  test('OTLP endpoints: http(s) URLs or host:port, from a flag, the environment or the file', () => {
    const hint = '(give http://host:port or https://host:port; a bare host:port means http)';
    usage(() => run(['--pid', '1', '--otlp-endpoint', 'garbage']), `--otlp-endpoint garbage: not a URL ${hint}`);
    usage(() => run(['--pid', '1', '--otlp-endpoint', 'ftp://c:21']), `--otlp-endpoint ftp://c:21: not an http or https URL ${hint}`);
    usage(() => run(['--pid', '1', '--otlp-endpoint', 'http://c:99999']), `--otlp-endpoint http://c:99999: not a URL ${hint}`);
    usage(() => run(['--pid', '1'], { env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'garbage' } }), `OTEL_EXPORTER_OTLP_ENDPOINT=garbage: not a URL ${hint}`);
    usage(() => run(['--pid', '1'], { env: { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'not a url' } }), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=not a url: not a URL ${hint}`);
    usage(() => run(['--pid', '1'], { file: { path: '/etc/kspan.yaml', values: { export: { endpoint: 'garbage' } } } }),
      `/etc/kspan.yaml: export.endpoint: garbage: not a URL ${hint}`);
    // a flag that is valid hides a bad variable: it is never read
    assert.equal(run(['--pid', '1', '--otlp-endpoint', 'c:4317'], { env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'garbage' } }).otlpEndpoint, 'http://c:4317');
    assert.equal(run(['--pid', '1', '--otlp-endpoint', 'https://c.example/otlp']).otlpEndpoint, 'https://c.example/otlp');
    assert.equal(run(['--pid', '1', '--otlp-endpoint', '[::1]:4317']).otlpEndpoint, 'http://[::1]:4317');
  });

  test('switches from the environment or the file take true/false', () => {
    const file = (v: unknown) => ({ path: 'p.yaml', values: { spans: { orphans: v } } });
    assert.equal(run(['--pid', '1'], { file: file(true) }).orphans, true);
    assert.equal(run(['--pid', '1'], { file: file('off') }).orphans, false);
    usage(() => run(['--pid', '1'], { file: file('maybe') }), 'p.yaml: spans.orphans: maybe: not a boolean (use true or false)');
  });

  test('record and replay: the file arguments', () => {
    usage(() => loadConfig('record', { argv: ['--pid', '1'], env: {} }), 'no output file: give -o FILE (kspan record --help lists the options)');
    const r = loadConfig('record', { argv: ['--pid', '1', '-o', 'x.records', '--force'], env: {} });
    assert.deepEqual([r.output, r.force], ['x.records', true]);
    assert.deepEqual(r.origins.output, { source: 'flag', name: '--output' });
    usage(() => loadConfig('replay', { argv: [], env: {} }), 'no recording: give kspan replay FILE (kspan replay --help lists the options)');
    assert.equal(loadConfig('replay', { argv: ['a.records', '--console'], env: {} }).input, 'a.records');
    usage(() => loadConfig('replay', { argv: ['a', 'b'], env: {} }), 'unexpected argument "b" (kspan replay --help lists the options)');
  });
});

describe('command line', () => {
  test('a value that starts with a dash is the value (then checked), not parseArgs\' "ambiguous"', () => {
    usage(() => run(['--pid', '1', '--duration', '-5']), '--duration -5: not a duration (give seconds > 0, e.g. 30 or 0.5)');
    usage(() => run(['--pid', '1', '--duration=-5']), '--duration -5: not a duration (give seconds > 0, e.g. 30 or 0.5)');
  });

  test('unknown options, missing values, values to switches, stray arguments', () => {
    usage(() => run(['--pid', '1', '--bogus']), 'unknown option --bogus (kspan run --help lists the options)');
    usage(() => run(['--pid', '1', '-x']), 'unknown option -x (kspan run --help lists the options)');
    usage(() => loadConfig('events', { argv: ['--pid', '1', '--otlp-endpoint', 'c:1'], env: {} }), 'unknown option --otlp-endpoint (kspan events --help lists the options)');
    usage(() => run(['--pid', '1', '--duration']), '--duration needs a value (SECONDS) (kspan run --help lists the options)');
    usage(() => run(['--pid', '--duration', '5']), '--pid needs a value (PID) (kspan run --help lists the options)');
    usage(() => run(['--pid', '1', '--orphans=yes']), '--orphans takes no value (kspan run --help lists the options)');
    usage(() => run(['--pid', '1', 'extra']), 'unexpected argument "extra" (kspan run --help lists the options)');
  });
});

describe('help, from the same table', () => {
  test('each command lists every flag it takes, with its default and variables, and its exit statuses', () => {
    for (const command of Object.keys(COMMANDS) as (keyof typeof COMMANDS)[]) {
      const help = helpText(command);
      assert.ok(help.startsWith(`usage: ${COMMANDS[command].usage}\n`), command);
      const flat = help.replace(/\s+/g, ' ');
      for (const { spec, required } of commandSettings(command)) {
        if (spec.flag) assert.ok(flat.includes(`--${spec.flag}${spec.arg ? ` ${spec.arg}` : ''}`), `${command}: --${spec.flag}`);
        if (spec.flag && !required && (spec.defaultText !== undefined || (spec.arg && spec.default !== undefined))) {
          assert.ok(flat.includes(`(default: ${spec.defaultText ?? String(spec.default)})`), `${command}: --${spec.flag} default`);
        }
        for (const v of spec.env ?? []) assert.ok(flat.includes(v), `${command}: ${v}`);
      }
      assert.ok(flat.includes(`exit status: ${COMMANDS[command].exit}`), `${command}: exit statuses`);
    }
    assert.match(helpText('demo').replace(/\s+/g, ' '), /--duration SECONDS how long to drive traffic \(default: 20\)/);
  });

  test('the README documents every flag and variable of the table', () => {
    const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
    for (const [key, spec] of Object.entries(SETTINGS) as [string, { flag?: string; env?: readonly string[] }][]) {
      if (spec.flag) assert.ok(readme.includes(`--${spec.flag}`), `README: --${spec.flag} (${key})`);
      for (const v of spec.env ?? []) assert.ok(readme.includes(v), `README: ${v}`);
    }
  });
});

describe('the stop timer', () => {
  /** Timers that record each delay and fire on demand. */
  function fakeTimers() {
    const armed: { fn: () => void; ms: number }[] = [];
    let cleared = 0;
    return {
      armed,
      get cleared() {
        return cleared;
      },
      timers: {
        setTimeout: (fn: () => void, ms: number) => (armed.push({ fn, ms }), armed.length - 1),
        clearTimeout: () => void cleared++,
      },
    };
  }

  test('3 000 000 s is chained in steps setTimeout keeps, and fires once, at the end', () => {
    const f = fakeTimers();
    let fired = 0;
    const total = 3_000_000 * 1000;
    after(total, () => fired++, f.timers);
    for (let i = 0; i < f.armed.length; i++) {
      assert.ok(f.armed[i].ms <= MAX_TIMER_MS, `step ${i}: ${f.armed[i].ms} ms`);
      assert.equal(fired, 0);
      f.armed[i].fn();
    }
    assert.equal(fired, 1);
    assert.equal(f.armed.length, Math.ceil(total / MAX_TIMER_MS));
    assert.equal(f.armed.reduce((a, t) => a + t.ms, 0), total, 'the steps add up to the duration');
  });

  test('a short one is one timer; cancel clears the pending step', () => {
    const f = fakeTimers();
    const cancel = after(1500, () => {}, f.timers);
    assert.deepEqual(f.armed.map((t) => t.ms), [1500]);
    cancel();
    assert.equal(f.cleared, 1);
  });
});

describe('ring reader failures in the log', () => {
  test('the first at once, then one line per interval with the count since the last line', () => {
    const lines: [{ err: unknown; failures: number }, string][] = [];
    let t = 1000;
    const report = ringErrorLog({ warn: ((o: { err: unknown; failures: number }, msg: string) => lines.push([o, msg])) as never }, 10_000, () => t);
    const errs = [1, 2, 3, 4].map((i) => new Error(`epoll_wait failed: EBADF (${i})`));
    report(errs[0]);
    t += 20;
    report(errs[1]);
    t += 9_979;
    report(errs[2]);
    t += 1;
    report(errs[3]);
    assert.deepEqual(lines, [
      [{ err: errs[0], failures: 1 }, 'ring buffer reader failed; reading goes on'],
      [{ err: errs[3], failures: 3 }, 'ring buffer reader failed; reading goes on'],
    ]);
  });
});
