/**
 * OpenTelemetry metric names as Prometheus writes them. The Prometheus exporter
 * turns dots into underscores and adds `_total` to counters; the unit suffix
 * that Prometheus' conventions (and the OpenTelemetry specification's
 * Prometheus compatibility rules) call for is added here: `s` → `_seconds`,
 * `By` → `_bytes`. Annotations (`{record}`) and `1` add nothing.
 */
import type { ResourceMetrics } from '@opentelemetry/sdk-metrics';

const UNIT_SUFFIX: Record<string, string> = { s: 'seconds', ms: 'milliseconds', By: 'bytes' };

/** The name with its unit suffix, still dotted (`process.cpu.time` + `s` → `process.cpu.time_seconds`). */
export function withUnitSuffix(name: string, unit: string): string {
  const suffix = UNIT_SUFFIX[unit];
  return suffix && !name.endsWith(`_${suffix}`) ? `${name}_${suffix}` : name;
}

/** The Prometheus name of an OpenTelemetry metric: `process.cpu.time` (s, counter) → `process_cpu_time_seconds_total`. */
export function prometheusName(name: string, unit: string, monotonicSum: boolean): string {
  const n = withUnitSuffix(name, unit).replace(/[^a-zA-Z0-9_:]/g, '_');
  return monotonicSum && !n.endsWith('_total') ? `${n}_total` : n;
}

/** A copy of `rm` whose metric names carry their unit suffix (the serializer does the rest). */
export function addUnitSuffixes(rm: ResourceMetrics): ResourceMetrics {
  return {
    resource: rm.resource,
    scopeMetrics: rm.scopeMetrics.map((sm) => ({
      scope: sm.scope,
      metrics: sm.metrics.map((m) => ({ ...m, descriptor: { ...m.descriptor, name: withUnitSuffix(m.descriptor.name, m.descriptor.unit) } })),
    })),
  };
}
