/**
 * What `kspan run` loads: the self-metrics stack and the policy file's YAML
 * parser and schema library are loaded only when they are configured (their
 * code is a large part of the idle agent's memory, BENCHMARKS.md). A child
 * process imports the run command as src/cli/main.ts does and lists the
 * packages it loaded.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';

const ROOT = resolve(import.meta.dirname, '../..');
const dir = mkdtempSync(join(tmpdir(), 'kspan-footprint-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const LAZY = [
  'yaml',
  'zod',
  '@opentelemetry/exporter-prometheus',
  '@opentelemetry/exporter-metrics-otlp-grpc',
  // The SDK's span exporters (the demo's) and the transformer with its generated
  // protobuf code: kspan run encodes its requests itself and decodes a response
  // body only when a Collector reports a partial success.
  '@opentelemetry/exporter-trace-otlp-grpc',
  '@opentelemetry/exporter-trace-otlp-proto',
  '@opentelemetry/otlp-transformer',
];

/** The packages a child loads for `loadCommandConfig('run', argv)` and the run command's module, and the config's endpoint. */
function loaded(argv: string[]): { packages: string[]; endpoint: string } {
  const script = `
    import { registerHooks } from 'node:module';
    const seen = new Set();
    registerHooks({ load(url, ctx, next) { const m = /node_modules\\/((?:@[^/]+\\/)?[^/]+)/.exec(url); if (m) seen.add(m[1]); return next(url, ctx); } });
    const { loadCommandConfig } = await import(${JSON.stringify(join(ROOT, 'src/policy/policy-config.ts'))});
    const config = loadCommandConfig('run', ${JSON.stringify(argv)});
    await import(${JSON.stringify(join(ROOT, 'src/cli/run.ts'))});
    process.stdout.write(JSON.stringify({ packages: [...seen].sort(), endpoint: config.otlpEndpoint }));
  `;
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('OTEL_') || k.startsWith('KSPAN_')) delete env[k];
  return JSON.parse(execFileSync(process.execPath, ['--disable-warning=ExperimentalWarning', '--input-type=module', '-e', script], { env, encoding: 'utf8' }));
}

describe('kspan run loads only what it is configured to use', () => {
  test('without a policy file or self-metrics: no YAML parser, schema library or metric exporters', () => {
    const r = loaded(['--pid', '1', '--otlp-endpoint', 'http://127.0.0.1:4317']);
    assert.equal(r.endpoint, 'http://127.0.0.1:4317');
    assert.deepEqual(LAZY.filter((p) => r.packages.includes(p)), []);
    // The export path itself is loaded.
    assert.ok(r.packages.includes('@grpc/grpc-js'), r.packages.join(' '));
  });

  test('with --config: the policy file is read through the lazily loaded parser', () => {
    const file = join(dir, 'kspan.yaml');
    writeFileSync(file, 'export:\n  endpoint: http://collector.example:4317\n');
    const r = loaded(['--pid', '1', '--config', file]);
    assert.equal(r.endpoint, 'http://collector.example:4317');
    assert.deepEqual(['yaml', 'zod'].filter((p) => r.packages.includes(p)), ['yaml', 'zod']);
    assert.deepEqual(['@opentelemetry/exporter-prometheus', '@opentelemetry/exporter-metrics-otlp-grpc'].filter((p) => r.packages.includes(p)), []);
  });
});
