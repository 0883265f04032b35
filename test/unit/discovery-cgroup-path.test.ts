/** The cgroup path parser: container ids and pod uids as each runtime names them, v1 and v2. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cgroupResourceAttributes, idsFromCgroupPath, parseProcCgroup } from '../../src/discovery/cgroup-path.ts';

const ID = 'd4f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f';
const UID = '0f6a9c1e-2b3d-4e5f-8a7b-1c2d3e4f5a6b';

test('cgroup v2, docker with the systemd driver', () => {
  const info = parseProcCgroup(`0::/system.slice/docker-${ID}.scope\n`);
  assert.deepEqual(info, { path: `/system.slice/docker-${ID}.scope`, paths: [`/system.slice/docker-${ID}.scope`], containerId: ID });
});

test('cgroup v2, containerd under kubelet (systemd driver): pod uid with underscores, container scope', () => {
  const path = `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID.replaceAll('-', '_')}.slice/cri-containerd-${ID}.scope`;
  const info = parseProcCgroup(`0::${path}\n`);
  assert.equal(info.containerId, ID);
  assert.equal(info.podUid, UID);
  assert.deepEqual(cgroupResourceAttributes(info), { 'container.id': ID, 'k8s.pod.uid': UID });
});

test('CRI-O: the container scope, never conmon\'s', () => {
  const pod = `/kubepods.slice/kubepods-pod${UID.replaceAll('-', '_')}.slice`;
  assert.deepEqual(idsFromCgroupPath(`${pod}/crio-${ID}.scope`), { containerId: ID, podUid: UID });
  assert.deepEqual(idsFromCgroupPath(`${pod}/crio-conmon-${ID}.scope`), { podUid: UID });
});

test('podman (libpod) and docker with the cgroupfs driver', () => {
  assert.equal(idsFromCgroupPath(`/machine.slice/libpod-${ID}.scope`).containerId, ID);
  assert.equal(idsFromCgroupPath(`/docker/${ID}`).containerId, ID);
});

test('kubelet with the cgroupfs driver: pod<uid with dashes>/<id>', () => {
  assert.deepEqual(idsFromCgroupPath(`/kubepods/besteffort/pod${UID}/${ID}`), { containerId: ID, podUid: UID });
});

test('cgroup v1: one line per hierarchy; the first one naming a container is taken', () => {
  const text = [
    '12:pids:/',
    `11:memory:/kubepods/burstable/pod${UID}/${ID}`,
    `1:name=systemd:/kubepods/burstable/pod${UID}/${ID}`,
    '',
  ].join('\n');
  const info = parseProcCgroup(text);
  assert.equal(info.path, '/');
  assert.deepEqual(info.paths, ['/', `/kubepods/burstable/pod${UID}/${ID}`]);
  assert.equal(info.containerId, ID);
  assert.equal(info.podUid, UID);
});

test('hybrid v1 + v2: the v2 path is the path; a host process names no container', () => {
  const info = parseProcCgroup('4:memory:/process_api/40620dff0ca421e26fe893d40d0937b8\n1:cpu:/\n0::/user.slice/session-1.scope\n');
  assert.equal(info.path, '/user.slice/session-1.scope');
  assert.equal(info.containerId, undefined, '32 hex digits are no container id');
  assert.equal(info.podUid, undefined);
  assert.deepEqual(cgroupResourceAttributes(info), {});
});

test('empty or garbled text: the root, nothing named', () => {
  assert.deepEqual(parseProcCgroup(''), { path: '/', paths: [] });
  assert.deepEqual(parseProcCgroup('garbage\n'), { path: '/', paths: [] });
});
