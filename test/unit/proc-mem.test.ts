/** ProcessMemory on this very process: /proc/self/mem needs no privilege. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readProcMaps } from '../../src/context/proc-maps.ts';
import { ProcMemError, ProcessMemory, USER_SPACE_END, withProcessMemory } from '../../src/context/proc-mem.ts';

const exe = readProcMaps(process.pid).find((m) => m.offset === 0 && m.path === process.execPath)!;

test('reads mapped bytes at a number or bigint address', () => {
  withProcessMemory(process.pid, (mem) => {
    assert.equal(mem.read(exe.start, 4).toString('latin1'), '\x7fELF');
    assert.equal(mem.read(BigInt(exe.start) + 1n, 3).toString('latin1'), 'ELF');
    assert.equal(mem.tryRead(BigInt(exe.start), 4)?.toString('latin1'), '\x7fELF');
  });
});

test('outside user space: refused as unmapped before any read; tryRead gives undefined', () => {
  withProcessMemory(process.pid, (mem) => {
    for (const [addr, len] of [[0n, 8], [USER_SPACE_END - 4n, 8], [0xffff_8000_0000_0000n, 8]] as const) {
      assert.throws(() => mem.read(addr, len), (err: unknown) => {
        assert.ok(err instanceof ProcMemError);
        assert.equal(err.reason, 'unmapped');
        assert.equal(err.code, 'KSPAN_ERR_TARGET');
        assert.equal(err.message, `process ${process.pid}: 0x${addr.toString(16)} (+${len}) is not a user-space address`);
        return true;
      });
      assert.equal(mem.tryRead(addr, len), undefined);
    }
  });
});

test('an unmapped page inside user space: unmapped, with the address', () => {
  const mem = new ProcessMemory(process.pid);
  try {
    const addr = 0x1000; // below mmap_min_addr: never mapped
    assert.throws(() => mem.read(addr, 8), { name: 'ProcMemError', message: `process ${process.pid}: cannot read 8 bytes at 0x1000` });
    assert.equal(mem.tryRead(addr, 8), undefined);
  } finally {
    mem.close();
  }
});

test('a process that does not exist: gone', () => {
  assert.throws(() => new ProcessMemory(0x3fffffff), (err: unknown) => {
    assert.ok(err instanceof ProcMemError);
    assert.equal(err.reason, 'gone');
    assert.equal(err.message, `process ${0x3fffffff}: cannot open /proc/${0x3fffffff}/mem`);
    return true;
  });
});
