/** The C TCP server/client fixtures (test/fixtures/tcp), built at test time. */
import { join } from 'node:path';
import { buildFixture } from './build-fixture.ts';
import type { Proc, ProcessGroup } from './processes.ts';

let dir: string | undefined;

export function tcpFixtureDir(): string {
  dir ??= buildFixture({
    name: 'tcp',
    sources: ['test/fixtures/tcp/server.c', 'test/fixtures/tcp/client.c'],
    steps: [
      { out: 'server', cmd: ['gcc', '-O2', '-Wall', '{server.c}', '-o', 'server'] },
      { out: 'client', cmd: ['gcc', '-O2', '-Wall', '{client.c}', '-o', 'client'] },
    ],
  });
  return dir;
}

export interface Server {
  proc: Proc;
  port: number;
}

/** Starts the server (listening, not yet accepting: call go()). `netns` runs it inside one. */
export async function startServer(group: ProcessGroup, args: string[], netns?: string): Promise<Server> {
  const bin = join(tcpFixtureDir(), 'server');
  const proc = netns ? group.start('ip', ['netns', 'exec', netns, bin, ...args]) : group.start(bin, args);
  const m = await proc.waitLine(/^port (\d+)$/);
  return { proc, port: Number(m[1]) };
}

/** Starts the client; it connects when sent a line. */
export function startClient(group: ProcessGroup, args: string[], netns?: string): Proc {
  const bin = join(tcpFixtureDir(), 'client');
  return netns ? group.start('ip', ['netns', 'exec', netns, bin, ...args]) : group.start(bin, args);
}
