/**
 * What the selectors look at, read from /proc/PID: exe, comm, cmdline, cgroup,
 * and (only when a --port selector asks) the ports of its TCP sockets. A
 * process that is gone, or a fact it does not let us read, leaves the fact
 * unknown; the selectors treat unknown as "does not match".
 */
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { cgroupResourceAttributes, parseProcCgroup } from './cgroup-path.ts';
import type { ProcessFacts } from './selectors.ts';

function tryRead<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch {
    return undefined;
  }
}

export function readProcessFacts(pid: number, opts: { ports?: boolean; portMatched?: boolean } = {}): ProcessFacts {
  const dir = `/proc/${pid}`;
  const exe = tryRead(() => readlinkSync(`${dir}/exe`).replace(/ \(deleted\)$/, ''));
  const comm = tryRead(() => readFileSync(`${dir}/comm`, 'utf8').replace(/\n$/, ''));
  const cmdline = tryRead(() => readFileSync(`${dir}/cmdline`, 'utf8').replace(/\0$/, '').split('\0').join(' '));
  const cgroup = tryRead(() => parseProcCgroup(readFileSync(`${dir}/cgroup`, 'utf8')));
  return { pid, exe, comm, cmdline, cgroup, ports: opts.ports ? tcpPorts(pid) : undefined, portMatched: opts.portMatched };
}

/** Every process id in /proc now (the one scan at start, and at a policy swap). */
export function listPids(): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) if (/^\d+$/.test(name)) out.push(Number(name));
  return out;
}

/** Socket inode → [local port, peer port], per network namespace (by its inode), for one scan. */
const tablesByNetns = new Map<number, Map<string, [number, number]>>();

/** Forgets the port tables read so far (call at the end of a scan: sockets come and go). */
export function forgetPortTables(): void {
  tablesByNetns.clear();
}

function tcpTable(pid: number): Map<string, [number, number]> | undefined {
  const ns = tryRead(() => statSync(`/proc/${pid}/ns/net`).ino);
  if (ns === undefined) return undefined;
  let table = tablesByNetns.get(ns);
  if (table) return table;
  table = new Map();
  for (const f of ['tcp', 'tcp6']) {
    const text = tryRead(() => readFileSync(`/proc/${pid}/net/${f}`, 'latin1')) ?? '';
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10) continue;
      const port = (addr: string) => parseInt(addr.slice(addr.lastIndexOf(':') + 1), 16);
      table.set(cols[9], [port(cols[1]), port(cols[2])]);
    }
  }
  tablesByNetns.set(ns, table);
  return table;
}

/** Local and peer ports of the process's TCP sockets (0, an unconnected peer, left out). */
export function tcpPorts(pid: number): ReadonlySet<number> | undefined {
  const table = tcpTable(pid);
  const fds = tryRead(() => readdirSync(`/proc/${pid}/fd`));
  if (!table || !fds) return undefined;
  const out = new Set<number>();
  for (const fd of fds) {
    const link = tryRead(() => readlinkSync(`/proc/${pid}/fd/${fd}`));
    const m = link && /^socket:\[(\d+)\]$/.exec(link);
    const ports = m && table.get(m[1]);
    if (!ports) continue;
    if (ports[0]) out.add(ports[0]);
    if (ports[1]) out.add(ports[1]);
  }
  return out;
}

/** container.id and k8s.pod.uid of a process, from its cgroup path ({} when it names neither, or is gone). */
export function containerResource(pid: number): Record<string, string> {
  const info = tryRead(() => parseProcCgroup(readFileSync(`/proc/${pid}/cgroup`, 'utf8')));
  return info ? cgroupResourceAttributes(info) : {};
}

/** The initial pid namespace's inode number (PROC_PID_INIT_INO): fixed by the kernel. */
const INIT_PID_NS_INO = 0xeffffffcn;

/** This process's pid namespace (device and inode of /proc/self/ns/pid), and whether it is the initial one. */
export function ownPidNamespace(): { dev: bigint; ino: bigint; initial: boolean } {
  const st = statSync('/proc/self/ns/pid', { bigint: true });
  return { dev: st.dev, ino: st.ino, initial: st.ino === INIT_PID_NS_INO };
}
