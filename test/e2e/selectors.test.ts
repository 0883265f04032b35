/**
 * Each selector on the real kernel, alone and with an exclude: which of a
 * publishing and a plain server become targets (target lines), and whose
 * connections leave records. Container ids and pod uids come from real cgroups
 * made by the test (cgroup v2, and the v1 name=systemd hierarchy), named the way
 * containerd and docker name theirs.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { startEvents, stopEvents, type EventLine } from '../helpers/kspan-cli.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { preforkDir, request, selectedLine, startPrefork, type Server, discoveryCounters } from '../helpers/discovery-fixtures.ts';

const V2 = '/sys/fs/cgroup/unified';
const V1 = '/sys/fs/cgroup/systemd';
const hierarchy = existsSync(join(V2, 'cgroup.procs')) ? V2 : '/sys/fs/cgroup';

/** Cgroups made by a test, removed (deepest first) once their processes are gone. */
class Cgroups {
  readonly #dirs: string[] = [];
  make(root: string, rel: string): string {
    const parts = rel.split('/').filter(Boolean);
    for (let i = 1; i <= parts.length; i++) {
      const dir = join(root, ...parts.slice(0, i));
      if (!existsSync(dir)) {
        mkdirSync(dir);
        this.#dirs.push(dir);
      }
    }
    return join(root, ...parts);
  }
  static move(dir: string, pid: number): void {
    writeFileSync(join(dir, 'cgroup.procs'), String(pid));
  }
  removeAll(): void {
    for (const d of this.#dirs.splice(0).reverse()) {
      try {
        rmdirSync(d);
      } catch {
        // still populated by a process that has not been reaped: the next run's names differ
      }
    }
  }
}

