/**
 * The CLI on the real kernel: targets that exit (a warning each; the command
 * ends by itself once the last one is gone, everything flushed and exported),
 * --duration beyond a 32-bit timer, exit status 3 when data was lost, and
 * `record -o` to files that fail (read-only, /dev/full, a disk that fills
 * mid-recording), with one KSPAN_ERR line and no stack trace.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { cleanExit, KSPAN_BIN, parseEventLine } from '../helpers/kspan-cli.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { ProcessGroup, type Proc } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { parseAppSpan, startClient, startServer, tracedServerPath, type AppSpan } from '../helpers/tcp-fixtures.ts';
import { drive } from '../helpers/traceparent-client.ts';

type LogLine = Record<string, any> & { level: number; msg: string };

function logLines(p: Proc): LogLine[] {
  return p.stderr.map((l) => JSON.parse(l) as LogLine);
}

/** Resolves with the exit, or fails when the command does not end by itself in time. */
async function exitsWithin(p: Proc, ms: number) {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still running after ${ms} ms:\n${p.stderr.join('\n')}`)), ms);
  });
  try {
    return await Promise.race([p.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Every log line carries exactly one "pid" (pino's, the agent's); a traced process is "target_pid". */
function onePidPerLine(p: Proc) {
  for (const l of p.stderr) assert.equal(l.match(/"pid":/g)?.length, 1, l);
}

describe('kspan CLI on the kernel', e2eOptions(), () => {
  let group: ProcessGroup;
  let receiver: OtlpReceiver;
  let dir: string;
  const mounts: string[] = [];
  beforeEach(async () => {
    group = new ProcessGroup();
    receiver = new OtlpReceiver({ protocol: 'grpc' });
    await receiver.start();
    dir = mkdtempSync(join(tmpdir(), 'kspan-cli-e2e-'));
  });
  afterEach(async () => {
    await group.killAll();
    await receiver.stop();
    for (const m of mounts.splice(0)) execFileSync('umount', [m]);
    rmSync(dir, { recursive: true, force: true });
  });

  /** A tmpfs mounted with `options` at DIR/name, unmounted after the test. */
  function tmpfs(name: string, options: string): string {
    const at = join(dir, name);
    mkdirSync(at);
    execFileSync('mount', ['-t', 'tmpfs', '-o', options, `kspan-test-${process.pid}`, at]);
    mounts.push(at);
    return at;
  }

  /** The traced server answering `requests` on one connection, then exiting; `args` start kspan on it. */
  async function tracedExchange(requests: number, args: string[]) {
    const server = group.start(tracedServerPath(), ['--requests', String(requests), '--req-bytes', '300', '--resp-bytes', '20000'], {
      env: { ...process.env, OTEL_SERVICE_NAME: `cli-${process.pid}` },
    });
    const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
    const agent = group.start(KSPAN_BIN, [...args, '--pid', String(server.pid)]);
    await agent.waitStderr(/"msg":"(tracing|recording)"/, 20_000);
    server.send('go');
    await drive(port, requests, 300, 20_000);
    await server.waitLine(/^done$/);
    await server.exited;
    const app = server.lines.map(parseAppSpan).filter((s): s is AppSpan => !!s);
    return { server, agent, app };
  }

  test('run: the last target exits → a warning, then run ends by itself, everything exported, exit 0', async () => {
    const { server, agent, app } = await tracedExchange(3, ['run', '--no-sched', '--otlp-endpoint', receiver.endpoint]);
    const { code } = await exitsWithin(agent, 15_000);
    assert.equal(code, cleanExit(agent.stderr), agent.stderr.join('\n'));
    // 3 × (recv + send) + the accept, each under its request's span
    const spans = receiver.spans;
    assert.equal(spans.length, 7);
    const appIds = new Set(app.map((a) => a.spanId));
    for (const s of spans) assert.ok(appIds.has(s.parentSpanId), `${s.name} under a request span`);
    const lines = logLines(agent);
    const exited = lines.filter((l) => l.msg === 'target exited; no longer traced');
    assert.deepEqual(exited.map((l) => [l.level, l.target_pid]), [[40, server.pid]]);
    assert.equal(lines.find((l) => l.msg === 'stopping')?.why, 'every target exited');
    assert.equal(lines.at(-1)?.msg, code ? 'stopped; data was lost' : 'stopped');
    assert.equal(lines.at(-1)?.spans.export.exported, 7);
    assert.equal(lines.find((l) => l.msg === 'target')?.target_pid, server.pid);
    onePidPerLine(agent);
  });

  test('events and record end too when the last target exits; the close records made it', async () => {
    const requests = 2;
    const srv = await startServer(group, ['--requests', String(requests), '--req-bytes', '10', '--resp-bytes', '20']);
    const client = startClient(group, ['--port', String(srv.port), '--requests', String(requests), '--req-bytes', '10', '--resp-bytes', '20']);
    const events = group.start(KSPAN_BIN, ['events', '--pid', String(srv.proc.pid), '--pid', String(client.pid)]);
    const file = join(dir, 'gone.records');
    const record = group.start(KSPAN_BIN, ['record', '-o', file, '--pid', String(srv.proc.pid), '--pid', String(client.pid)]);
    await events.waitStderr(/"msg":"tracing"/, 20_000);
    await record.waitStderr(/"msg":"recording"/, 20_000);
    srv.proc.send('go');
    client.send('go');
    await Promise.all([srv.proc.exited, client.exited]);
    const [ev, rec] = await Promise.all([exitsWithin(events, 15_000), exitsWithin(record, 15_000)]);
    assert.equal(ev.code, 0, events.stderr.join('\n'));
    assert.equal(rec.code, 0, record.stderr.join('\n'));
    const evs = events.lines.map(parseEventLine);
    const closes = evs.filter((e) => e.type === 'close');
    assert.deepEqual(closes.map((e) => [e.pid, e.bytes_sent, e.bytes_received]).sort(),
      [[client.pid, 10 * requests, 20 * requests], [srv.proc.pid, 20 * requests, 10 * requests]].sort());
    for (const p of [events, record]) {
      const warned = logLines(p).filter((l) => l.msg === 'target exited; no longer traced');
      assert.deepEqual(warned.map((l) => l.level), [40, 40]);
      assert.deepEqual(warned.map((l) => l.target_pid).sort(), [srv.proc.pid, client.pid].sort());
      assert.equal(logLines(p).find((l) => l.msg === 'stopping')?.why, 'every target exited');
      onePidPerLine(p);
    }
    const recorded = logLines(record).at(-1)!;
    assert.equal(recorded.msg, 'recorded');
    assert.equal(recorded.records, evs.filter((e) => e.type !== 'target').length, 'the file holds what events printed');
    const replay = group.start(KSPAN_BIN, ['replay', file, '--console', '--orphans']);
    assert.equal((await replay.exited).code, 0, replay.stderr.join('\n'));
    assert.equal(logLines(replay).at(-1)?.records, recorded.records);
  });

  test('one of two targets exits: a warning, and run goes on', async () => {
    const { server, agent } = await tracedExchange(1, ['run', '--console', '--pid', String(process.pid)]);
    await agent.waitStderr(/target exited; no longer traced/, 10_000);
    await new Promise((r) => setTimeout(r, 2500)); // another refresh: still running
    assert.equal(agent.child.exitCode, null, 'run goes on while a target is left');
    agent.child.kill('SIGTERM');
    assert.equal((await agent.exited).code, cleanExit(agent.stderr));
    assert.equal(logLines(agent).find((l) => l.msg === 'target exited; no longer traced')?.target_pid, server.pid);
  });

  test('--duration 3000000 (beyond a 32-bit timer) really runs on; SIGTERM still stops it, exit 0', async () => {
    const agent = group.start(KSPAN_BIN, ['run', '--console', '--duration', '3000000', '--pid', String(process.pid)]);
    await agent.waitStderr(/"msg":"tracing"/, 20_000);
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal(agent.child.exitCode, null, 'still running after 2 s');
    agent.child.kill('SIGTERM');
    assert.equal((await agent.exited).code, cleanExit(agent.stderr), agent.stderr.join('\n'));
    assert.equal(logLines(agent).find((l) => l.msg === 'stopping')?.why, 'SIGTERM');
  });

  test('data lost (a socket table of 1): run says so and exits 3', async () => {
    const { agent } = await tracedExchange(2, ['run', '--otlp-endpoint', receiver.endpoint, '--max-sockets', '1', '--pid', String(process.pid)]);
    agent.child.kill('SIGTERM');
    const { code } = await agent.exited;
    const last = logLines(agent).at(-1)!;
    assert.equal(last.msg, 'stopped; data was lost');
    assert.ok(last.kernel.KSPAN_C_SOCK_TABLE_FULL > 0, JSON.stringify(last.kernel));
    assert.equal(code, 3);
  });

  test('the Collector rejects the spans (an OTLP partial success): run counts them, logs its reason, exits 3', async () => {
    const rejecting = new OtlpReceiver({ protocol: 'grpc' });
    await rejecting.start();
    try {
      rejecting.rejectNext(Infinity, 'over quota');
      const { agent } = await tracedExchange(3, ['run', '--no-sched', '--otlp-endpoint', rejecting.endpoint]);
      const { code } = await exitsWithin(agent, 15_000);
      const lines = logLines(agent);
      const last = lines.at(-1)!;
      assert.equal(last.msg, 'stopped; data was lost', agent.stderr.join('\n'));
      // 3 × (recv + send) + the accept: taken, and every one rejected
      assert.equal(rejecting.spanCount, 7);
      assert.equal(rejecting.rejectedReported, 7);
      assert.equal(last.spans.export.exported, 7);
      assert.equal(last.spans.export.rejected, 7);
      assert.equal(lines.find((l) => l.msg === 'export: the Collector rejected spans (partial success)')?.reason, 'over quota');
      assert.equal(code, 3);
    } finally {
      await rejecting.stop();
    }
  });

  test('record -o on a read-only file system: KSPAN_ERR_RECORD_FILE before the kernel, no stack trace', () => {
    const ro = tmpfs('ro', 'ro,size=64k');
    const out = join(ro, 'x.records');
    const r = spawn(['record', '--pid', String(process.pid), '-o', out]);
    assert.equal(r.status, 1);
    assert.equal(r.stderr, `kspan: KSPAN_ERR_RECORD_FILE: cannot create ${out}: read-only file system (EROFS) (give another -o FILE)\n` +
      `  cause: EROFS: read-only file system, open '${out}'\n`);
  });

  test('record -o /dev/full --force: the write fails, the recording stops, KSPAN_ERR_RECORD_FILE, exit 1', () => {
    const r = spawn(['record', '--pid', String(process.pid), '-o', '/dev/full', '--force', '--duration', '30']);
    assert.equal(r.status, 1, r.stderr);
    const lines = r.stderr.trimEnd().split('\n');
    const plain = lines.filter((l) => !l.startsWith('{'));
    assert.deepEqual(plain, [
      'kspan: KSPAN_ERR_RECORD_FILE: cannot write /dev/full: no space left on device (ENOSPC) (free some space or record elsewhere; ' +
        'what was written before the failure stays in the file, and kspan replay reads it up to the cut)',
      '  cause: ENOSPC: no space left on device, write',
    ]);
    const logs = lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as LogLine);
    assert.equal(logs.find((l) => l.msg === 'stopping')?.why, 'the output file failed');
  });

  test('a disk that fills mid-recording: KSPAN_ERR_RECORD_FILE; replay reads the file up to the cut, exit 3', async () => {
    const small = tmpfs('small', 'size=4k');
    const file = join(small, 'full.records');
    const { agent } = await tracedExchange(60, ['record', '-o', file]);
    const { code } = await exitsWithin(agent, 15_000);
    assert.equal(code, 1, agent.stderr.join('\n'));
    assert.ok(agent.stderr.includes(`kspan: KSPAN_ERR_RECORD_FILE: cannot write ${file}: no space left on device (ENOSPC) (free some space or record elsewhere; ` +
      'what was written before the failure stays in the file, and kspan replay reads it up to the cut)'), agent.stderr.join('\n'));
    assert.equal(statSync(file).size, 4096);
    const replay = group.start(KSPAN_BIN, ['replay', file, '--console']);
    assert.equal((await replay.exited).code, 3, replay.stderr.join('\n'));
    const warn = logLines(replay).at(-1)!;
    assert.equal(warn.cut, true);
    assert.ok(warn.records > 10, `records before the cut: ${warn.records}`);
    assert.equal(warn.msg, `the recording is cut short: replayed the ${warn.records} records before the cut; the rest of the file is lost`);
    assert.equal(warn.spans.correlator.records, warn.records);
  });
});

function spawn(args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync(KSPAN_BIN, args, { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
  return { status: r.status, stderr: r.stderr };
}
