/**
 * docker-compose.yml and the Collector config cannot run here (no Docker
 * engine), so their structure is checked: what kspan sends to must exist and be
 * wired into the traces pipeline.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { REPO_ROOT } from '../helpers/build-fixture.ts';

const load = (p: string) => parse(readFileSync(join(REPO_ROOT, p), 'utf8'));

test('collector config: OTLP gRPC on 4317 feeds a traces pipeline whose parts are all defined', () => {
  const c = load('collector-config/otelcol.yaml');
  assert.equal(c.receivers.otlp.protocols.grpc.endpoint, '0.0.0.0:4317');
  const p = c.service.pipelines.traces;
  assert.ok(p.receivers.includes('otlp'));
  for (const r of p.receivers) assert.ok(c.receivers[r], `receiver ${r} defined`);
  for (const x of p.processors) assert.ok(c.processors[x], `processor ${x} defined`);
  for (const e of p.exporters) assert.ok(c.exporters[e], `exporter ${e} defined`);
});

test('docker-compose: kspan sends to the collector, which mounts that config, which sends to jaeger', () => {
  const d = load('docker-compose.yml');
  const k = d.services.kspan;
  assert.equal(k.pid, 'host');
  assert.ok(k.cap_add.includes('BPF') && k.cap_add.includes('PERFMON'));
  const ep = k.command[k.command.indexOf('--otlp-endpoint') + 1];
  assert.equal(ep, 'http://otelcol:4317');
  assert.ok(d.services.otelcol.volumes.some((v: string) => v.startsWith('./collector-config/otelcol.yaml:')));
  const jaegerEp = load('collector-config/otelcol.yaml').exporters['otlp/jaeger'].endpoint;
  assert.ok(d.services[jaegerEp.split(':')[0]], 'the collector exports to a service of the stack');
});
