/**
 * Sidecar mode, as Kubernetes' shareProcessNamespace runs it: the service and
 * kspan in one pid namespace that is not the host's (unshare --pid --fork
 * --mount-proc stands in for the pod; sleep is its pause process), kspan
 * selecting the service by --exe or --container (a cgroup named the way
 * containerd names a container's), exporting over OTLP. The pids in the spans
 * are the namespace's (what the service itself sees), the Resource carries
 * container.id, and the kernel spans hang under the service's own spans.
 * The scheduler programs too: a target in the namespace gets its thread.sched
 * span (namespace pid and tid) under its span.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { cleanExit, KSPAN_BIN } from '../helpers/kspan-cli.ts';
import { OtlpReceiver } from '../helpers/otlp-receiver.ts';
import { ProcessGroup, type Proc } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { preforkDir, request, type Exchange } from '../helpers/discovery-fixtures.ts';
import { startSchedFixture } from '../helpers/sched-fixture.ts';

/** The first child of `pid` (nsenter and unshare fork the program they run). */
async function childOf(pid: number): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
    if (kids) return Number(kids.split(/\s+/)[0]);
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`process ${pid} has no child`);
}

describe('sidecar: a pid namespace shared with the service', e2eOptions(), () => {
  const group = new ProcessGroup();
  const receiver = new OtlpReceiver({ protocol: 'grpc' });
  const cgroupRoot = existsSync('/sys/fs/cgroup/unified/cgroup.procs') ? '/sys/fs/cgroup/unified' : '/sys/fs/cgroup';
  const base = join(cgroupRoot, `kspan-sidecar-${randomBytes(4).toString('hex')}`);
  const containerId = randomBytes(32).toString('hex');
  const scope = join(base, `cri-containerd-${containerId}.scope`);
  let pause = 0;
  after(async () => {
    // The namespace's pid 1 gone, the kernel kills every process in it.
    if (pause) process.kill(pause, 'SIGKILL');
    await group.killAll();
    await receiver.stop();
    for (const d of [scope, base]) {
      for (let i = 0; i < 40 && existsSync(d); i++) {
        try {
          rmdirSync(d);
        } catch {
          await new Promise((r) => setTimeout(r, 50)); // its last process not reaped yet
        }
      }
    }
  });

  test('kspan in the namespace selects the service by --exe and by --container; namespace pids, container.id, parentage; thread.sched by namespace pid', async () => {
    await receiver.start();
    const pod = group.start('unshare', ['--pid', '--fork', '--mount-proc', 'sleep', '600']);
    pause = await childOf(pod.pid); // pid 1 of the namespace
    const inPod = (cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env) =>
      group.start('nsenter', ['-t', String(pause), '-p', '-m', cmd, ...args], { env });
    const service = `sidecar-svc-${process.pid}`;
    const server = inPod(join(preforkDir(), 'pub_server'), [], { ...process.env, OTEL_SERVICE_NAME: service });
    const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
    const serverHostPid = await childOf(server.pid);
    mkdirSync(base);
    mkdirSync(scope);
    writeFileSync(join(scope, 'cgroup.procs'), String(serverHostPid));

    const runAgent = async (selector: string[]) => {
      const agent: Proc = inPod(KSPAN_BIN, ['run', ...selector, '--otlp-endpoint', receiver.endpoint]);
      await agent.waitStderr(/"msg":"tracing"/, 20_000);
      const exchanges: Exchange[] = [];
      for (let i = 0; i < 3; i++) exchanges.push(await request(port));
      await new Promise((r) => setTimeout(r, 300));
      process.kill(await childOf(agent.pid), 'SIGTERM');
      const { code } = await agent.exited;
      assert.equal(code, cleanExit(agent.stderr), agent.stderr.join('\n'));
      return { agent, exchanges };
    };

    // Scheduler time of a target in the namespace: found by its namespace pid at sched_switch.
    const fx = await startSchedFixture(group, ['nsenter', '-t', String(pause), '-p', '-m']);
    assert.notEqual(fx.nsPid, await childOf(fx.pid), 'the fixture sees another pid than the host');
    const agent = inPod(KSPAN_BIN, ['run', '--pid', String(fx.nsPid), '--otlp-endpoint', receiver.endpoint]);
    await agent.waitStderr(/"msg":"tracing"/, 20_000);
    const traceId = randomBytes(16).toString('hex');
    // 200 ms: the fixture's watcher reads /proc's wchan halfway through, which in
    // an emulated guest came after a 50 ms sleep had ended (wchan not read).
    const job = await fx.run('sleeps', 200, { traceId, spanId: 'a1'.repeat(8), sampled: true }, 1);
    process.kill(await childOf(agent.pid), 'SIGTERM');
    assert.equal((await agent.exited).code, cleanExit(agent.stderr), agent.stderr.join('\n'));
    const sched = receiver.spans.filter((s) => s.name === 'thread.sched' && s.traceId === traceId);
    assert.equal(sched.length, 1, `one thread.sched span: ${agent.stderr.join('\n')}`);
    assert.equal(sched[0].parentSpanId, 'a1'.repeat(8));
    assert.deepEqual([sched[0].attributes['process.pid'], sched[0].attributes['thread.id']], [fx.nsPid, fx.workerTid]);
    assert.equal(job.tid, fx.workerTid);
    assert.equal(sched[0].attributes['kspan.sched.voluntary_switches'], 1);
    const off = sched[0].events.filter((e) => e.attributes['kspan.sched.off_cpu.kind'] === 'blocked' && e.attributes['kspan.sched.syscall'] === 'clock_nanosleep');
    assert.equal(off.length, 1);
    assert.match(job.wchan ?? '', /^\w+$/, `the kernel's /proc wchan: ${job.wchan}`);
    assert.equal(off[0].attributes['kspan.sched.wchan'], job.wchan);
    fx.proc.child.stdin!.end();
    await fx.proc.exited;

    for (const selector of [['--exe', '**/pub_server'], ['--container', containerId.slice(0, 12)]]) {
      const { agent, exchanges } = await runAgent(selector);
      const nsPid = exchanges[0].pid;
      assert.notEqual(nsPid, serverHostPid, 'the service sees another pid than the host');
      assert.ok(agent.stderr.some((l) => new RegExp(`"target_pid":${nsPid},"why":"scan","msg":"target selected"`).test(l)), `${selector[0]}: selected by the scan`);
      const spans = receiver.spans; // kspan exported everything before it exited 0
      for (const x of exchanges) {
        const send = spans.filter((s) => s.name === 'tcp.send' && s.parentSpanId === x.spanId);
        assert.equal(send.length, 1, `${selector[0]}: one tcp.send under ${x.spanId}`);
        assert.equal(send[0].traceId, x.traceId);
        assert.equal(send[0].attributes['process.pid'], nsPid);
        assert.equal(send[0].resource['container.id'], containerId);
        assert.equal(send[0].resource['service.name'], service);
        assert.equal(send[0].resource['process.pid'], nsPid);
      }
    }
  });
});
