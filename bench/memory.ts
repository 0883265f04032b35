/**
 * The agent's memory on the native workload, 100 % sampled:
 * - a ladder at 1×, 4× and 16× the connections of the native bench
 *   (`base`, 4·base, 16·base): the agent's RSS idle, steady (median of the
 *   second half of the run) and peak, next to the throughput it kept up with;
 * - two sustained runs over `sustainedConnections` for `sustainedSeconds`:
 *   paced at `pacedRate` requests per second (the load a drop target is set at),
 *   and saturated (as fast as the service answers); in each, spans made,
 *   exported and dropped, records lost, RSS;
 * - `holdConnections` open traced keep-alive connections (bench/fixtures/
 *   hold_conns.c: one request each, then a request on every one of them again and
 *   again while the RSS is sampled);
 * and in each, the kernel memory of the agent's BPF maps (memlock from fdinfo),
 * the socket table `socks` by name, and its value_size × max_entries; in the
 * hold run also before the connections open, so that a table allocated on use
 * (6.1+) gives its memory per socket and, from it, its memory when full.
 *
 *   node bench/memory.ts [--seconds 15] [--base 16] [--sustained-connections 200]
 *                        [--sustained-seconds 60] [--paced-rate 35000] [--hold 10000]
 */
import { parseArgs } from 'node:util';
import { ProcessGroup } from '../test/helpers/processes.ts';
import {
  benchFixture,
  mapsOf,
  type MapInfo,
  median,
  type Receiver,
  RssSampler,
  rssBytes,
  sleep,
  startAgent,
  startNativeServer,
  startReceiver,
  TRACEPARENT_LUA,
  wrkAsync,
} from './harness.ts';
import { agentErrorsNote, describe, measure, type Sample } from './rounds.ts';

export interface MemoryOptions {
  seconds: number;
  base: number;
  sustainedConnections: number;
  sustainedSeconds: number;
  /** Requests per second of the paced sustained run. */
  pacedRate: number;
  holdConnections: number;
  log: (line: string) => void;
}

export interface TableMemory {
  /** The socket table's kernel memory as the kernel charges it (bytes). */
  socksMemlock: number;
  /** value_size × max_entries of `socks` (bytes). */
  socksValueBytes: number;
  socksMaxEntries: number;
  socksValueSize: number;
  /** Every map of the agent (ring buffer included). */
  allMapsMemlock: number;
}

export function tableMemory(maps: MapInfo[]): TableMemory {
  const socks = maps.find((m) => m.name === 'socks');
  return {
    socksMemlock: socks?.memlock ?? NaN,
    socksValueBytes: socks ? socks.valueSize * socks.maxEntries : NaN,
    socksMaxEntries: socks?.maxEntries ?? NaN,
    socksValueSize: socks?.valueSize ?? NaN,
    allMapsMemlock: maps.reduce((a, m) => a + m.memlock, 0),
  };
}

function loadSummary(s: Sample, multiple: number, connections: number) {
  const a = s.agent!;
  return {
    multiple,
    connections,
    seconds: 0,
    rps: s.rps,
    requests: s.requests,
    rssIdle: a.rssIdle,
    rssSteady: a.rssSteady,
    rssMax: a.rssMax,
    agentCpuMsPer1000Req: a.cpuMsPer1000Req,
    counters: { ...a.counters, spansReceived: a.spansReceived },
    table: tableMemory(a.maps),
  };
}

async function holdTest(group: ProcessGroup, receiver: Receiver, opts: MemoryOptions) {
  const server = await startNativeServer(group);
  const agent = await startAgent(group, server.pid, receiver.endpoint);
  let stopped = false;
  try {
    await sleep(300);
    const rssIdle = rssBytes(agent.pid);
    const idleTable = tableMemory(mapsOf(agent.pid));
    const t0 = performance.now();
    const client = group.start(benchFixture('hold_conns'), ['--port', String(server.port), '--conns', String(opts.holdConnections)]);
    await client.waitLine(/^held \d+$/, 300_000);
    const openMs = performance.now() - t0;
    const rss = new RssSampler(agent.pid);
    const until = performance.now() + opts.seconds * 1000;
    let passes = 0;
    while (performance.now() < until) {
      client.send('pass');
      passes++;
      while (client.lines.filter((l) => l === 'pass done').length < passes) {
        if (client.child.exitCode !== null) throw new Error(`hold_conns exited ${client.child.exitCode}: ${client.stderr.join('\n')}`);
        await sleep(10);
      }
    }
    const { steady, max } = rss.stop();
    const maps = mapsOf(agent.pid);
    stopped = true;
    const counters = await agent.stop();
    client.child.stdin!.end();
    await client.exited;
    return {
      connections: opts.holdConnections,
      openSeconds: openMs / 1000,
      passes,
      requests: opts.holdConnections * (passes + 1),
      rssIdle,
      rssSteady: steady,
      rssMax: max,
      counters,
      table: tableMemory(maps),
      idleTable,
    };
  } finally {
    if (!stopped) agent.proc.child.kill('SIGKILL');
    server.proc.child.stdin!.end();
  }
}

