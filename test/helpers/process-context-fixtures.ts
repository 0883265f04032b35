/** The OTEP 4719 publisher fixture (test/fixtures/process-context/). */
import { readFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { buildFixture } from './build-fixture.ts';

export function buildProcessContextPublisher(): string {
  const dir = buildFixture({
    name: 'process-context',
    sources: ['test/fixtures/process-context/otel_ctx_publisher.c'],
    steps: [
      {
        out: 'otel_ctx_publisher',
        cmd: ['gcc', '-O2', '-g', '-Wall', '-Werror', '-pthread', '{otel_ctx_publisher.c}', '-o', 'otel_ctx_publisher'],
      },
    ],
  });
  return join(dir, 'otel_ctx_publisher');
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
