/**
 * The TLS resolver against real processes, one per access model: every thread
 * prints &otel_thread_ctx_v1 and its fsbase; the resolved location, walked the
 * way BPF walks it (through /proc/PID/mem), must land on exactly that address,
 * hold the pointer the thread stored, and the record there must carry the
 * thread's ids. No BPF involved.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { KspanDtvLayout, KspanTlsKind } from '../../src/records/abi.generated.ts';
import { TlsResolver, TlsResolveError } from '../../src/context/tls-resolver.ts';
import { tlsAddress } from '../../src/context/tls-walk.ts';
import { withProcessMemory } from '../../src/context/proc-mem.ts';
import { TLS_VARIANTS, buildTlsFixtures, startPublisher, variantOptions } from '../helpers/tls-fixtures.ts';
import { ThreadContextReader, targetEvent, type TargetContext } from '../../src/context/thread-context-reader.ts';
import type { KspanTlsLoc } from '../../src/records/abi.generated.ts';

let dir: string;
before(() => {
  dir = buildTlsFixtures();
});

for (const variant of TLS_VARIANTS) {
  test(`resolves ${variant.name}: every thread's address, pointer and record`, variantOptions(variant), async () => {
    const pub = await startPublisher(dir, variant, { threads: 3 });
    try {
      const res = new TlsResolver().resolve(pub.pid);
      assert.ok(res, 'the symbol is found');
      assert.equal(res.model, variant.model);
      assert.equal(res.dynamic, variant.dynamic);
      assert.equal(res.loc.kind, variant.dynamic ? KspanTlsKind.KSPAN_TLS_DTV : KspanTlsKind.KSPAN_TLS_STATIC);
      assert.equal(res.libc, variant.libc);
      // The walk below follows the location's own dtv_layout, as BPF does.
      assert.equal(res.loc.dtv_layout, variant.libc === 'musl' ? KspanDtvLayout.KSPAN_DTV_MUSL : KspanDtvLayout.KSPAN_DTV_GLIBC);

      assert.equal(pub.threads.length, 3);
      withProcessMemory(pub.pid, (mem) => {
        for (const t of pub.threads) {
          const at = tlsAddress(mem, t.fsbase, res.loc);
          assert.deepEqual(at, { ok: true, address: t.addr }, `thread ${t.index}`);
          assert.equal(Number(mem.readU64(t.addr)), t.record, `thread ${t.index}: the stored pointer`);
          const rec = mem.read(t.record, 28);
          assert.equal(rec.subarray(0, 16).toString('hex'), t.traceId);
          assert.equal(rec.subarray(16, 24).toString('hex'), t.spanId);
          assert.equal(rec[24], 1, 'valid');
          assert.equal(rec[25], 1, 'trace_flags');
          assert.equal(rec.readUInt16LE(26), 4, 'attrs_size');
        }
        // The thread that never touched its TLS: no context, and no wrong one.
        const idle = tlsAddress(mem, pub.idle.fsbase, res.loc);
        if (variant.idle === 'null-pointer') {
          assert.equal(idle.ok, true);
          assert.equal(idle.ok && mem.readU64(idle.address), 0n, 'idle thread: NULL pointer');
        } else {
          assert.deepEqual(idle, { ok: false, why: 'block-unallocated' });
        }
      });
    } finally {
      await pub.stop();
    }
  });
}

test('glibc TLSDESC in a dlopen\'ed library goes dynamic when the static surplus is off', async () => {
  const variant = TLS_VARIANTS.find((v) => v.name === 'dlopen-tlsdesc-static')!;
  const pub = await startPublisher(dir, variant, { env: { GLIBC_TUNABLES: 'glibc.rtld.optional_static_tls=0' } });
  try {
    const res = new TlsResolver().resolve(pub.pid)!;
    assert.equal(res.model, 'tlsdesc');
    assert.equal(res.dynamic, true);
    withProcessMemory(pub.pid, (mem) => {
      for (const t of pub.threads) assert.deepEqual(tlsAddress(mem, t.fsbase, res.loc), { ok: true, address: t.addr });
    });
  } finally {
    await pub.stop();
  }
});

test('a process that does not publish resolves to null; libc\'s own TLS (errno) resolves by name', async () => {
  const child = spawn('sleep', ['30'], { stdio: 'ignore' });
  try {
    await new Promise((r) => setTimeout(r, 100));
    const resolver = new TlsResolver();
    assert.equal(resolver.resolve(child.pid!), null);
    // The generic symbol parameter: glibc's errno is an initial-exec TLS symbol.
    const errno = resolver.resolve(child.pid!, { symbol: 'errno' });
    assert.ok(errno);
    assert.equal(errno.model, 'initial-exec');
    assert.equal(errno.loc.kind, KspanTlsKind.KSPAN_TLS_STATIC);
    assert.ok(errno.loc.offset < 0n);
    assert.match(errno.modulePath, /libc\.so\.6$/);
  } finally {
    child.kill('SIGKILL');
  }
});

test('a process that is gone is a typed error', () => {
  assert.throws(
    () => new TlsResolver().resolve(2 ** 22 + 12345),
    (err: TlsResolveError) => err instanceof TlsResolveError && err.reason === 'gone' && err.code === 'KSPAN_ERR_TLS',
  );
});

test('ThreadContextReader: a library dlopen\'ed later is picked up by refresh(), and an exit clears the location', async () => {
  const variant = TLS_VARIANTS.find((v) => v.name === 'dlopen-tlsdesc-dynamic')!;
  const calls: Array<[string, number, KspanTlsLoc?]> = [];
  const announced: TargetContext[] = [];
  const reader = new ThreadContextReader({
    setLocation: (pid, loc) => calls.push(['set', pid, loc]),
    deleteLocation: (pid) => calls.push(['delete', pid]),
    onTarget: (t) => announced.push(t),
  });
  // Looked at on its first line ("started"), before it dlopens the publisher library.
  const early: Array<TargetContext | null> = [];
  const pub = await startPublisher(dir, variant, {
    delayMs: 400,
    onSpawn: (child) => child.stdout!.once('data', () => early.push(reader.track(child.pid!))),
  });
  try {
    assert.equal(early.length, 1);
    assert.equal(early[0]?.scheme, null);
    assert.equal(early[0]?.reason, 'not-publishing');
    assert.deepEqual(calls, []);
    reader.refresh();
    const target = reader.target(pub.pid)!;
    assert.equal(target.scheme, 'otel_thread_ctx_v1');
    assert.equal(target.model, 'tlsdesc');
    assert.equal(target.dynamic, true);
    assert.equal(target.process.resource['service.name'], 'dl');
    assert.equal(calls.length, 1);
    assert.equal(calls[0][0], 'set');
    assert.equal(calls[0][1], pub.pid);
    assert.deepEqual(calls[0][2], target.loc);
    assert.equal(announced.length, 2, 'announced when first seen and when it started publishing');
    assert.deepEqual(JSON.parse(JSON.stringify(targetEvent(announced[1]))), {
      type: 'target',
      pid: pub.pid,
      scheme: 'otel_thread_ctx_v1',
      model: 'tlsdesc',
      dynamic_tls: true,
      resource_source: 'executable',
      resource: JSON.parse(JSON.stringify(target.process.resource)),
    });
    assert.equal(targetEvent(announced[0]).scheme, 'none');
    assert.equal(targetEvent(announced[0]).reason, 'not-publishing');
    reader.refresh(); // nothing changed: no new map write
    assert.equal(calls.length, 1);
  } finally {
    await pub.stop();
  }
  reader.refresh();
  assert.deepEqual(calls.at(-1), ['delete', pub.pid]);
  assert.equal(reader.target(pub.pid), undefined);
  assert.equal(reader.stats.gone, 1);
});