/** The memory measurements. Needs no statistics switch (it reads no BPF run times it reports). */
export async function memoryBench(opts: MemoryOptions) {
  const group = new ProcessGroup();
  try {
    const receiver = await startReceiver(group);
    const server = await startNativeServer(group);
    await wrkAsync(['-t1', `-c${opts.base}`, '-d1s', '-s', TRACEPARENT_LUA], `http://127.0.0.1:${server.port}/`, ['1']); // warm-up
    const ctx = { group, server, receiver, log: opts.log };
    // `rate`: paced by bench/traceparent.lua (one wrk thread holds it all).
    const run = async (connections: number, seconds: number, label: string, rate?: number) => {
      const scriptArgs = rate ? ['1', String(rate), String(connections)] : ['1'];
      const s = await measure(ctx, { key: label, kind: 'kspan', wrkArgs: ['-t1', `-c${connections}`, '-s', TRACEPARENT_LUA], scriptArgs }, seconds, 0);
      opts.log(`memory ${describe(s)}`);
      return s;
    };
    const ladder = [];
    for (const multiple of [1, 4, 16]) {
      const c = opts.base * multiple;
      ladder.push({ ...loadSummary(await run(c, opts.seconds, `${multiple}× (${c} connections)`), multiple, c), seconds: opts.seconds });
    }
    const sustainedRun = async (rate?: number) => {
      const how = rate ? `paced at ${rate} req/s` : 'saturated';
      const s = await run(opts.sustainedConnections, opts.sustainedSeconds, `sustained ${opts.sustainedConnections} connections ${opts.sustainedSeconds} s, ${how}`, rate);
      return { ...loadSummary(s, opts.sustainedConnections / opts.base, opts.sustainedConnections), seconds: opts.sustainedSeconds, pacedRate: rate ?? null };
    };
    const paced = await sustainedRun(opts.pacedRate);
    const sustained = await sustainedRun();
    server.proc.child.stdin!.end();
    const hold = await holdTest(group, receiver, opts);
    opts.log(
      `memory ${hold.connections} open connections (opened in ${hold.openSeconds.toFixed(1)} s, ${hold.passes} passes): RSS ${(hold.rssIdle / 2 ** 20).toFixed(0)}→${(hold.rssSteady / 2 ** 20).toFixed(0)} MB (max ${(hold.rssMax / 2 ** 20).toFixed(0)}), spans made ${hold.counters.spansMade} exported ${hold.counters.spansExported} dropped ${hold.counters.spansDropped}, records lost ${hold.counters.recordsLost}${agentErrorsNote(hold.counters)}`,
    );
    return { ladder, paced, sustained, hold, rssIdle: median([...ladder.map((l) => l.rssIdle), paced.rssIdle, sustained.rssIdle, hold.rssIdle]) };
  } finally {
    await group.killAll();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '15' },
      base: { type: 'string', default: '16' },
      'sustained-connections': { type: 'string', default: '200' },
      'sustained-seconds': { type: 'string', default: '60' },
      'paced-rate': { type: 'string', default: '35000' },
      hold: { type: 'string', default: '10000' },
    },
  });
  const r = await memoryBench({
    seconds: Number(values.seconds),
    base: Number(values.base),
    sustainedConnections: Number(values['sustained-connections']),
    sustainedSeconds: Number(values['sustained-seconds']),
    pacedRate: Number(values['paced-rate']),
    holdConnections: Number(values.hold),
    log: (l) => process.stderr.write(l + '\n'),
  });
  console.log(JSON.stringify(r, null, 2));
}
