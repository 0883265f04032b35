/**
 * The OTEP 4719 reader against real processes: a publisher (memfd, and named
 * anonymous mappings where the kernel can name them), one with only
 * OTEL_SERVICE_NAME in its environment, one with neither; and a publisher that
 * republishes as fast as it can, to check header/payload consistency.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readProcessContext } from '../../src/context/process-context.ts';
import { buildProcessContextPublisher, EXIT_NO_ANON_VMA_NAME } from '../helpers/process-context-fixtures.ts';
import { startFixtureProcess } from '../helpers/fixture-process.ts';

let exe: string;
before(() => {
  exe = buildProcessContextPublisher();
});

// A clean environment, so the runner's own OTEL_* variables cannot leak in.
const BASE_ENV = { PATH: process.env.PATH ?? '/usr/bin:/bin' };

test('memfd publisher: the published Resource and threadlocal keys', async () => {
  const p = await startFixtureProcess(exe, ['--mode', 'memfd', '--service', 'checkout', '--schema', 'tls_v1', '--keys', 'http.route,user.id'], {
    env: { ...BASE_ENV, OTEL_SERVICE_NAME: 'from-env-must-lose' },
  });
  try {
    const ctx = readProcessContext(p.pid, { hostName: 'test-host' });
    assert.equal(ctx.source, 'process-context');
    assert.equal(ctx.problem, undefined);
    assert.deepEqual(ctx.resource, {
      'service.name': 'checkout',
      'service.version': '1.2.3',
      'kspan.test.generation': '',
      'process.pid': p.pid,
      'process.executable.name': 'otel_ctx_publisher',
      'process.executable.path': exe,
      'host.name': 'test-host',
    });
    assert.deepEqual(ctx.threadLocal, {
      schemaVersion: 'tls_v1',
      scheme: 'otel_thread_ctx_v1',
      keyMap: ['http.route', 'user.id'],
      raw: { 'threadlocal.schema_version': 'tls_v1', 'threadlocal.attribute_key_map': ['http.route', 'user.id'] },
    });
    assert.ok(ctx.publishedAtNs && ctx.publishedAtNs > 0n);
  } finally {
    await p.stop();
  }
});

for (const mode of ['anon', 'anon-shmem']) {
  test(`${mode} publisher (named anonymous mapping)`, async (t) => {
    let p;
    try {
      p = await startFixtureProcess(exe, ['--mode', mode, '--service', `svc-${mode}`, '--schema', 'tlsdesc_v1_dev'], { env: BASE_ENV });
    } catch (err) {
      if ((err as { exitCode?: number }).exitCode === EXIT_NO_ANON_VMA_NAME) {
        t.skip('this kernel cannot name anonymous mappings (CONFIG_ANON_VMA_NAME off)');
        return;
      }
      throw err;
    }
    try {
      const ctx = readProcessContext(p.pid);
      assert.equal(ctx.source, 'process-context');
      assert.equal(ctx.resource['service.name'], `svc-${mode}`);
      assert.equal(ctx.threadLocal?.scheme, 'otel_thread_ctx_v1');
    } finally {
      await p.stop();
    }
  });
}

test('no mapping, OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES in the environment', async () => {
  const p = await startFixtureProcess(exe, ['--mode', 'none'], {
    env: { ...BASE_ENV, OTEL_SERVICE_NAME: 'billing', OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment.name=prod,service.name=overridden,team=a%2Cb' },
  });
  try {
    const ctx = readProcessContext(p.pid, { hostName: 'h' });
    assert.equal(ctx.source, 'environment');
    assert.deepEqual(ctx.resource, {
      'service.name': 'billing', // OTEL_SERVICE_NAME wins over OTEL_RESOURCE_ATTRIBUTES
      'deployment.environment.name': 'prod',
      team: 'a,b',
      'process.pid': p.pid,
      'process.executable.name': 'otel_ctx_publisher',
      'process.executable.path': exe,
      'host.name': 'h',
    });
    assert.equal(ctx.threadLocal, null);
  } finally {
    await p.stop();
  }
});

test('neither: the executable name is the service name', async () => {
  const p = await startFixtureProcess(exe, ['--mode', 'none'], { env: BASE_ENV });
  try {
    const ctx = readProcessContext(p.pid);
    assert.equal(ctx.source, 'executable');
    assert.equal(ctx.resource['service.name'], 'otel_ctx_publisher');
    assert.equal(ctx.resource['process.pid'], p.pid);
    assert.equal(ctx.problem, undefined);
  } finally {
    await p.stop();
  }
});

test('a writer republishing in a loop: every read is one whole generation, never a mix', async () => {
  const p = await startFixtureProcess(exe, ['--mode', 'memfd', '--service', 'churn', '--churn'], { env: BASE_ENV });
  try {
    const seen = { a: 0, b: 0, problem: 0 };
    for (let i = 0; i < 2000; i++) {
      const ctx = readProcessContext(p.pid, { attempts: 10 });
      if (ctx.source !== 'process-context') {
        assert.match(ctx.problem ?? '', /being updated|updated while being read|short read|cannot read/);
        seen.problem++;
        continue;
      }
      const gen = ctx.resource['kspan.test.generation'] as 'a' | 'b';
      assert.equal(ctx.resource['service.name'], `churn-${gen}`, 'service.name and generation come from one payload');
      seen[gen]++;
    }
    assert.ok(seen.a > 0 && seen.b > 0, `reads see both generations: ${JSON.stringify(seen)}`);
    console.log(`churn: ${JSON.stringify(seen)}`);
  } finally {
    await p.stop();
  }
});

test('a process that is gone is a typed error', () => {
  assert.throws(() => readProcessContext(2 ** 22 + 4321), { code: 'KSPAN_ERR_PROCESS_CONTEXT' });
});
