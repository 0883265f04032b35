/** The OTEP 4719 publisher fixture (test/fixtures/process-context/). */
import { join } from 'node:path';
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

/** Exit status of the publisher when the kernel cannot name anonymous mappings (no CONFIG_ANON_VMA_NAME). */
export const EXIT_NO_ANON_VMA_NAME = 3;
