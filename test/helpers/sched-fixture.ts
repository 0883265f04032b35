/**
 * The scheduler-time fixture (test/fixtures/sched/sched_jobs.c): a worker thread
 * that runs jobs of known work under spans it publishes (OTEP 4947), reporting
 * its own /proc/thread-self/schedstat and context-switch counts at the start and
 * the end of each span: the oracle kspan's thread.sched figures are compared with.
 */
import { join } from 'node:path';
import { buildFixture, INCLUDE_FLAG, THREAD_CTX_HEADER } from './build-fixture.ts';
import type { Proc, ProcessGroup } from './processes.ts';

export function schedFixturePath(): string {
  const dir = buildFixture({
    name: 'sched',
    sources: ['test/fixtures/sched/sched_jobs.c', 'test/fixtures/tls/otel_ctx_writer.c', THREAD_CTX_HEADER],
    steps: [
      {
        out: 'sched_jobs',
        cmd: ['gcc', '-O2', '-Wall', '-rdynamic', '-pthread', INCLUDE_FLAG, '{sched_jobs.c}', '{otel_ctx_writer.c}', '-o', 'sched_jobs'],
      },
    ],
  });
  return join(dir, 'sched_jobs');
}

/** The thread's counters at one moment (schedstat: on-CPU ns, run-queue ns, timeslices; status: switches). */
export interface ThreadSample {
  onCpuNs: number;
  runqNs: number;
  timeslices: number;
  voluntary: number;
  involuntary: number;
  /** CLOCK_MONOTONIC ns. */
  t: number;
}

export interface JobReport {
  kind: string;
  tid: number;
  start: ThreadSample;
  end: ThreadSample;
  /** contend: the busy sibling thread (it runs with no span). */
  siblingTid: number;
  /** sleeps, pipe: the worker's wait channel as the kernel's /proc/PID/task/TID/wchan gave it while it blocked; null: not read. */
  wchan: string | null;
}

export interface SchedFixture {
  proc: Proc;
  /** As the host sees it (the process started; with a `prefix`, the prefix's). */
  pid: number;
  /** As the fixture's own pid namespace sees it (workerTid too). */
  nsPid: number;
  workerTid: number;
  /** Runs one job and waits for its report. `ids` null: no span. */
  run(kind: 'spin' | 'sleep' | 'contend' | 'fault' | 'sleeps' | 'pipe', ms: number, ids: { traceId: string; spanId: string; sampled: boolean } | null, count?: number): Promise<JobReport>;
}

/** `prefix`: a command that runs the fixture (e.g. nsenter into a pid namespace). */
export async function startSchedFixture(group: ProcessGroup, prefix: string[] = []): Promise<SchedFixture> {
  const proc = prefix.length ? group.start(prefix[0], [...prefix.slice(1), schedFixturePath()]) : group.start(schedFixturePath(), []);
  const ready = await proc.waitLine(/^ready (\d+) (\d+)$/);
  const workerTid = Number(ready[1]);
  let done = 0;
  return {
    proc,
    pid: proc.pid,
    nsPid: Number(ready[2]),
    workerTid,
    async run(kind, ms, ids, count = 1) {
      proc.send(ids ? `${kind} ${ms} ${ids.traceId} ${ids.spanId} ${ids.sampled ? 1 : 0} ${count}` : `${kind} ${ms} - - 1 ${count}`);
      const nth = ++done;
      // The nth report (lines are never reused).
      await waitCount(proc, nth, 60_000);
      const f = proc.lines.filter((l) => l.startsWith('done '))[nth - 1].split(' ');
      const n = f.slice(2).map(Number);
      const sample = (o: number): ThreadSample => ({ onCpuNs: n[o], runqNs: n[o + 1], timeslices: n[o + 2], voluntary: n[o + 3], involuntary: n[o + 4], t: n[o + 5] });
      return { kind: f[1], tid: n[0], start: sample(1), end: sample(7), siblingTid: n[13], wchan: f[16] === '-' ? null : f[16] };
    },
  };
}

async function waitCount(proc: Proc, n: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (proc.lines.filter((l) => l.startsWith('done ')).length < n) {
    if (Date.now() > deadline) throw new Error(`no report ${n} from the sched fixture:\n${proc.lines.slice(-5).join('\n')}\n${proc.stderr.join('\n')}`);
    if (proc.child.exitCode !== null) throw new Error(`the sched fixture exited ${proc.child.exitCode}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
