/**
 * `kspan record --pid PID -o FILE`: the decoded kernel records, as they come, to a
 * msgpack file (src/records/record-file.ts) whose header carries the kernel
 * release, the clock offset and the targets' Resources, for `kspan replay`.
 */
import { createWriteStream } from 'node:fs';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { KernelClock } from '../kernel/clock.ts';
import { KspanError } from '../core/errors.ts';
import { kernelRelease } from '../kernel/kernel-features.ts';
import { setLibbpfLogSink } from '../kernel/libbpf-log.ts';
import type { Logger } from '../core/logger.ts';
import type { KernelRecord } from '../records/kernel-record.ts';
import { RecordFileWriter } from '../records/record-file.ts';
import { TargetResources } from '../export/target-resources.ts';
import { TracingSession } from '../kernel/tracing-session.ts';
import { warnFeatureOff } from './kernel-warnings.ts';
import { parseDuration, parseIoHooks, parseMaxSockets, parsePids, waitForStop } from './options.ts';

export async function recordCommand(args: string[], log: Logger): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      pid: { type: 'string', multiple: true },
      output: { type: 'string', short: 'o' },
      duration: { type: 'string' },
      'io-hooks': { type: 'string', default: 'auto' },
      'max-sockets': { type: 'string' },
    },
  });
  const pids = parsePids(values.pid);
  if (!values.output) throw new KspanError('KSPAN_ERR_USAGE', 'no output file: give -o FILE');
  const duration = parseDuration(values.duration);
  setLibbpfLogSink((level, line) => log[level === 'warn' ? 'warn' : 'debug']({ libbpf: line }));

  // Records arrive before the header can be written (targets resolve on addPid),
  // so they wait in memory for that instant only.
  const early: KernelRecord[] = [];
  let writer: RecordFileWriter | undefined;
  const session = TracingSession.open({
    maxSockets: parseMaxSockets(values['max-sockets']),
    ioPath: parseIoHooks(values['io-hooks']),
    onRecord: (r) => (writer ? writer.write(r) : early.push(r)),
    onDecodeError: (err) => log.error({ err }, 'record dropped: decode failed'),
    onTargetError: (pid, err) => log.warn({ pid, err }, 'cannot read the target\'s trace context'),
    onFeatureOff: warnFeatureOff(log),
  });
  const resources = new TargetResources((pid) => session.reader.target(pid)?.process.resource);
  for (const pid of pids) {
    session.addPid(pid);
    resources.attributes(pid);
  }
  const stop = waitForStop(duration);
  const out = createWriteStream(values.output);
  writer = new RecordFileWriter(out, {
    kernelRelease: kernelRelease(),
    clockOffsetNs: new KernelClock().offsetNs,
    startedAt: new Date().toISOString(),
    pids,
    hostname: hostname(),
    resources: resources.snapshot(),
    keyMaps: Object.fromEntries(
      pids.flatMap((pid) => {
        const keyMap = session.reader.target(pid)?.process.threadLocal?.keyMap;
        return keyMap ? [[String(pid), [...keyMap]]] : [];
      }),
    ),
  });
  for (const r of early) writer.write(r);
  session.start();
  log.info({ pids, output: values.output, ioPath: session.ioPath }, 'recording');
  await stop;
  await session.stop((r) => writer!.write(r));
  await writer.end();
  log.info({ records: writer.count, counters: session.counters() }, 'recorded');
  return 0;
}
