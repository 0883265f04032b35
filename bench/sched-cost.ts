/**
 * What the scheduler programs (bpf/sched.bpf.h) cost per context switch, against
 * the floor: a trivial per-CPU counter on the same hook (bpf/bench.bpf.c
 * `sched_floor_switch`). The workload is bench/fixtures/sched_pingpong.c: two
 * threads pinned to CPU 0 hand a byte back and forth over pipes, two switches
 * per round. kspan (a TracingSession with the scheduler programs) and the floor
 * are attached together, and each program's own BPF run time is read from the
 * kernel's statistics (bpf(BPF_ENABLE_STATS), for this process's life only).
 * Per round, three runs of the workload:
 *  - untraced: the workload is not a target; every switch on the machine takes
 *    kspan's untraced path (two hash lookups) → on_sched_switch ns per run;
 *  - traced, span held: the workload is a target and each thread keeps one span
 *    (TLS read at every switch-out, no record);
 *  - traced, span changing: a new span before every hand-over (a record per switch-out).
 * A traced switch's cost is (T − u × (R − S)) / S: T and R the program's run time
 * and runs, u the untraced ns per run of the same round, S = 2 × rounds the
 * workload's switches (other tasks' switches meanwhile take the untraced path).
 * Then a traced long block: the sched fixture (test/fixtures/sched/sched_jobs.c)
 * sleeps 2 ms N times, each under its own span (≥ the 1 ms event threshold: each wakeup
 * takes the kernel stack and makes a kspan_sched_off record), interleaved with
 * the same job under an unsampled span (no stack, no record); the cost of the
 * stack and the record is the difference of sched_wakeup's run time, over N.
 *
 *   node bench/sched-cost.ts [--rounds-per-run 200000] [--runs 3] [--json]
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BpfObject } from '../src/kernel/bpf-object.ts';
import { TracingSession } from '../src/kernel/tracing-session.ts';
import { buildFixture, INCLUDE_FLAG, REPO_ROOT, THREAD_CTX_HEADER } from '../test/helpers/build-fixture.ts';
import { ProcessGroup } from '../test/helpers/processes.ts';
import { startSchedFixture } from '../test/helpers/sched-fixture.ts';
import { enableBpfStats, median, progNames, progStats, type ProgStat } from './harness.ts';

export interface SchedCostOptions {
  roundsPerRun: number;
  runs: number;
  log: (line: string) => void;
}

export interface SchedCostRun {
  floorNsPerRun: number;
  untracedNsPerRun: number;
  heldNsPerSwitch: number;
  changeNsPerSwitch: number;
  wakeupNsPerRun: number;
  /** Records made in the span-changing run, per workload switch: delivered, and lost (ring full). */
  recordsPerSwitch: number;
  lostPerSwitch: number;
  switchesPerSecond: number;
}

export interface LongBlockCost {
  blocks: number;
  /** sched_wakeup ns for a traced wakeup after ≥ the threshold blocked: the stack and the record. */
  wakeupNsPerLongBlock: number;
  /** kspan_sched_off records received per block. */
  recordsPerBlock: number;
}

function pingpong(): string {
  const dir = buildFixture({
    name: 'bench-sched',
    sources: ['bench/fixtures/sched_pingpong.c', 'test/fixtures/tls/otel_ctx_writer.c', THREAD_CTX_HEADER],
    steps: [{ out: 'sched_pingpong', cmd: ['gcc', '-O2', '-Wall', '-rdynamic', '-pthread', INCLUDE_FLAG, '{sched_pingpong.c}', '{otel_ctx_writer.c}', '-o', 'sched_pingpong'] }],
  });
  return join(dir, 'sched_pingpong');
}

const delta = (a: ProgStat | undefined, b: ProgStat | undefined) => ({ ns: (b?.runNs ?? 0) - (a?.runNs ?? 0), runs: (b?.runs ?? 0) - (a?.runs ?? 0) });

