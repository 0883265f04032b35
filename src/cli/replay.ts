/**
 * `kspan replay FILE`: a recording through the same correlator, span builder
 * and exporter as `kspan run`, on the recording's own clock; waits for the
 * exporter rather than dropping.
 */
import { createReadStream } from 'node:fs';
import { parseArgs } from 'node:util';
import { KspanError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { resolveExportTarget } from '../export/export-pipeline.ts';
import { contextAttributes } from '../spans/context-attributes.ts';
import { RecordFileReader } from '../records/record-file.ts';
import { SpanPipeline } from '../spans/span-pipeline.ts';
import { TargetResources } from '../export/target-resources.ts';
import { unknownTargetResource } from '../context/process-context-format.ts';

export async function replayCommand(args: string[], log: Logger): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      'otlp-endpoint': { type: 'string' },
      'otlp-protocol': { type: 'string' },
      console: { type: 'boolean', default: false },
      orphans: { type: 'boolean', default: false },
    },
  });
  if (positionals.length !== 1) throw new KspanError('KSPAN_ERR_USAGE', 'give exactly one recording: kspan replay FILE');
  const reader = await RecordFileReader.open(createReadStream(positionals[0]));
  const recorded = reader.header.resources ?? {};
  const keyMaps = reader.header.keyMaps ?? {};
  const resources = new TargetResources((pid) => recorded[String(pid)] ?? unknownTargetResource(pid));
  const pipeline = new SpanPipeline({
    mode: 'replay',
    resourceFor: (pid) => resources.resourceFor(pid),
    clockOffsetNs: reader.header.clockOffsetNs,
    target: resolveExportTarget({ endpoint: values['otlp-endpoint'], protocol: values['otlp-protocol'], console: values.console }),
    orphans: values.orphans,
    extraAttributes: (k) => contextAttributes(k.parent, keyMaps[String(k.pid)]),
    logger: log,
  });
  await pipeline.replay(reader);
  await pipeline.shutdown();
  log.info({ records: reader.count, kernel: reader.header.kernelRelease, spans: pipeline.stats() }, 'replayed');
  return 0;
}
