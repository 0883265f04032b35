/**
 * The loader on the real kernel: typed verifier errors with the log, run-time PID
 * selection without reloading, and nothing left attached after SIGKILL.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { VerifierError } from '../../src/core/errors.ts';
import { BpfObject } from '../../src/kernel/bpf-object.ts';
import { libbpfLogStats, setLibbpfLogSink } from '../../src/kernel/libbpf-log.ts';
import type { KernelRecord } from '../../src/records/kernel-record.ts';
import { TcpTracer } from '../../src/kernel/tcp-tracer.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';
import { KSPAN_BIN, startEvents } from '../helpers/kspan-cli.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { startClient, startServer } from '../helpers/tcp-fixtures.ts';

interface ProgInfo {
  id: number;
  name: string;
}

/** BPF program ids a process holds through its fds (programs and links). */
function progIdsOf(pid: number): number[] {
  const ids = new Set<number>();
  for (const fd of readdirSync(`/proc/${pid}/fdinfo`)) {
    let info = '';
    try {
      info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    } catch {
      continue;
    }
    const m = /^prog_id:\s*(\d+)/m.exec(info);
    if (m) ids.add(Number(m[1]));
  }
  return [...ids].sort((a, b) => a - b);
}

function progs(): ProgInfo[] {
  return JSON.parse(execFileSync('bpftool', ['prog', 'show', '-j'], { encoding: 'utf8' })) as ProgInfo[];
}

