/**
 * The pure part of TLS resolution: which relocation names the symbol, per
 * access model, read from the fixture's ELF files; /proc/PID/maps parsing and
 * the load bias; libc detection.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readElfFile } from '../../src/elf/elf-file.ts';
import { moduleTlsInfo, localExecOffset } from '../../src/context/tls-access.ts';
import { parseProcMaps, mappedFiles, loadBias } from '../../src/context/proc-maps.ts';
import { libcFlavor } from '../../src/context/tls-resolver.ts';
import { buildTlsFixtures } from '../helpers/tls-fixtures.ts';
import { toolOptions } from '../helpers/build-fixture.ts';

const SYM = 'otel_thread_ctx_v1';
let dir: string;
before(() => {
  dir = buildTlsFixtures();
});

test('library models: TPOFF64 → initial-exec, TLSDESC → tlsdesc, DTPMOD64+DTPOFF64 → general-dynamic', () => {
  const cases: Array<[string, string]> = [
    ['libotel_ie.so', 'initial-exec'],
    ['libotel_desc.so', 'tlsdesc'],
    ['libotel_desc_big.so', 'tlsdesc'],
    ['libotel_gd.so', 'general-dynamic'],
  ];
  for (const [lib, model] of cases) {
    const elf = readElfFile(join(dir, lib));
    const info = moduleTlsInfo(elf, SYM, { executable: false });
    assert.equal(info.defines?.name, SYM, lib);
    assert.equal(info.plan?.model, model, lib);
    // The slot is the relocation's own address (what ld.so writes).
    const reloc = elf.allDynamicRelocations().find((r) => r.symbol?.name === SYM)!;
    assert.deepEqual(info.plan, { model, slotVaddr: reloc.offset }, lib);
  }
});

test('local-exec in the executable: st_value − roundup(p_memsz, p_align)', () => {
  const elf = readElfFile(join(dir, 'le'));
  const info = moduleTlsInfo(elf, SYM, { executable: true });
  const tls = elf.tls()!;
  const sym = elf.findSymbol(SYM)!;
  assert.equal(info.plan?.model, 'local-exec');
  assert.equal(info.plan?.model === 'local-exec' && info.plan.offset, sym.value - Math.ceil(tls.memsz / tls.align) * tls.align);
  assert.equal(localExecOffset(elf, sym), -8); // the only TLS variable: 8 bytes below the thread pointer
  // The same file seen as a library has no usable plan: LE is only valid in the executable.
  assert.equal(moduleTlsInfo(elf, SYM, { executable: false }).plan, undefined);
});

test('an executable importing the symbol carries no definition; a module without it has nothing', () => {
  const exe = moduleTlsInfo(readElfFile(join(dir, 'ie')), SYM, { executable: true });
  assert.equal(exe.defines, undefined);
  const libc = moduleTlsInfo(readElfFile('/lib/x86_64-linux-gnu/libc.so.6'), SYM, { executable: false });
  assert.deepEqual([libc.defines, libc.plan], [undefined, undefined]);
});

test('static musl binary: found through .symtab when .dynsym is absent', toolOptions('musl-gcc', 'musl-tools'), () => {
  const elf = readElfFile(join(dir, 'musl_static'));
  assert.equal(elf.sectionHeader('.dynsym'), undefined);
  assert.equal(moduleTlsInfo(elf, SYM, { executable: true }).plan, undefined); // dynsymOnly by default
  const info = moduleTlsInfo(elf, SYM, { executable: true, dynsymOnly: false });
  assert.deepEqual(info.plan, { model: 'local-exec', offset: -8 });
  assert.equal(info.fixedAddress, true);
});

const MAPS = `55d1c0a00000-55d1c0a01000 r--p 00000000 fe:00 5333472                    /srv/app (deleted)
55d1c0a01000-55d1c0a02000 r-xp 00001000 fe:00 5333472                    /srv/app (deleted)
55d1c2000000-55d1c2021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 rw-s 00000000 00:01 2048                       /memfd:OTEL_CTX (deleted)
7f1bef2e6000-7f1bef2fb000 r--p 00000000 fe:00 13402115                   /usr/lib/x86_64-linux-musl/libc.so
7f1bef2fb000-7f1bef35e000 r-xp 00015000 fe:00 13402115                   /usr/lib/x86_64-linux-musl/libc.so
7f1bef400000-7f1bef401000 rw-p 00000000 00:00 0                          [anon:OTEL_CTX]
7ffd9e302000-7ffd9e323000 rw-p 00000000 00:00 0                          [stack]
`;

test('maps: parsed, grouped by file, deleted suffix stripped, memfd and anon left out', () => {
  const maps = parseProcMaps(MAPS);
  assert.equal(maps.length, 8);
  assert.deepEqual(maps[0], { start: 0x55d1c0a00000, end: 0x55d1c0a01000, perms: 'r--p', offset: 0, dev: 'fe:00', inode: 5333472, path: '/srv/app (deleted)' });
  assert.equal(maps[6].path, '[anon:OTEL_CTX]');
  const files = mappedFiles(maps);
  assert.deepEqual(files.map((f) => [f.path, f.deleted, f.mappings.length]), [
    ['/srv/app', true, 2],
    ['/usr/lib/x86_64-linux-musl/libc.so', false, 2],
  ]);
  // PIE whose first PT_LOAD is at vaddr 0: bias = mapping start.
  assert.equal(loadBias(files[0], { offset: 0, vaddr: 0 }), 0x55d1c0a00000);
  // A prelinked-style first segment at 0x400000.
  assert.equal(loadBias(files[0], { offset: 0, vaddr: 0x400000 }), 0x55d1c0a00000 - 0x400000);
  assert.equal(loadBias(files[0], { offset: 0x5000, vaddr: 0x5000 }), undefined);
});

test('libc flavour from mapped paths', () => {
  assert.equal(libcFlavor(['/usr/lib/x86_64-linux-musl/libc.so']), 'musl');
  assert.equal(libcFlavor(['/lib/ld-musl-x86_64.so.1']), 'musl');
  assert.equal(libcFlavor(['/lib/x86_64-linux-gnu/libc.so.6', '/lib64/ld-linux-x86-64.so.2']), 'glibc');
  assert.equal(libcFlavor(['/srv/static-app']), 'unknown');
});
