/**
 * `kspan events`: kernel TCP records of the selected processes as JSON lines on
 * stdout (src/records/event-json.ts). Stops after --duration or on SIGINT/SIGTERM, and
 * before exiting flushes the send/recv aggregates still open in the kernel.
 */
import { parseArgs } from 'node:util';
import { KernelClock } from '../kernel/clock.ts';
import { eventLine } from '../records/event-json.ts';
import type { IoPath } from '../kernel/kernel-features.ts';
import { setLibbpfLogSink } from '../kernel/libbpf-log.ts';
import type { Logger } from '../core/logger.ts';
import type { KernelRecord } from '../records/kernel-record.ts';
import { targetEvent } from '../context/thread-context-reader.ts';
import { TracingSession } from '../kernel/tracing-session.ts';
import { warnFeatureOff } from './kernel-warnings.ts';
import { parseMaxSockets, parsePids, parseDuration, parseIoHooks, waitForStop } from './options.ts';

export async function eventsCommand(args: string[], log: Logger): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      pid: { type: 'string', multiple: true },
      duration: { type: 'string' },
      'io-hooks': { type: 'string', default: 'auto' },
      'max-sockets': { type: 'string' },
    },
  });
  const pids = parsePids(values.pid);
  const duration = parseDuration(values.duration);
  const ioPath: IoPath | undefined = parseIoHooks(values['io-hooks']);

  setLibbpfLogSink((level, line) => log[level === 'warn' ? 'warn' : 'debug']({ libbpf: line }));
  const clock = new KernelClock();
  const out: string[] = [];
  const flushOut = () => {
    if (out.length) process.stdout.write(`${out.join('\n')}\n`);
    out.length = 0;
  };
  const print = (r: KernelRecord) => {
    out.push(eventLine(r, clock.offsetNs, r.context?.attributes && tracer.reader.target(r.pid)?.process.threadLocal?.keyMap));
    if (out.length >= 256) flushOut();
  };
  const tracer = TracingSession.open({
    maxSockets: parseMaxSockets(values['max-sockets']),
    ioPath,
    onRecord: print,
    onTarget: (t) => {
      out.push(JSON.stringify(targetEvent(t)));
      flushOut();
    },
    onDecodeError: (err) => log.error({ err }, 'record dropped: decode failed'),
    onTargetError: (pid, err) => log.warn({ pid, err }, 'cannot read the target\'s trace context; tracing it without'),
    onFeatureOff: warnFeatureOff(log),
  });
  for (const pid of pids) tracer.addPid(pid);
  // Signal handlers go in before "tracing" is announced: a SIGINT right after it
  // must still flush.
  const stop = waitForStop(duration);
  tracer.start();
  const flushTimer = setInterval(flushOut, 50);
  log.info({ pids, ioPath: tracer.ioPath, featuresOff: tracer.featuresOff.map((f) => f.feature) }, 'tracing');

  await stop;
  await tracer.stop(print);
  clearInterval(flushTimer);
  flushOut();
  const counters = tracer.counters();
  const lost = counters.KSPAN_C_RINGBUF_FULL + counters.KSPAN_C_SOCK_TABLE_FULL + counters.decode_errors;
  log[lost ? 'warn' : 'info']({ counters, ring: tracer.tracer.ringStats }, lost ? 'records were lost' : 'stopped');
  return 0;
}