describe('selectors', e2eOptions(), () => {
  const group = new ProcessGroup();
  const cgroups = new Cgroups();
  after(async () => {
    await group.killAll();
    cgroups.removeAll();
  });

  /** Starts a pub and a plain server (tagged), places them, runs kspan with `args`, drives 2 requests each; returns who was traced. */
  async function selected(args: (s: { pub: Server; plain: Server; tag: string }) => string[], place?: (s: { pub: Server; plain: Server }) => void) {
    const tag = `sel-${randomBytes(4).toString('hex')}`;
    const pub = await startPrefork(group, 'pub_server', ['--tag', tag]);
    const plain = await startPrefork(group, 'plain_server', ['--tag', tag]);
    place?.({ pub, plain });
    const events = await startEvents(group, [], args({ pub, plain, tag }));
    for (let i = 0; i < 2; i++) {
      await request(pub.port);
      await request(plain.port);
    }
    await new Promise((r) => setTimeout(r, 300));
    const all = await stopEvents(events);
    pub.proc.child.stdin!.end();
    plain.proc.child.stdin!.end();
    await Promise.all([pub.proc.exited, plain.proc.exited]);
    const names = new Map([[pub.proc.pid, 'pub'], [plain.proc.pid, 'plain']]);
    const targets = all.filter((e) => e.type === 'target' && names.has(e.pid)).map((e) => names.get(e.pid)!).sort();
    const accepts = (pid: number) => all.filter((e: EventLine) => e.type === 'accept' && e.pid === pid).length;
    for (const [pid, name] of names) assert.equal(accepts(pid), targets.includes(name) ? 2 : 0, `${name}: accepts`);
    return targets;
  }

  test('--exe GLOB, and --exclude-exe', async () => {
    const dir = preforkDir();
    assert.deepEqual(await selected(() => ['--exe', '**/plain_server']), ['plain']);
    assert.deepEqual(await selected(() => ['--exe', `${dir}/*`, '--exclude-exe', '**/plain_server']), ['pub']);
  });

  test('--comm, and --exclude-pid', async () => {
    assert.deepEqual(await selected(() => ['--comm', 'pub_server']), ['pub']);
    assert.deepEqual(await selected(({ pub }) => ['--comm', 'pub_server', '--comm', 'plain_server', '--exclude-pid', String(pub.proc.pid)]), ['plain']);
  });

  test('--cmdline REGEX, and --exclude-comm', async () => {
    assert.deepEqual(await selected(({ tag }) => [`--cmdline=--tag ${tag}$`]), ['plain', 'pub']);
    assert.deepEqual(await selected(({ tag }) => [`--cmdline=--tag ${tag}$`, '--exclude-comm', 'pub_server']), ['plain']);
  });

  test('--container ID (cgroup v2, containerd naming), --cgroup PATH, --k8s-pod-uid, and --exclude-container', async () => {
    const base = `kspan-test-${randomBytes(4).toString('hex')}`;
    const uid = randomUUID();
    const pubId = randomBytes(32).toString('hex');
    const plainId = randomBytes(32).toString('hex');
    const pod = `${base}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${uid.replaceAll('-', '_')}.slice`;
    const place = ({ pub, plain }: { pub: Server; plain: Server }) => {
      Cgroups.move(cgroups.make(hierarchy, `${pod}/cri-containerd-${pubId}.scope`), pub.proc.pid);
      Cgroups.move(cgroups.make(hierarchy, `${pod}/cri-containerd-${plainId}.scope`), plain.proc.pid);
    };
    assert.deepEqual(await selected(() => ['--container', pubId.slice(0, 12)], place), ['pub']);
    assert.deepEqual(await selected(() => ['--cgroup', `/${pod}`], place), ['plain', 'pub']);
    assert.deepEqual(await selected(() => ['--k8s-pod-uid', uid], place), ['plain', 'pub']);
    assert.deepEqual(await selected(() => ['--k8s-pod-uid', uid, '--exclude-container', pubId], place), ['plain']);
  });

  test('--container ID (cgroup v1 name=systemd, docker cgroupfs naming)', { skip: existsSync(join(V1, 'cgroup.procs')) ? undefined : 'no v1 name=systemd hierarchy' }, async () => {
    const base = `kspan-test-${randomBytes(4).toString('hex')}`;
    const id = randomBytes(32).toString('hex');
    const place = ({ plain }: { pub: Server; plain: Server }) => Cgroups.move(cgroups.make(V1, `${base}/docker/${id}`), plain.proc.pid);
    assert.deepEqual(await selected(() => ['--container', id], place), ['plain']);
  });

  test('--port N: a listener at start (scan), and --exclude-port', async () => {
    assert.deepEqual(await selected(({ plain }) => ['--port', String(plain.port)]), ['plain']);
    assert.deepEqual(await selected(({ pub, plain }) => ['--port', String(plain.port), '--port', String(pub.port), '--exclude-port', String(pub.port)]), ['plain']);
  });

  test('--port N: a server started later is selected in the kernel at its first connection on that port', async () => {
    const probe = await startPrefork(group, 'plain_server');
    const port = probe.port;
    probe.proc.child.stdin!.end();
    await probe.proc.exited;
    const events = await startEvents(group, [], ['--port', String(port)]);
    // It execs (judged: not on the port yet, so not ruled out), then listens.
    const lateProc = group.start(join(preforkDir(), 'plain_server'), ['--port', String(port), '--listen-on-stdin']);
    await lateProc.waitLine(/^ready$/);
    await new Promise((r) => setTimeout(r, 500));
    lateProc.send('listen');
    await lateProc.waitLine(/^port \d+$/);
    const late = { proc: lateProc, port };
    const other = await startPrefork(group, 'plain_server');
    await request(other.port); // another port: no CHECK, never looked at
    await request(late.port); // this accept is what selects it
    assert.equal((await events.waitStderr(selectedLine(late.proc.pid), 10_000))[1], 'check');
    await request(late.port);
    await request(late.port);
    await new Promise((r) => setTimeout(r, 300));
    const all = await stopEvents(events);
    late.proc.child.stdin!.end();
    other.proc.child.stdin!.end();
    await Promise.all([late.proc.exited, other.proc.exited]);
    assert.equal(all.filter((e) => e.type === 'accept' && e.pid === late.proc.pid).length, 2, 'the two connections after the selecting one');
    assert.equal(all.filter((e) => e.pid === other.proc.pid).length, 0);
    const counters = discoveryCounters(events.stderr);
    // The port is local for the server, and peer for this test's process, which connected to it: both selected.
    assert.equal(counters.found, 2);
    assert.equal(selectedLine(process.pid).exec(events.stderr.join('\n'))?.[1], 'check');
  });
});
