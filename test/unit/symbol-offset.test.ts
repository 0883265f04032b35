import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { readElfFile } from '../../src/elf/elf-file.ts';
import { KspanError } from '../../src/core/errors.ts';
import { entryFileOffset, fileOffsetOf, symbolFileOffset } from '../../src/elf/symbol-offset.ts';

const LIBC = '/lib/x86_64-linux-gnu/libc.so.6';

test('a symbol\'s file offset holds its code: the bytes there are the function\'s first bytes', () => {
  const elf = readElfFile(LIBC);
  const off = symbolFileOffset(elf, 'getpid');
  const sym = elf.findSymbol('getpid', '.dynsym')!;
  const load = elf.programHeaders.find((ph) => ph.type === 1 && sym.value >= ph.vaddr && sym.value < ph.vaddr + ph.filesz)!;
  assert.equal(off, sym.value - load.vaddr + load.offset);
  // glibc's getpid starts with endbr64 (f3 0f 1e fa) on CET builds, else mov $39,%eax
  const bytes = readFileSync(LIBC).subarray(off, off + 4);
  assert.ok(bytes.equals(Buffer.from([0xf3, 0x0f, 0x1e, 0xfa])) || bytes[0] === 0xb8, bytes.toString('hex'));
});

test('the entry point maps into a loadable segment; unknown symbols and addresses are typed errors', () => {
  const elf = readElfFile(process.execPath);
  assert.ok(entryFileOffset(elf) > 0);
  assert.throws(() => symbolFileOffset(readElfFile(LIBC), 'no_such_function_kspan'), KspanError);
  assert.throws(() => fileOffsetOf(elf, 1), (e: unknown) => e instanceof KspanError && e.code === 'KSPAN_ERR_ELF');
});
