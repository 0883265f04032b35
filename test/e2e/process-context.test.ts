/**
 * The OTEP 4719 reader against real processes: a publisher (memfd, and named
 * anonymous mappings, or their memfd fallback where the kernel cannot name
 * them), one with only
 * OTEL_SERVICE_NAME in its environment, one with neither; and a publisher that
 * republishes as fast as it can, to check header/payload consistency.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readProcessContext } from '../../src/context/process-context.ts';
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { buildProcessContextPublisher, buildProcessContextPublisherWithTls, kernelNamesAnonMappings } from '../helpers/process-context-fixtures.ts';
import { ThreadContextReader, type TargetContext } from '../../src/context/thread-context-reader.ts';
import { startFixtureProcess } from '../helpers/fixture-process.ts';

let exe: string;
let exeTls: string;
before(() => {
  exe = buildProcessContextPublisher();
  exeTls = buildProcessContextPublisherWithTls();
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

// Runs on every kernel: where anonymous mappings can be named the named mapping
// is read; where they cannot (CONFIG_ANON_VMA_NAME off), prctl must fail with
// EINVAL and the publisher's memfd fallback must be read instead.
const canNameAnon = kernelNamesAnonMappings();
for (const mode of ['anon', 'anon-shmem'] as const) {
  const named = mode === 'anon' ? '[anon:OTEL_CTX]' : '[anon_shmem:OTEL_CTX]';
  test(`${mode} publisher: ${named} where the kernel names anonymous mappings, else the memfd fallback`, async () => {
    const p = await startFixtureProcess(exe, ['--mode', mode, '--service', `svc-${mode}`, '--schema', 'tlsdesc_v1_dev'], { env: BASE_ENV });
    try {
      const report = p.lines.find((l) => l.startsWith('anon-name '));
      assert.ok(report, `the publisher reports what prctl said: ${p.lines.join(' | ')}`);
      const namedOk = report === 'anon-name ok';
      if (canNameAnon !== undefined) assert.equal(namedOk, canNameAnon, `prctl agrees with the kernel config (CONFIG_ANON_VMA_NAME ${canNameAnon ? 'on' : 'off'})`);
      const maps = readFileSync(`/proc/${p.pid}/maps`, 'latin1');
      const otelCtx = maps.split('\n').filter((l) => l.includes('OTEL_CTX'));
      if (namedOk) {
        assert.equal(otelCtx.length, 1, otelCtx.join('\n'));
        assert.ok(otelCtx[0].includes(named), otelCtx[0]);
      } else {
        assert.equal(report, `anon-name errno ${constants.errno.EINVAL}`);
        assert.ok(p.lines.includes('fallback memfd'));
        assert.equal(otelCtx.length, 1, otelCtx.join('\n'));
        assert.match(otelCtx[0], /\/memfd:OTEL_CTX \(deleted\)$/);
      }
      const ctx = readProcessContext(p.pid, { hostName: 'h' });
      assert.equal(ctx.source, 'process-context');
      assert.equal(ctx.problem, undefined);
      assert.equal(ctx.resource['service.name'], `svc-${mode}`);
      assert.equal(ctx.resource['service.version'], '1.2.3');
      assert.equal(ctx.threadLocal?.scheme, 'otel_thread_ctx_v1');
      assert.deepEqual(ctx.threadLocal?.keyMap, ['http.route', 'user.id']);
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

test('a republication in place (same mapping, new published_at_ns) is re-read on the next track', async () => {
  const p = await startFixtureProcess(exeTls, ['--mode', 'memfd', '--service', 'repub'], { env: BASE_ENV });
  try {
    const described: TargetContext[] = [];
    const reader = new ThreadContextReader({ setLocation: () => {}, deleteLocation: () => {}, onTarget: (t) => described.push(t) });
    const first = reader.track(p.pid)!;
    assert.ok(first.loc, `a location (${first.reason})`);
    assert.equal(first.model, 'local-exec');
    assert.equal(first.process.resource['service.name'], 'repub');
    // Nothing changed: the same description, nothing re-read, no new target line.
    assert.equal(reader.track(p.pid), first);
    assert.equal(reader.stats.republished, 0);

    const mapsBefore = readFileSync(`/proc/${p.pid}/maps`, 'latin1');
    p.child.stdin!.write('r');
    for (let i = 0; i < 200 && !p.lines.includes('republished r1'); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(p.lines.includes('republished r1'));
    assert.equal(readFileSync(`/proc/${p.pid}/maps`, 'latin1'), mapsBefore, 'the mapped files did not change');

    const second = reader.track(p.pid)!;
    assert.equal(second.process.resource['service.name'], 'repub-r1');
    assert.ok(second.process.publishedAtNs! > first.process.publishedAtNs!);
    assert.deepEqual(second.loc, first.loc);
    assert.equal(reader.stats.republished, 1);
    assert.deepEqual(described.map((t) => t.process.resource['service.name']), ['repub', 'repub-r1'], 'a new target line');
    assert.equal(reader.track(p.pid), second, 'and nothing more until the next republication');
    assert.equal(reader.stats.republished, 1);
  } finally {
    await p.stop();
  }
});

test('a process that is gone is a typed error', () => {
  assert.throws(() => readProcessContext(2 ** 22 + 4321), { code: 'KSPAN_ERR_PROCESS_CONTEXT' });
});
