/**
 * `kspan record --pid PID -o FILE`: the decoded kernel records, as they come, to a
 * msgpack file (src/records/record-file.ts) whose header carries the kernel
 * release, the clock offset and the targets' Resources, for `kspan replay`.
 * The output is opened before the kernel is touched: a missing directory, an
 * existing file (without --force) or a read-only one fails first; a write error
 * later (full disk) stops the recording with KSPAN_ERR_RECORD_FILE.
 */
import { closeSync, constants, createWriteStream, fstatSync, ftruncateSync, openSync, unlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import type { RecordConfig } from '../core/config.ts';
import { KspanError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { KernelClock } from '../kernel/clock.ts';
import { kernelRelease } from '../kernel/kernel-features.ts';
import { assertTargetsRunning, type TracingSession } from '../kernel/tracing-session.ts';
import type { KernelRecord } from '../records/kernel-record.ts';
import { RecordFileWriter } from '../records/record-file.ts';
import { TargetResources } from '../export/target-resources.ts';
import { describeFsError, openSession, recordsLost, TARGETS_GONE, waitForStop } from './options.ts';
import { EXIT } from './usage.ts';

const OUTPUT_FAILED = 'the output file failed';

interface Output {
  fd: number;
  /** The file did not exist: remove it when the recording cannot start. */
  created: boolean;
  /** A regular file that existed (--force): truncated once the recording starts. */
  truncate: boolean;
}

/** Opens (creates) FILE for writing without truncating yet; KSPAN_ERR_RECORD_FILE saying why it cannot. */
function openOutput(path: string, force: boolean): Output {
  const { O_WRONLY, O_CREAT, O_EXCL } = constants;
  try {
    const fd = openSync(path, O_WRONLY | O_CREAT | O_EXCL, 0o644);
    return { fd, created: true, truncate: false };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' && force) {
      try {
        const fd = openSync(path, O_WRONLY);
        return { fd, created: false, truncate: fstatSync(fd).isFile() };
      } catch (cause) {
        throw outputError(path, 'cannot write', cause);
      }
    }
    if (code === 'EEXIST') {
      throw new KspanError('KSPAN_ERR_RECORD_FILE', `${path} exists`, { hint: 'give --force to overwrite it, or another -o FILE' });
    }
    if (code === 'ENOENT') {
      throw new KspanError('KSPAN_ERR_RECORD_FILE', `cannot create ${path}: the directory ${dirname(path)} does not exist`, {
        hint: 'create it first, or give another -o FILE',
        cause: err,
      });
    }
    throw outputError(path, 'cannot create', err);
  }
}

function outputError(path: string, what: string, cause: unknown, hint = 'give another -o FILE'): KspanError {
  return new KspanError('KSPAN_ERR_RECORD_FILE', `${what} ${path}: ${describeFsError(cause)}`, { hint, cause });
}

export async function recordCommand(config: RecordConfig, log: Logger): Promise<number> {
  const path = config.output;
  assertTargetsRunning(config.pids);
  const output = openOutput(path, config.force);
  // Records flow only after session.start(), which follows the header; the
  // array catches any that would come earlier.
  const early: KernelRecord[] = [];
  let writer: RecordFileWriter | undefined;
  const stop = waitForStop(config.duration);
  let session: TracingSession;
  try {
    session = openSession(config, log, {
      onRecord: (r) => (writer ? writer.write(r) : early.push(r)),
      onTargetsGone: () => stop.end(TARGETS_GONE),
    });
    if (output.truncate) ftruncateSync(output.fd, 0);
  } catch (err) {
    stop.cancel();
    closeSync(output.fd);
    if (output.created) unlinkSync(path);
    throw err;
  }
  const resources = new TargetResources((pid) => session.reader.target(pid)?.process.resource);
  for (const pid of config.pids) resources.attributes(pid);
  const out = createWriteStream('', { fd: output.fd });
  writer = new RecordFileWriter(
    out,
    {
      kernelRelease: kernelRelease(),
      clockOffsetNs: new KernelClock().offsetNs,
      startedAt: new Date().toISOString(),
      pids: [...config.pids],
      hostname: hostname(),
      resources: resources.snapshot(),
      keyMaps: Object.fromEntries(
        config.pids.flatMap((pid) => {
          const keyMap = session.reader.target(pid)?.process.threadLocal?.keyMap;
          return keyMap ? [[String(pid), [...keyMap]]] : [];
        }),
      ),
    },
    () => stop.end(OUTPUT_FAILED),
  );
  for (const r of early) writer.write(r);
  session.start();
  log.info({ target_pids: config.pids, output: path, ioPath: session.ioPath }, 'recording');
  const why = await stop;
  log.info({ why }, 'stopping');
  await session.stop((r) => writer!.write(r));
  const counters = session.counters();
  try {
    await writer.end();
  } catch (cause) {
    log.error({ records: writer.count, counters }, 'recording failed');
    throw outputError(path, 'cannot write', cause,
      'free some space or record elsewhere; what was written before the failure stays in the file, and kspan replay reads it up to the cut');
  }
  const lost = recordsLost(counters);
  log[lost ? 'warn' : 'info']({ records: writer.count, counters }, lost ? 'recorded; records were lost' : 'recorded');
  return lost ? EXIT.dataLost : EXIT.ok;
}
