/**
 * Kernel cost of tracing: a loopback request/response loop (C fixtures, 64-byte
 * request and response) run untraced, with the floor (a per-CPU counter on the
 * same two hooks filtered to the two pids, bpf/bench.bpf.c) and traced by kspan,
 * in turn, in one run. Prints the BPF run time per send/recv call from the
 * kernel's own stats (bpf(BPF_ENABLE_STATS), what kernel.bpf_stats_enabled=1
 * does, for this process's life only) for kspan and for the floor, the wall time per
 * exchange of each, and ring-buffer records per request/response exchange.
 *
 *   node bench/kernel-cost.ts [exchanges=100000] [rounds=3]
 */
import { TcpTracer } from '../src/kernel/tcp-tracer.ts';
import { ProcessGroup } from '../test/helpers/processes.ts';
import { startClient, startServer } from '../test/helpers/tcp-fixtures.ts';
import { enableBpfStats, Floor, progStats } from './harness.ts';

const exchanges = Number(process.argv[2] ?? 100_000);
const rounds = Number(process.argv[3] ?? 3);
const size = '64';

async function loop(tracer?: TcpTracer, floor?: Floor): Promise<number> {
  const group = new ProcessGroup();
  try {
    const args = ['--requests', String(exchanges), '--req-bytes', size, '--resp-bytes', size];
    const server = await startServer(group, args);
    const client = startClient(group, ['--port', String(server.port), ...args]);
    tracer?.addPid(server.proc.pid);
    tracer?.addPid(client.pid);
    floor?.addPid(server.proc.pid);
    floor?.addPid(client.pid);
    const t0 = process.hrtime.bigint();
    server.proc.send('go');
    client.send('go');
    await client.waitLine(/^done$/, 300_000);
    const ns = Number(process.hrtime.bigint() - t0);
    await server.proc.exited;
    floor?.removePid(server.proc.pid);
    floor?.removePid(client.pid);
    return ns;
  } finally {
    await group.killAll();
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** BPF time since `before`, of the floor's programs (floor) or of every other one (kspan's). */
function bpfDelta(before: ReturnType<typeof progStats>, ofFloor: boolean): number {
  let ns = 0;
  for (const [id, st] of progStats('self')) if (floor.ids.includes(id) === ofFloor) ns += st.runNs - (before.get(id)?.runNs ?? 0);
  return ns;
}

const stats = enableBpfStats();
let records = 0;
const tracer = TcpTracer.open({ onRecord: () => records++ });
tracer.start();
const floor = Floor.open();

const wall = { untraced: [] as number[], floor: [] as number[], traced: [] as number[] };
let kspanBpfNs = 0;
let floorBpfNs = 0;
let ringRecords = 0;
await loop(); // warm-up
for (let i = 0; i < rounds; i++) {
  wall.untraced.push(await loop());

  floor.attach();
  let before = progStats('self');
  wall.floor.push(await loop(undefined, floor));
  floorBpfNs += bpfDelta(before, true);
  floor.detach();

  before = progStats('self');
  const ringBefore = tracer.ringStats.records;
  wall.traced.push(await loop(tracer));
  await new Promise((r) => setTimeout(r, 100));
  kspanBpfNs += bpfDelta(before, false);
  ringRecords += tracer.ringStats.records - ringBefore;
}
await tracer.stop();
floor.close();
stats.close();

const calls = exchanges * 4; // server read+write, client write+read
const per = (ns: number) => (ns / (calls * rounds)).toFixed(0);
const u = median(wall.untraced);
console.log(`exchanges per run          ${exchanges} (64 B each way, loopback, ${rounds} rounds; wall times are medians)`);
console.log(`BPF ns per send/recv call  kspan ${per(kspanBpfNs)}  floor ${per(floorBpfNs)}  ratio ${(kspanBpfNs / floorBpfNs).toFixed(2)} (aim: <= 2)`);
console.log(`wall ns per exchange       untraced ${(u / exchanges).toFixed(0)}  floor ${(median(wall.floor) / exchanges).toFixed(0)}  kspan ${(median(wall.traced) / exchanges).toFixed(0)}`);
console.log(`wall ratio to untraced     floor ${(median(wall.floor) / u).toFixed(3)}  kspan ${(median(wall.traced) / u).toFixed(3)}`);
console.log(`ring records per exchange  ${(ringRecords / (exchanges * rounds * 2)).toFixed(3)} per traced socket (target <= 1)`);
console.log(`records delivered          ${records}; loss counters ${JSON.stringify(tracer.counters())}`);
