/**
 * Two network namespaces joined by a veth pair, made by the test and removed
 * afterwards (with them go their addresses and iptables rules). Both ends use a
 * random 10.x.y.0/30, so tests in other processes do not collide; names carry
 * the pid and a counter.
 *
 *   client ns  <name>-c  10.x.y.1  ──veth──  10.x.y.2  <name>-s  server ns
 */
import { execFileSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { createNamespacePair, deleteNamespace, listNamespaces } from '../../src/demo/lossy-link.ts';
import { scaled } from './timeouts.ts';

let seq = 0;

export interface NetnsPair {
  client: string;
  server: string;
  clientAddr: string;
  serverAddr: string;
  /** Runs a command inside the server namespace (e.g. iptables). */
  inServer(cmd: string[]): string;
  inClient(cmd: string[]): string;
  remove(): void;
}

function run(cmd: string[]): string {
  return execFileSync(cmd[0], cmd.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export function createNetnsPair(): NetnsPair {
  const id = `ks${process.pid}x${seq++}`;
  const client = `${id}-c`;
  const server = `${id}-s`;
  const net = `10.${randomInt(100, 250)}.${randomInt(0, 255)}`;
  const base = randomInt(0, 63) * 4;
  const clientAddr = `${net}.${base + 1}`;
  const serverAddr = `${net}.${base + 2}`;
  createNamespacePair({ client, server, clientAddr, serverAddr, clientDev: `${id}a`, serverDev: `${id}b` });
  return {
    client,
    server,
    clientAddr,
    serverAddr,
    inServer: (cmd) => run(['ip', 'netns', 'exec', server, ...cmd]),
    inClient: (cmd) => run(['ip', 'netns', 'exec', client, ...cmd]),
    remove: () => {
      deleteNamespace(client);
      deleteNamespace(server);
    },
  };
}

/**
 * Waits until neither namespace holds a TCP socket on `port` any more (FIN
 * retransmits and TIME_WAIT included), so a count taken afterwards is final.
 */
export async function waitSocketsGone(pair: NetnsPair, port: number, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + scaled(timeoutMs);
  const filter = `( sport = :${port} or dport = :${port} )`;
  for (;;) {
    const left = [pair.inServer, pair.inClient]
      .map((inNs) => inNs(['ss', '-Htan', 'state', 'all', 'exclude', 'time-wait', filter]).trim())
      .filter(Boolean);
    if (!left.length) return;
    if (Date.now() > deadline) throw new Error(`sockets on port ${port} still open:\n${left.join('\n')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Namespaces still present whose names this process made (for leak checks). */
export function leftoverNamespaces(prefix = `ks${process.pid}x`): string[] {
  return listNamespaces().filter((n) => n.startsWith(prefix));
}
