/**
 * The OpenTelemetry SDK's own OTLP span exporters, for ReadableSpans: what the
 * demo's application spans go out through, and the pipeline bench's baseline.
 * Kept out of src/export/export-pipeline.ts so that `kspan run`, which sends
 * spans it encoded itself (createEncodedOtlpExporters), does not load them.
 */
import { OTLPTraceExporter as OtlpGrpcTraceExporter } from '@opentelemetry/exporter-trace-otlp-grpc';
import { OTLPTraceExporter as OtlpProtoTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import type { SpanExporter } from '@opentelemetry/sdk-trace';
import { exporterUrl, type ExportTarget, type OtlpExporterOptions } from './export-pipeline.ts';

/** The OpenTelemetry OTLP exporter for a target (the exporter honours the env for headers, TLS, compression). */
export function createOtlpExporter(target: Extract<ExportTarget, { kind: 'otlp' }>, options: OtlpExporterOptions = {}): SpanExporter {
  const config = { url: exporterUrl(target), timeoutMillis: options.timeoutMs };
  return target.protocol === 'grpc' ? new OtlpGrpcTraceExporter(config) : new OtlpProtoTraceExporter(config);
}
