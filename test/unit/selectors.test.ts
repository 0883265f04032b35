/** Selectors: kinds AND together, values of a kind OR, excludes win, --all needs context, ports may wait for the kernel. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { judge, needsDiscovery, NO_CRITERIA, selectionFromSettings, type ProcessFacts, type Selection } from '../../src/discovery/selectors.ts';
import { loadConfig } from '../../src/core/config.ts';

const ID = 'd4f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f';
const UID = '0f6a9c1e-2b3d-4e5f-8a7b-1c2d3e4f5a6b';
const nginx: ProcessFacts = {
  pid: 42,
  exe: '/usr/sbin/nginx',
  comm: 'nginx',
  cmdline: 'nginx: worker process --port 8080',
  cgroup: { path: `/kubepods/pod${UID}/${ID}`, paths: [`/kubepods/pod${UID}/${ID}`], containerId: ID, podUid: UID },
};
const sel = (include: Partial<typeof NO_CRITERIA>, exclude: Partial<typeof NO_CRITERIA> = {}, all = false): Selection => ({
  all,
  include: { ...NO_CRITERIA, ...include },
  exclude: { ...NO_CRITERIA, ...exclude },
});

test('each kind alone selects what it names', () => {
  assert.equal(judge(sel({ pids: [42] }), nginx), 'selected');
  assert.equal(judge(sel({ exe: ['/usr/sbin/*'] }), nginx), 'selected');
  assert.equal(judge(sel({ exe: ['**/nginx'] }), nginx), 'selected');
  assert.equal(judge(sel({ exe: ['/usr/bin/*'] }), nginx), 'unmatched');
  assert.equal(judge(sel({ comm: ['nginx'] }), nginx), 'selected');
  assert.equal(judge(sel({ comm: ['ngin'] }), nginx), 'unmatched', 'comm is exact');
  assert.equal(judge(sel({ cmdline: ['--port 80\\d\\d$'] }), nginx), 'selected');
  assert.equal(judge(sel({ container: [ID.slice(0, 12)] }), nginx), 'selected', 'a prefix of the id');
  assert.equal(judge(sel({ container: ['ffff'] }), nginx), 'unmatched');
  assert.equal(judge(sel({ cgroup: [`/kubepods/pod${UID}`] }), nginx), 'selected', 'a cgroup above');
  assert.equal(judge(sel({ cgroup: ['/kubepods/pod'] }), nginx), 'unmatched', 'a path prefix is not a cgroup above');
  assert.equal(judge(sel({ podUid: [UID.replaceAll('-', '_').toUpperCase()] }), nginx), 'selected');
});

test('kinds combine with AND, values of one kind with OR', () => {
  assert.equal(judge(sel({ comm: ['nginx'], exe: ['/usr/bin/*', '/usr/sbin/*'] }), nginx), 'selected');
  assert.equal(judge(sel({ comm: ['nginx'], exe: ['/usr/bin/*'] }), nginx), 'unmatched');
});

test('an exclude wins over any include', () => {
  assert.equal(judge(sel({ comm: ['nginx'] }, { container: [ID] }), nginx), 'excluded');
  assert.equal(judge(sel({ exe: ['**'] }, { pids: [42] }), nginx), 'excluded');
  assert.equal(judge(sel({ exe: ['**'] }, { pids: [43] }), nginx), 'selected');
});

test('--all: selected once it publishes (needs-context), narrowed by the includes', () => {
  assert.equal(judge(sel({}, {}, true), nginx), 'needs-context');
  assert.equal(judge(sel({ comm: ['redis'] }, {}, true), nginx), 'unmatched');
  assert.equal(judge(sel({}, { comm: ['nginx'] }, true), nginx), 'excluded');
});

test('--port: from the sockets read, or the kernel\'s word; unknown waits (needs-port), never rules out', () => {
  assert.equal(judge(sel({ ports: [8080] }), { ...nginx, ports: new Set([8080, 51000]) }), 'selected');
  assert.equal(judge(sel({ ports: [8080] }), { ...nginx, ports: new Set([9090]) }), 'needs-port');
  assert.equal(judge(sel({ ports: [8080] }), nginx), 'needs-port');
  assert.equal(judge(sel({ ports: [8080] }), { ...nginx, portMatched: true }), 'selected');
  assert.equal(judge(sel({ ports: [8080], comm: ['redis'] }), { ...nginx, portMatched: true }), 'unmatched');
  assert.equal(judge(sel({ comm: ['nginx'] }, { ports: [8080] }), { ...nginx, ports: new Set([8080]) }), 'excluded');
});

test('facts that could not be read match no include and no exclude', () => {
  const gone: ProcessFacts = { pid: 7 };
  assert.equal(judge(sel({ exe: ['**'] }), gone), 'unmatched');
  assert.equal(judge(sel({ pids: [7] }, { exe: ['**'] }), gone), 'selected');
});

test('no include and no --all selects nothing', () => {
  assert.equal(judge(sel({}, { comm: ['x'] }), nginx), 'unmatched');
});

test('from the command line: flags become a Selection; discovery only beyond a list of pids', () => {
  const c = loadConfig('events', { argv: ['--exe', '/usr/sbin/*', '--exclude-comm', 'nginx', '--port', '8080', '--k8s-pod-uid', UID.replaceAll('-', '_')] });
  const s = selectionFromSettings(c);
  assert.deepEqual(s.include, { ...NO_CRITERIA, exe: ['/usr/sbin/*'], ports: [8080], podUid: [UID] });
  assert.deepEqual(s.exclude, { ...NO_CRITERIA, comm: ['nginx'] });
  assert.equal(needsDiscovery(s), true);
  assert.equal(needsDiscovery(selectionFromSettings(loadConfig('events', { argv: ['--pid', '1'] }))), false);
  assert.equal(needsDiscovery(selectionFromSettings(loadConfig('events', { argv: ['--all'] }))), true);
});

test('bad selector values are usage errors that say what to give', () => {
  const bad = (argv: string[], msg: RegExp) => assert.throws(() => loadConfig('events', { argv }), (e: Error & { code?: string }) => e.code === 'KSPAN_ERR_USAGE' && msg.test(e.message));
  bad(['--cmdline', '(x'], /^--cmdline \(x: not a regular expression/);
  bad(['--port', '70000'], /^--port 70000: not a port/);
  bad(['--container', 'xyz'], /^--container xyz: not a container id/);
  bad(['--cgroup', 'relative'], /^--cgroup relative: not a cgroup path/);
  bad(['--k8s-pod-uid', 'nope'], /^--k8s-pod-uid nope: not a pod uid/);
  bad(['--comm', 'a-name-longer-than-15'], /^--comm a-name-longer-than-15: not a command name/);
  bad(['--exclude-comm', 'x'], /^no target: give --pid PID, --all, or a selector/);
});