export async function schedCostBench(o: SchedCostOptions): Promise<{ runs: SchedCostRun[]; summary: Record<keyof SchedCostRun, number>; longBlock: LongBlockCost }> {
  const stats = enableBpfStats();
  const group = new ProcessGroup();
  const before = new Set(progStats('self').keys());
  let records = 0;
  let offRecords = 0;
  const session = TracingSession.open({
    pids: [], waitForTargets: true, onRecord: () => {}, onSchedRecord: (r) => (r.type === 'off_cpu' ? offRecords++ : records++),
  });
  session.start();
  const floorObj = BpfObject.open(join(REPO_ROOT, 'bpf/.output/bench.bpf.o'));
  const out: SchedCostRun[] = [];
  let longBlock: LongBlockCost | undefined;
  try {
    for (const p of floorObj.programNames) floorObj.setAutoload(p, p === 'sched_floor_switch');
    floorObj.load();
    floorObj.attachAll();
    const ids = [...progStats('self').keys()].filter((id) => !before.has(id));
    const names = progNames(ids);
    // bpftool gives the full names (from BTF); the kernel's own are cut at 15 characters.
    const idOf = (name: string) => ids.find((id) => names.get(id) === name || names.get(id) === name.slice(0, 15));
    const floorId = idOf('sched_floor_switch');
    const switchId = idOf('on_sched_switch');
    const wakeupIds = ids.filter((id) => names.get(id) === 'on_sched_wakeup' || names.get(id) === 'on_sched_wakeup_nostack');
    if (floorId === undefined || switchId === undefined) throw new Error(`programs not found: ${JSON.stringify([...names])}`);

    const bin = pingpong();
    const one = async (mode: 'held' | 'change', traced: boolean) => {
      const proc = group.start(bin, [String(o.roundsPerRun), mode]);
      await proc.waitLine(/^ready$/);
      if (traced) session.addPid(proc.pid);
      const s0 = progStats('self');
      const r0 = records;
      const l0 = session.counters().KSPAN_C_RINGBUF_FULL;
      const t0 = performance.now();
      proc.send('go');
      await proc.waitLine(/^done$/, 300_000);
      const secs = (performance.now() - t0) / 1000;
      await new Promise((r) => setTimeout(r, 50));
      const s1 = progStats('self');
      if (traced) session.removePid(proc.pid);
      proc.child.stdin!.end();
      await proc.exited;
      const wake = wakeupIds.map((id) => delta(s0.get(id), s1.get(id))).sort((a, b) => b.runs - a.runs)[0];
      const lost = session.counters().KSPAN_C_RINGBUF_FULL - l0;
      return { floor: delta(s0.get(floorId), s1.get(floorId)), sw: delta(s0.get(switchId), s1.get(switchId)), wake, secs, records: records - r0, lost };
    };
    const S = 2 * o.roundsPerRun;
    for (let i = 0; i < o.runs; i++) {
      const u = await one('held', false);
      const h = await one('held', true);
      const c = await one('change', true);
      const uNs = u.sw.ns / u.sw.runs;
      const traced = (x: typeof h) => (x.sw.ns - uNs * Math.max(0, x.sw.runs - S)) / S;
      const r: SchedCostRun = {
        floorNsPerRun: (u.floor.ns + h.floor.ns + c.floor.ns) / (u.floor.runs + h.floor.runs + c.floor.runs),
        untracedNsPerRun: uNs,
        heldNsPerSwitch: traced(h),
        changeNsPerSwitch: traced(c),
        wakeupNsPerRun: u.wake ? u.wake.ns / Math.max(1, u.wake.runs) : NaN,
        recordsPerSwitch: c.records / S,
        lostPerSwitch: c.lost / S,
        switchesPerSecond: S / u.secs,
      };
      o.log(`sched run ${i + 1}: floor ${r.floorNsPerRun.toFixed(0)} ns/run, untraced ${uNs.toFixed(0)} ns/run (${(uNs / r.floorNsPerRun).toFixed(2)} × floor), ` +
        `traced ${r.heldNsPerSwitch.toFixed(0)} ns/switch held, ${r.changeNsPerSwitch.toFixed(0)} changing (${r.recordsPerSwitch.toFixed(3)} records/switch delivered, ${r.lostPerSwitch.toFixed(3)} lost: ring full), wakeup ${r.wakeupNsPerRun.toFixed(0)} ns/run`);
      out.push(r);
    }

    // A traced long block: N sleeps of 2 ms, each under its own span, interleaved with
    // the same job under an unsampled span (the wakeup finds the thread, takes no stack,
    // makes no record): the difference of sched_wakeup's run time is the stack and the record.
    const N = 200;
    const fx = await startSchedFixture(group);
    session.addPid(fx.pid);
    await new Promise((r) => setTimeout(r, 200));
    const o0 = offRecords;
    const jobs: { sampled: boolean; ns: number; runs: number }[] = [];
    const wakeStat = (st: Map<number, ProgStat>) => wakeupIds.map((id) => st.get(id)).reduce((a, b) => ((b?.runs ?? 0) > (a?.runs ?? 0) ? b : a), undefined as ProgStat | undefined);
    for (let i = 0; i < 2 * N; i++) {
      const sampled = i % 2 === 0;
      const a = wakeStat(progStats('self'));
      await fx.run('sleeps', 2, { traceId: '6b'.repeat(16), spanId: (i + 1).toString(16).padStart(16, '0'), sampled }, 1);
      jobs.push({ sampled, ...delta(a, wakeStat(progStats('self'))) });
    }
    session.removePid(fx.pid);
    // Every other wakeup on the machine in a job's window runs the program too: per job, take
    // away its runs at the median ns per run of the unsampled jobs, then compare the medians.
    const perRun = median(jobs.filter((j) => !j.sampled && j.runs).map((j) => j.ns / j.runs));
    const rest = (sampled: boolean) => median(jobs.filter((j) => j.sampled === sampled).map((j) => j.ns - perRun * (j.runs - 1)));
    longBlock = { blocks: N, wakeupNsPerLongBlock: rest(true) - rest(false), recordsPerBlock: (offRecords - o0) / N };
    o.log(`long block: ${N} sleeps of 2 ms (one span each) against ${N} unsampled: sched_wakeup +${longBlock.wakeupNsPerLongBlock.toFixed(0)} ns per traced long-block wakeup ` +
      `(median per job after ${perRun.toFixed(0)} ns per other run: ${rest(true).toFixed(0)} vs ${rest(false).toFixed(0)} ns), ${longBlock.recordsPerBlock.toFixed(3)} off-CPU records per block`);
  } finally {
    floorObj.close();
    await session.stop();
    await group.killAll();
    stats.close();
  }
  const keys = Object.keys(out[0]) as (keyof SchedCostRun)[];
  const summary = Object.fromEntries(keys.map((k) => [k, median(out.map((r) => r[k]))])) as Record<keyof SchedCostRun, number>;
  return { runs: out, summary, longBlock: longBlock! };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { 'rounds-per-run': { type: 'string' }, runs: { type: 'string' }, json: { type: 'boolean', default: false } } });
  const log = (l: string) => process.stderr.write(`${l}\n`);
  const r = await schedCostBench({ roundsPerRun: Number(values['rounds-per-run'] ?? 200_000), runs: Number(values.runs ?? 3), log });
  const s = r.summary;
  if (values.json) console.log(JSON.stringify(r));
  console.log(`switches per run           ${2 * Number(values['rounds-per-run'] ?? 200_000)} (two threads pinned to CPU 0, pipes; medians of ${r.runs.length} runs)`);
  console.log(`floor (trivial counter)    ${s.floorNsPerRun.toFixed(0)} ns per sched_switch`);
  console.log(`kspan, untraced switch     ${s.untracedNsPerRun.toFixed(0)} ns (${(s.untracedNsPerRun / s.floorNsPerRun).toFixed(2)} × floor; target ≤ 2)`);
  console.log(`kspan, traced, span held   ${s.heldNsPerSwitch.toFixed(0)} ns per switch (${(s.heldNsPerSwitch / s.floorNsPerRun).toFixed(2)} × floor)`);
  console.log(`kspan, traced, span change ${s.changeNsPerSwitch.toFixed(0)} ns per switch (${(s.changeNsPerSwitch / s.floorNsPerRun).toFixed(2)} × floor), ${s.recordsPerSwitch.toFixed(3)} records per switch delivered, ${s.lostPerSwitch.toFixed(3)} lost (ring full)`);
  console.log(`kspan sched_wakeup         ${s.wakeupNsPerRun.toFixed(0)} ns per wakeup (untraced)`);
  console.log(`switch rate, untraced run  ${s.switchesPerSecond.toFixed(0)} /s`);
  console.log(`kspan sched_wakeup, traced long block (stack + record) ${r.longBlock.wakeupNsPerLongBlock.toFixed(0)} ns per wakeup, ${r.longBlock.recordsPerBlock.toFixed(3)} records per block`);
}