describe('loader', e2eOptions(), () => {
  test('a program the verifier rejects yields VerifierError with its name, where it stopped, and the log', () => {
    const obj = BpfObject.open(join(REPO_ROOT, 'bpf/.output/invalid.bpf.o'));
    try {
      assert.throws(
        () => obj.load(),
        (err: unknown) => {
          assert.ok(err instanceof VerifierError);
          assert.equal(err.code, 'KSPAN_ERR_VERIFIER');
          assert.equal(err.program, 'out_of_bounds');
          assert.equal(err.truncated, false);
          assert.match(err.log, /^8: \(79\) r6 = \*\(u64 \*\)\(r0 \+32\)$/m);
          assert.match(err.log, /^processed \d+ insns/m);
          assert.equal(
            err.message,
            'the kernel\'s BPF verifier rejected program "out_of_bounds": ' +
              'invalid access to map value, value_size=8 off=32 size=8: R0 min value is outside of the allowed memory range ' +
              '(this is a kspan bug or an unsupported kernel: report it with the verifier log (err.log))',
          );
          assert.equal((err.cause as Error).message, 'bpf_object__load failed: EACCES (13)');
          return true;
        },
      );
    } finally {
      obj.close();
    }
  });

  test('a verifier log that does not fit its buffer: the error says it was truncated and keeps what the kernel wrote', () => {
    const obj = BpfObject.open(join(REPO_ROOT, 'bpf/.output/invalid.bpf.o'));
    try {
      assert.throws(
        // 128 bytes: the least a kernel before 6.4 takes (less is EINVAL, and no log).
        () => obj.load({ verifierLogSize: 128 }),
        (err: unknown) => {
          assert.ok(err instanceof VerifierError, `${String(err)}; cause: ${String((err as Error).cause)}; details: ${JSON.stringify((err as { details?: unknown }).details)}`);
          assert.equal(err.program, 'out_of_bounds');
          assert.equal(err.truncated, true);
          assert.ok(err.log.length > 0 && err.log.length <= 127, `${err.log.length} bytes kept`);
          assert.ok(
            err.message.startsWith('the kernel\'s BPF verifier rejected program "out_of_bounds" (its log was truncated; the last line kept): '),
            err.message,
          );
          return true;
        },
      );
    } finally {
      obj.close();
    }
  });

  test('a log sink that throws inside libbpf\'s print callback is counted; the load still fails with its own error', () => {
    const before = libbpfLogStats.sinkErrors;
    setLibbpfLogSink(() => {
      throw new Error('sink broke');
    });
    const obj = BpfObject.open(join(REPO_ROOT, 'bpf/.output/invalid.bpf.o'));
    try {
      assert.throws(
        () => obj.load(),
        (err: unknown) => {
          assert.ok(err instanceof VerifierError, String(err));
          assert.equal(err.program, 'out_of_bounds');
          // The lines still reached the capture, before the sink.
          assert.ok((err.details.libbpfLog as string[]).includes("libbpf: prog 'out_of_bounds': failed to load: -13"));
          return true;
        },
      );
      assert.ok(libbpfLogStats.sinkErrors > before, `${libbpfLogStats.sinkErrors} sink errors counted`);
    } finally {
      setLibbpfLogSink(() => {});
      obj.close();
    }
  });

  test('without privileges: KSPAN_ERR_PRIVILEGE saying what to grant; doctor fails the check', () => {
    const withoutCaps = (args: string[]) =>
      // root without capabilities: files stay readable, bpf() is refused
      spawnSync('setpriv', ['--inh-caps=-all', '--bounding-set=-all', KSPAN_BIN, ...args], {
        encoding: 'utf8',
      });
    const ev = withoutCaps(['events', '--pid', '1', '--duration', '1']);
    assert.equal(ev.status, 1);
    assert.match(ev.stderr, /kspan: KSPAN_ERR_PRIVILEGE: .*CAP_BPF and CAP_PERFMON/);
    const doc = withoutCaps(['doctor', '--json']);
    assert.equal(doc.status, 1);
    const checks = (JSON.parse(doc.stdout) as { checks: { name: string; status: string; fix?: string }[] }).checks;
    const priv = checks.find((c) => c.name === 'privileges');
    assert.equal(priv?.status, 'fail');
    assert.match(priv?.fix ?? '', /CAP_BPF/);
  });

  test('loads under a profiler: SIGPROF every millisecond does not abort verification', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kspan-prof-'));
    try {
      const r = spawnSync(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${dir}`, '--cpu-prof-interval=500',
        join(REPO_ROOT, 'src/cli/main.ts'), 'events', '--pid', String(process.pid), '--duration', '0.5'], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /"msg":"tracing"/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('doctor as root: every check passes and the I/O path is named', () => {
    const doc = spawnSync(KSPAN_BIN, ['doctor', '--json'], { encoding: 'utf8' });
    assert.equal(doc.status, 0, doc.stdout + doc.stderr);
    const r = JSON.parse(doc.stdout) as { ok: boolean; checks: { name: string; status: string; detail: string }[] };
    assert.equal(r.ok, true);
    for (const name of ['kernel', 'btf', 'privileges', 'tracefs', 'libbpf', 'hook:tracepoint', 'hook:tp_btf+socket_cookie', 'hook:ringbuf', 'hook:uprobe', 'kspan-programs']) {
      assert.equal(r.checks.find((c) => c.name === name)?.status, 'ok', name);
    }
    assert.match(r.checks.find((c) => c.name === 'io-path')!.detail, /sock_send_length|syscall tracepoints/);
  });

  test('PIDs are selected at run time without reloading programs', async () => {
    const group = new ProcessGroup();
    const records: KernelRecord[] = [];
    const tracer = TcpTracer.open({ onRecord: (r) => records.push(r) });
    try {
      tracer.start();
      const idsBefore = progIdsOf(process.pid);
      assert.ok(idsBefore.length >= 9, `the tracer holds its programs (${idsBefore.length})`);
      const server = await startServer(group, ['--conns', '2', '--step', '--req-bytes', '77', '--resp-bytes', '777']);
      const args = ['--port', String(server.port), '--req-bytes', '77', '--resp-bytes', '777'];
      const c1 = startClient(group, args);
      server.proc.send('go');
      c1.send('go');
      await server.proc.waitLine(/^served 1$/);
      await new Promise((r) => setTimeout(r, 200));
      assert.deepEqual(records.filter((r) => r.pid === server.proc.pid), [], 'not selected: nothing');

      tracer.addPid(server.proc.pid);
      const c2 = startClient(group, args);
      server.proc.send('go');
      c2.send('go');
      await server.proc.waitLine(/^done$/);
      await new Promise((r) => setTimeout(r, 300));
      const mine = records.filter((r) => r.pid === server.proc.pid);
      assert.equal(mine.filter((r) => r.type === 'accept').length, 1);
      assert.equal(mine.filter((r) => r.type === 'recv').reduce((a, r) => a + r.bytes, 0), 77);
      assert.equal(mine.filter((r) => r.type === 'send').reduce((a, r) => a + r.bytes, 0), 777);
      const idsAfter = progIdsOf(process.pid);
      assert.deepEqual(idsAfter, idsBefore, 'the same programs: nothing was reloaded');
    } finally {
      await tracer.stop();
      await group.killAll();
    }
  });

  for (const variant of ['flush_idle', 'flush_idle_walk']) test(`flushIdle closes the aggregate a quiet keep-alive connection holds (${variant})`, async (t) => {
    const group = new ProcessGroup();
    const records: KernelRecord[] = [];
    // The walking variant is what kernels without bpf_loop get: force it by refusing the queued one.
    if (variant === 'flush_idle_walk') process.env.KSPAN_FAULT_REJECT_PROGRAMS = 'flush_idle';
    const tracer = TcpTracer.open({ onRecord: (r) => records.push(r) });
    delete process.env.KSPAN_FAULT_REJECT_PROGRAMS;
    try {
      if (!tracer.plan.load(variant)) {
        // Kernels that refuse a queue map in a sleepable program (6.1) get the walk.
        const d = tracer.plan.decisions.get(variant);
        assert.equal(variant, 'flush_idle');
        assert.equal(tracer.plan.load('flush_idle_walk'), true);
        t.skip(`this kernel refuses the queued variant: ${d && !d.load ? d.reason : '?'}`);
        return;
      }
      assert.deepEqual(tracer.plan.off, []);
      tracer.start();
      // the server waits for a second request that never comes: its socket stays open
      const server = await startServer(group, ['--requests', '2', '--req-bytes', '50', '--resp-bytes', '5000']);
      tracer.addPid(server.proc.pid);
      const client = startClient(group, ['--port', String(server.port), '--req-bytes', '50', '--resp-bytes', '5000', '--hold']);
      tracer.addPid(client.pid);
      server.proc.send('go');
      client.send('go');
      await client.waitLine(/^held$/);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(records.filter((r) => r.type === 'send' && r.pid === server.proc.pid).length, 0, 'the response is still open');
      assert.equal(tracer.flushIdle(100_000_000n), 2, 'both ends had an idle aggregate');
      // the ring reader delivers them on its next wake-up (late on a busy machine)
      for (let i = 0; i < 200 && !records.some((r) => r.type === 'send' && r.pid === server.proc.pid); i++) {
        await new Promise((r) => setTimeout(r, 50));
      }
      await new Promise((r) => setTimeout(r, 100));
      const sends = records.filter((r) => r.type === 'send' && r.pid === server.proc.pid);
      assert.equal(sends.length, 1);
      assert.equal(sends[0].bytes, 5000);
      // Both ends' bytes were acknowledged by then; the queued flush knows each socket and says so, the walk knows cookies only.
      const clientSends = records.filter((r) => r.type === 'send' && r.pid === client.pid);
      assert.deepEqual([...sends, ...clientSends].map((r) => [r.bytes, r.sentAcked]), [[5000, variant === 'flush_idle'], [50, variant === 'flush_idle']]);
      const recvs = records.filter((r) => r.type === 'recv' && r.pid === server.proc.pid);
      assert.equal(recvs.reduce((a, r) => a + r.bytes, 0), 50);
      assert.equal(tracer.flushIdle(100_000_000n), 0, 'nothing left open');
      assert.equal(tracer.counters().KSPAN_C_IDLE_QUEUE_FULL, 0);
      client.send('close');
      await client.waitLine(/^done$/);
    } finally {
      await tracer.stop();
      await group.killAll();
    }
  });

  test('after SIGKILL nothing kspan loaded stays in the kernel', async () => {
    const group = new ProcessGroup();
    try {
      const events = await startEvents(group, [process.pid]);
      const ourIds = new Set(progIdsOf(events.pid));
      const ours = progs().filter((p) => ourIds.has(p.id));
      assert.ok(ours.length >= 9, `kspan events holds its programs (${ours.length})`);
      events.child.kill('SIGKILL');
      await events.exited;
      // the kernel frees programs once their last fd and link are gone
      let left: ProgInfo[] = [];
      for (let i = 0; i < 50; i++) {
        const ids = new Set(progs().map((p) => p.id));
        left = ours.filter((p) => ids.has(p.id));
        if (!left.length) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.deepEqual(left.map((p) => p.name), []);
      const links = JSON.parse(execFileSync('bpftool', ['link', 'list', '-j'], { encoding: 'utf8' })) as { prog_id: number }[];
      assert.deepEqual(links.filter((l) => ourIds.has(l.prog_id)), []);
    } finally {
      await group.killAll();
    }
  });
});
