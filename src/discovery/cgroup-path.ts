/**
 * A process's cgroup membership, from the text of /proc/PID/cgroup: its path,
 * and the container id and Kubernetes pod uid that runtimes write into it.
 * Pure (the caller reads the file), so every runtime's naming is unit-tested.
 *
 * cgroup v2 has one line, `0::/path`; v1 has one per hierarchy,
 * `ID:controllers:/path`. The naming kspan knows:
 *
 *   docker (systemd driver)      /system.slice/docker-<64 hex>.scope
 *   docker (cgroupfs driver)     /docker/<64 hex>
 *   containerd under kubelet     /kubepods.slice/kubepods-burstable.slice/
 *                                  kubepods-burstable-pod<uid, _ for ->.slice/cri-containerd-<64 hex>.scope
 *   CRI-O                        .../kubepods-pod<uid>.slice/crio-<64 hex>.scope (crio-conmon-… is conmon: no container)
 *   podman                       .../libpod-<64 hex>.scope
 *   kubelet, cgroupfs driver     /kubepods/burstable/pod<uid>/<64 hex>
 */

export interface CgroupInfo {
  /** The v2 path, else the first v1 hierarchy's; '/' when unknown. */
  path: string;
  /** Every path the process is in (v2 and each v1 hierarchy), for --cgroup. */
  paths: string[];
  /** 64 lowercase hex digits, when a runtime named the cgroup after a container. */
  containerId?: string;
  /** With dashes (8-4-4-4-12), when the cgroup is under a Kubernetes pod's. */
  podUid?: string;
}

const CONTAINER = /^(?:(?:docker|cri-containerd|containerd|crio|libpod)-)?([0-9a-f]{64})(?:\.scope)?$/;
const POD = /(?:^|-)pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$/;

/** The container id and pod uid a cgroup path names, if any. */
export function idsFromCgroupPath(path: string): Pick<CgroupInfo, 'containerId' | 'podUid'> {
  const out: Pick<CgroupInfo, 'containerId' | 'podUid'> = {};
  for (const part of path.split('/')) {
    if (part.startsWith('crio-conmon-')) continue;
    const c = CONTAINER.exec(part);
    if (c) out.containerId = c[1];
    const p = POD.exec(part);
    if (p) out.podUid = p[1].replaceAll('_', '-');
  }
  return out;
}

/** Parses /proc/PID/cgroup. */
export function parseProcCgroup(text: string): CgroupInfo {
  let v2: string | undefined;
  const v1: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line.trim());
    if (!m) continue;
    if (m[1] === '0' && m[2] === '') v2 = m[3];
    else v1.push(m[3]);
  }
  const paths = [...new Set([...(v2 !== undefined ? [v2] : []), ...v1])];
  const info: CgroupInfo = { path: v2 ?? v1[0] ?? '/', paths };
  for (const p of paths) {
    const ids = idsFromCgroupPath(p);
    if (ids.containerId && !info.containerId) info.containerId = ids.containerId;
    if (ids.podUid && !info.podUid) info.podUid = ids.podUid;
  }
  return info;
}

/** Resource attributes for the target: container.id and k8s.pod.uid, when its cgroup names them. */
export function cgroupResourceAttributes(info: CgroupInfo): Record<string, string> {
  const out: Record<string, string> = {};
  if (info.containerId) out['container.id'] = info.containerId;
  if (info.podUid) out['k8s.pod.uid'] = info.podUid;
  return out;
}
