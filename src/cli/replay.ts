/**
 * `kspan replay FILE`: a recording through the same correlator, span builder
 * and exporter as `kspan run`, on the recording's own clock; waits for the
 * exporter rather than dropping. A recording cut short is replayed up to the
 * cut, says how many records that was, and exits 3.
 */
import { createReadStream, openSync, fstatSync, closeSync } from 'node:fs';
import type { ReplayConfig } from '../core/config.ts';
import { KspanError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { exportSpansLost, exportTarget } from '../export/export-pipeline.ts';
import { TargetResources } from '../export/target-resources.ts';
import { unknownTargetResource } from '../context/process-context-format.ts';
import { RecordFileCutError, RecordFileReader } from '../records/record-file.ts';
import { contextAttributes } from '../spans/context-attributes.ts';
import { SpanPipeline } from '../spans/span-pipeline.ts';
import { describeFsError } from './options.ts';
import { EXIT } from './usage.ts';

/** Opens FILE for reading; KSPAN_ERR_RECORD_FILE saying why it cannot. */
function openInput(path: string): number {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (cause) {
    const missing = (cause as NodeJS.ErrnoException).code === 'ENOENT';
    throw new KspanError('KSPAN_ERR_RECORD_FILE', missing ? `${path} does not exist` : `cannot read ${path}: ${describeFsError(cause)}`, {
      hint: 'give a file written by kspan record -o FILE',
      cause,
    });
  }
  if (fstatSync(fd).isDirectory()) {
    closeSync(fd);
    throw new KspanError('KSPAN_ERR_RECORD_FILE', `${path} is a directory`, { hint: 'give a file written by kspan record -o FILE' });
  }
  return fd;
}

export async function replayCommand(config: ReplayConfig, log: Logger): Promise<number> {
  const reader = await RecordFileReader.open(createReadStream('', { fd: openInput(config.input) }));
  const recorded = reader.header.resources ?? {};
  const keyMaps = reader.header.keyMaps ?? {};
  const resources = new TargetResources((pid) => recorded[String(pid)] ?? unknownTargetResource(pid));
  const pipeline = new SpanPipeline({
    mode: 'replay',
    resourceFor: (pid) => resources.resourceFor(pid),
    clockOffsetNs: reader.header.clockOffsetNs,
    target: exportTarget(config),
    orphans: config.orphans,
    extraAttributes: (k) => contextAttributes(k.parent, keyMaps[String(k.pid)]),
    logger: log,
  });
  let cut: RecordFileCutError | undefined;
  try {
    await pipeline.replay(reader);
  } catch (err) {
    if (!(err instanceof RecordFileCutError)) throw err;
    cut = err;
  }
  // Everything the records before a cut made is flushed and exported too.
  await pipeline.shutdown();
  const stats = pipeline.stats();
  const exportLost = exportSpansLost(stats.export);
  const summary = { records: reader.count, kernel: reader.header.kernelRelease, spans: stats };
  if (cut) {
    log.warn(
      { ...summary, cut: cut.cut },
      `${cut.cut ? 'the recording is cut short' : 'the recording is damaged'}: replayed the ${cut.records} records before ${cut.cut ? 'the cut' : 'the damage'}; the rest of the file is lost`,
    );
  } else log[exportLost ? 'warn' : 'info'](summary, exportLost ? 'replayed; spans were lost' : 'replayed');
  return cut || exportLost ? EXIT.dataLost : EXIT.ok;
}
