/** The OTEP 4719 publisher fixture (test/fixtures/process-context/). */
import { readFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { buildFixture } from './build-fixture.ts';

function build(): string {
  const cc = ['gcc', '-O2', '-g', '-Wall', '-Werror', '-pthread', '{otel_ctx_publisher.c}'];
  return buildFixture({
    name: 'process-context',
    sources: ['test/fixtures/process-context/otel_ctx_publisher.c', 'test/fixtures/process-context/otel_ctx_header.h', 'test/fixtures/tls/otel_ctx_writer.c'],
    steps: [
      { out: 'otel_ctx_publisher', cmd: [...cc, '-o', 'otel_ctx_publisher'] },
      {
        out: 'otel_ctx_publisher_tls',
        cmd: [...cc, '{otel_ctx_writer.c}', '-ftls-model=local-exec', '-Wl,--export-dynamic-symbol=otel_thread_ctx_v1', '-o', 'otel_ctx_publisher_tls'],
      },
    ],
  });
}

export function buildProcessContextPublisher(): string {
  return join(build(), 'otel_ctx_publisher');
}

/** The same publisher, also defining otel_thread_ctx_v1 (so ThreadContextReader resolves a location). */
export function buildProcessContextPublisherWithTls(): string {
  return join(build(), 'otel_ctx_publisher_tls');
}

/**
 * Whether the running kernel can name anonymous mappings (CONFIG_ANON_VMA_NAME),
 * from its build configuration (/proc/config.gz, else /boot/config-<release>):
 * a source independent of the fixture, which only reports what prctl said.
 * Undefined when neither file is readable.
 */
export function kernelNamesAnonMappings(): boolean | undefined {
  let config: string | undefined;
  try {
    config = gunzipSync(readFileSync('/proc/config.gz')).toString('latin1');
  } catch {
    try {
      config = readFileSync(`/boot/config-${release()}`, 'latin1');
    } catch {
      return undefined;
    }
  }
  return /^CONFIG_ANON_VMA_NAME=y$/m.test(config);
}
