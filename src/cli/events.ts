/**
 * `kspan events`: kernel TCP records of the selected processes as JSON lines on
 * stdout (src/records/event-json.ts). Stops after --duration, on SIGINT/SIGTERM,
 * or once every target has exited, and before exiting flushes the send/recv
 * aggregates still open in the kernel. Exit 3 when records were lost.
 */
import type { EventsConfig } from '../core/config.ts';
import type { Logger } from '../core/logger.ts';
import { KernelClock } from '../kernel/clock.ts';
import type { TracingSession } from '../kernel/tracing-session.ts';
import { targetEvent } from '../context/thread-context-reader.ts';
import { eventLine, offCpuEventLine, schedEventLine } from '../records/event-json.ts';
import type { SchedRingRecord } from '../records/sched-record.ts';
import { onceKernelSymbols } from '../kernel/kallsyms-file.ts';
import { OFF_CPU_STACK_FRAMES } from '../spans/sched-spans.ts';
import type { KernelRecord } from '../records/kernel-record.ts';
import { logStartup, openSession, recordsLost, refreshClock, TARGETS_GONE, waitForStop } from './options.ts';
import { EXIT } from './usage.ts';

export async function eventsCommand(config: EventsConfig, log: Logger): Promise<number> {
  const clock = new KernelClock();
  const out: string[] = [];
  const flushOut = () => {
    if (out.length) process.stdout.write(`${out.join('\n')}\n`);
    out.length = 0;
  };
  let session: TracingSession | undefined;
  const print = (r: KernelRecord) => {
    out.push(eventLine(r, clock.offsetNs, r.context?.attributes && session?.reader.target(r.pid)?.process.threadLocal?.keyMap));
    if (out.length >= 256) flushOut();
  };
  const symbols = onceKernelSymbols(log);
  const printSched = (r: SchedRingRecord) => {
    if (r.type === 'off_cpu') {
      const table = r.stack.length ? symbols() : null;
      out.push(offCpuEventLine(r, clock.offsetNs, table ? table.describe(r.stack, OFF_CPU_STACK_FRAMES) : undefined));
    } else out.push(schedEventLine(r, clock.offsetNs, r.context.attributes && session?.reader.target(r.pid)?.process.threadLocal?.keyMap));
    if (out.length >= 256) flushOut();
  };
  // Signal handlers go in before "tracing" is announced: a SIGINT right after it
  // must still flush.
  const stop = waitForStop(config.duration);
  try {
    session = openSession(config, log, {
      onRecord: print,
      onSchedRecord: printSched,
      onTarget: (t) => {
        out.push(JSON.stringify(targetEvent(t)));
        flushOut();
      },
      onTargetsGone: () => stop.end(TARGETS_GONE),
    });
  } catch (err) {
    stop.cancel();
    throw err;
  }
  session.start();
  logStartup(log, session);
  const flushTimer = setInterval(flushOut, 50);
  const clockTimer = refreshClock(clock, log);
  log.info({ target_pids: config.pids, ioPath: session.ioPath, socketTable: session.tracer.socketTable, sched: session.tracer.sched, featuresOff: session.featuresOff.map((f) => f.feature) }, 'tracing');

  const why = await stop;
  log.info({ why }, 'stopping');
  await session.stop(print);
  clearInterval(flushTimer);
  clearInterval(clockTimer);
  flushOut();
  const counters = session.counters();
  const lost = recordsLost(counters);
  log[lost ? 'warn' : 'info']({ counters, ring: session.tracer.ringStats }, lost ? 'records were lost' : 'stopped');
  return lost ? EXIT.dataLost : EXIT.ok;
}
