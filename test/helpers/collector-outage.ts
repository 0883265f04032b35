/**
 * A Collector outage against an ExportPipeline without a spool, for every kind of
 * span the pipeline queues (ReadableSpans, directly encoded spans): the receiver
 * stops, more spans are offered than the queue holds, a few exports fail, the
 * receiver comes back. Asserts that exactly the spans within the queue bound
 * arrive, once each, that the excess is counted and logged, and that the retries
 * are logged.
 */
import assert from 'node:assert/strict';
import type { ExportPipeline } from '../../src/export/export-pipeline.ts';
import type { OtlpReceiver, ReceivedSpan } from './otlp-receiver.ts';
import { until } from './traced-server.ts';

export interface QueueOutage<T> {
  receiver: OtlpReceiver;
  pipeline: ExportPipeline<T>;
  /** The pipeline's log lines. */
  lines: readonly { msg: string }[];
  /** The i-th span, and the id the receiver will show for it. */
  make: (i: number) => { span: T; id: string };
  /** That id on a received span. */
  receivedId: (s: ReceivedSpan) => string;
  /** Spans offered; the pipeline's maxQueueSize must be smaller. */
  offered: number;
}

/** Runs the outage; returns the ids of the spans the pipeline accepted (in order). */
export async function queueOutage<T>(o: QueueOutage<T>): Promise<string[]> {
  const { receiver, pipeline, lines } = o;
  const bound = pipeline.maxQueueSize;
  assert.ok(o.offered > bound);
  await receiver.stop();
  const accepted: string[] = [];
  for (let i = 0; i < o.offered; i++) {
    const { span, id } = o.make(i);
    if (pipeline.enqueue(span)) accepted.push(id);
  }
  assert.equal(accepted.length, bound);
  assert.equal(pipeline.counters.droppedQueueFull, o.offered - bound);
  assert.ok(lines.some((l) => l.msg === 'export queue full: spans dropped'), 'overflow is logged');
  // Let a few exports fail while the receiver is away.
  await until(() => (pipeline.counters.exportFailures >= 2 ? true : undefined), 10_000, 'two failed exports');
  await receiver.start();
  assert.equal(await pipeline.forceFlush(30_000), true);
  assert.deepEqual(receiver.spans.map(o.receivedId).sort(), [...accepted].sort());
  assert.equal(pipeline.counters.exported, bound);
  assert.equal(pipeline.counters.droppedFailed, 0);
  assert.ok(pipeline.counters.retries >= 2);
  assert.ok(lines.some((l) => l.msg === 'export failed, retrying'));
  assert.ok(lines.some((l) => l.msg === 'export: recovered'));
  return accepted;
}
