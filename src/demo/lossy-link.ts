/**
 * The demo's lossy path: two network namespaces joined by a veth pair, with an
 * iptables `statistic` rule dropping a share of the packets that reach the
 * server side. Removing the namespaces removes the veth and the rule with them
 * (once the processes inside have exited).
 *
 *   <prefix>c  192.168.77.1 ──veth──  192.168.77.2  <prefix>s  (INPUT: drop P at random)
 *
 * The namespaces are private to one demo, so the addresses never collide; the
 * names carry the demo's pid so that several demos can run at once.
 *
 * The rule sends the packets it picks to a chain that drops them by kind, so the
 * summary can say what was dropped: SYNs, FINs, segments with data, and pure
 * ACKs (a TCP header and no data: 80 bytes or less with IP; every data segment
 * the demo's frontend sends carries a whole HTTP request, far longer).
 */
import { execFileSync } from 'node:child_process';
import { KspanError } from '../core/errors.ts';

export const DEMO_NETNS_PREFIX = 'kspan-demo-';

export interface LossyLink {
  client: string;
  server: string;
  clientAddr: string;
  serverAddr: string;
  /** argv prefix that runs a command inside a namespace. */
  execPrefix(ns: string): string[];
  /** Packets the iptables rule dropped so far, by kind. */
  droppedPackets(): DroppedPackets;
  /** The namespace's TCP RetransSegs counter (the kernel's own count, in segments). */
  retransSegs(ns: string): number;
  remove(): void;
}

export interface DroppedPackets {
  total: number;
  syn: number;
  fin: number;
  /** Segments carrying data (neither SYN nor FIN). */
  data: number;
  /** Pure ACKs: no data, no SYN, no FIN. */
  ack: number;
}

/** The drop chain: one rule per kind, in this order (a packet is counted by the first that matches). */
const LOSS_CHAIN = 'kspan-loss';
const LOSS_RULES: [keyof Omit<DroppedPackets, 'total'>, string[]][] = [
  ['syn', ['-p', 'tcp', '--syn']],
  ['fin', ['-p', 'tcp', '--tcp-flags', 'FIN', 'FIN']],
  ['ack', ['-p', 'tcp', '-m', 'length', '--length', '0:80']],
  ['data', []],
];

/** Packet counts of the drop chain's rules, from `iptables -L kspan-loss -v -n -x`. */
export function parseLossCounters(listing: string): DroppedPackets {
  const rows = listing.split('\n').map((l) => l.trim().split(/\s+/)).filter((f) => /^\d+$/.test(f[0]) && f[2] === 'DROP');
  const out: DroppedPackets = { total: 0, syn: 0, fin: 0, data: 0, ack: 0 };
  LOSS_RULES.forEach(([kind], i) => {
    out[kind] = Number(rows[i]?.[0] ?? 0);
    out.total += out[kind];
  });
  return out;
}

function run(cmd: string[]): string {
  return execFileSync(cmd[0], cmd.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The namespace names a demo with this pid uses. */
export function demoNamespaces(pid: number): { client: string; server: string } {
  return { client: `${DEMO_NETNS_PREFIX}${pid}-c`, server: `${DEMO_NETNS_PREFIX}${pid}-s` };
}

export function listNamespaces(): string[] {
  return run(['ip', 'netns', 'list'])
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter(Boolean);
}

export function deleteNamespace(ns: string): void {
  try {
    run(['ip', 'netns', 'del', ns]);
  } catch {
    /* already gone */
  }
}

/** Namespaces left by demos that were killed (SIGKILL) before they could clean up. */
export function removeStaleNamespaces(): string[] {
  const stale = listNamespaces().filter((ns) => {
    const m = /^kspan-demo-(\d+)-[cs]$/.exec(ns);
    if (!m) return false;
    try {
      process.kill(Number(m[1]), 0);
      return false;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ESRCH';
    }
  });
  for (const ns of stale) deleteNamespace(ns);
  return stale;
}

export interface NamespacePair {
  client: string;
  server: string;
  clientAddr: string;
  serverAddr: string;
  /** veth device names, inside the client and the server namespace. */
  clientDev: string;
  serverDev: string;
}

/**
 * Two network namespaces joined by a veth pair, a /30 on each end, links up.
 * When a step fails, what was made is removed again and the error is rethrown.
 */
export function createNamespacePair(p: NamespacePair): void {
  try {
    run(['ip', 'netns', 'add', p.client]);
    run(['ip', 'netns', 'add', p.server]);
    run(['ip', 'link', 'add', p.clientDev, 'netns', p.client, 'type', 'veth', 'peer', 'name', p.serverDev, 'netns', p.server]);
    run(['ip', '-n', p.client, 'addr', 'add', `${p.clientAddr}/30`, 'dev', p.clientDev]);
    run(['ip', '-n', p.server, 'addr', 'add', `${p.serverAddr}/30`, 'dev', p.serverDev]);
    for (const [ns, dev] of [[p.client, p.clientDev], [p.server, p.serverDev]]) {
      run(['ip', '-n', ns, 'link', 'set', dev, 'up']);
      run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    }
  } catch (err) {
    deleteNamespace(p.client);
    deleteNamespace(p.server);
    throw err;
  }
}

export function createLossyLink(lossProbability: number, pid = process.pid): LossyLink {
  const { client, server } = demoNamespaces(pid);
  const vethClient = `ksd${pid}c`;
  const vethServer = `ksd${pid}s`;
  const clientAddr = '192.168.77.1';
  const serverAddr = '192.168.77.2';
  const remove = () => {
    deleteNamespace(client);
    deleteNamespace(server);
  };
  const inNs = (ns: string, cmd: string[]) => run(['ip', 'netns', 'exec', ns, ...cmd]);
  try {
    createNamespacePair({ client, server, clientAddr, serverAddr, clientDev: vethClient, serverDev: vethServer });
    if (lossProbability > 0) {
      inNs(server, ['iptables', '-N', LOSS_CHAIN]);
      for (const [, match] of LOSS_RULES) inNs(server, ['iptables', '-A', LOSS_CHAIN, ...match, '-j', 'DROP']);
      inNs(server, ['iptables', '-A', 'INPUT', '-i', vethServer, '-m', 'statistic', '--mode', 'random',
        '--probability', String(lossProbability), '-j', LOSS_CHAIN]);
    }
  } catch (err) {
    remove();
    const stderr = (err as { stderr?: string }).stderr?.trim();
    throw new KspanError('KSPAN_ERR_PRIVILEGE', `could not set up the demo's network namespaces${stderr ? `: ${stderr}` : ''}`, {
      hint: 'the demo needs root (CAP_NET_ADMIN), iproute2 and iptables: run make setup, as root',
      cause: err,
    });
  }
  return {
    client,
    server,
    clientAddr,
    serverAddr,
    execPrefix: (ns) => ['ip', 'netns', 'exec', ns],
    droppedPackets: () =>
      lossProbability > 0
        ? parseLossCounters(inNs(server, ['iptables', '-L', LOSS_CHAIN, '-v', '-n', '-x']))
        : { total: 0, syn: 0, fin: 0, data: 0, ack: 0 },
    retransSegs: (ns) => {
      // /proc/net follows the reader's network namespace.
      const tcp = inNs(ns, ['cat', '/proc/net/snmp'])
        .split('\n')
        .filter((l) => l.startsWith('Tcp:'))
        .map((l) => l.trim().split(/\s+/));
      const col = tcp[0]?.indexOf('RetransSegs') ?? -1;
      return col > 0 && tcp[1] ? Number(tcp[1][col]) : 0;
    },
    remove,
  };
}
