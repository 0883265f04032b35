import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import {
  parseElf,
  readElfFile,
  openElfFile,
  ElfFormatError,
  ET_DYN,
  EM_X86_64,
  EM_BPF,
  PT_LOAD,
  SHT_DYNSYM,
} from '../../src/elf/elf-file.ts';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const bpfObject = `${repo}bpf/.output/kspan.bpf.o`;

test('parses /bin/true: a PIE with .dynsym, PT_LOAD and section names', () => {
  const elf = readElfFile('/bin/true');
  assert.equal(elf.type, ET_DYN);
  assert.equal(elf.machine, EM_X86_64);
  assert.ok(elf.programHeaders.some((p) => p.type === PT_LOAD));
  const dynsym = elf.sectionHeader('.dynsym');
  assert.ok(dynsym);
  assert.equal(dynsym.type, SHT_DYNSYM);
  assert.equal(dynsym.entsize, 24);
  const syms = elf.symbols('.dynsym');
  assert.equal(syms.length, dynsym.size / 24);
  assert.equal(syms[0].name, ''); // the null symbol
  assert.ok(syms.some((s) => s.name.startsWith('__libc_start_main')), 'imports libc_start_main');
  assert.equal(elf.section('.interp') && Buffer.from(elf.section('.interp')!).toString('latin1'), '/lib64/ld-linux-x86-64.so.2\0');
  assert.equal(elf.section('.no-such-section'), undefined);
});

// Under KSPAN_REQUIRE_BPF=1 (CI, after scripts/setup.sh built it) a missing object fails.
const bpfObjectOptions = existsSync(bpfObject) || process.env.KSPAN_REQUIRE_BPF === '1' ? {} : { skip: 'run make -C bpf first' };
test('reads the .BTF section of the BPF object', bpfObjectOptions, () => {
  const elf = parseElf(readFileSync(bpfObject));
  assert.equal(elf.machine, EM_BPF);
  const btf = elf.section('.BTF');
  assert.ok(btf, 'has .BTF');
  // BTF header: magic 0xeB9F (little-endian), version 1.
  assert.equal(btf[0] | (btf[1] << 8), 0xeb9f);
  assert.equal(btf[2], 1);
  assert.equal(btf.length, elf.sectionHeader('.BTF')!.size);
});

test('resolves relocation symbols in .rela.dyn of libc (TPOFF64 for its own TLS)', () => {
  const libc = '/lib/x86_64-linux-gnu/libc.so.6';
  const elf = readElfFile(libc);
  assert.ok(elf.tls(), 'libc has PT_TLS');
  const relocs = elf.relocations('.rela.dyn');
  assert.ok(relocs.length > 0);
  // libc's errno is accessed initial-exec; its TPOFF64 relocations may reference
  // a symbol or be section-relative (symIndex 0, addend = offset).
  assert.ok(relocs.some((r) => r.type === 18), 'has R_X86_64_TPOFF64');
  for (const r of relocs) if (r.symIndex !== 0) assert.equal(r.symbol?.index, r.symIndex);
});

test('section table and .dynsym names equal what readelf prints', () => {
  const elf = readElfFile('/bin/true');
  const text = execFileSync('readelf', ['-SW', '/bin/true'], { encoding: 'utf8' });
  const rows = [...text.matchAll(/^\s*\[\s*(\d+)\]\s+(\S*)\s+([A-Z_]+)\s+([0-9a-f]{16})\s+([0-9a-f]+)\s+([0-9a-f]+)/gm)];
  assert.equal(elf.sections.length, rows.length);
  for (const [, idx, name, , addr, off, size] of rows) {
    const s = elf.sections[Number(idx)];
    assert.equal(s.name, Number(idx) === 0 ? '' : name);
    assert.equal(s.addr, parseInt(addr, 16));
    assert.equal(s.offset, parseInt(off, 16));
    assert.equal(s.size, parseInt(size, 16));
  }
  const dyn = execFileSync('readelf', ['--dyn-syms', '-W', '/bin/true'], { encoding: 'utf8' });
  const dynNames = dyn
    .split('\n')
    .filter((line) => /^\s*\d+:/.test(line))
    .map((line) => (line.trim().split(/\s+/)[7] ?? '').replace(/@.*$/, ''));
  assert.deepEqual(elf.symbols('.dynsym').map((s) => s.name), dynNames);
});

test('rejects what is not ELF64 little-endian', () => {
  assert.throws(() => parseElf(new Uint8Array(10)), ElfFormatError);
  assert.throws(() => parseElf(new Uint8Array(64)), /bad magic/);
  const h = new Uint8Array(64);
  h.set([0x7f, 0x45, 0x4c, 0x46, 1, 1]);
  assert.throws(() => parseElf(h), /not ELF64/);
  h[4] = 2;
  h[5] = 2;
  assert.throws(() => parseElf(h), /little-endian/);
});

test('a truncated section header table is an error, not garbage', () => {
  const bytes = new Uint8Array(readFileSync('/bin/true'));
  assert.throws(() => parseElf(bytes.subarray(0, bytes.length - 100)), /section header table out of bounds/);
});

test('openElfFile (read on demand) sees exactly what readElfFile sees', () => {
  const libc = '/lib/x86_64-linux-gnu/libc.so.6';
  const whole = readElfFile(libc);
  const lazy = openElfFile(libc);
  assert.deepEqual(lazy.sections, whole.sections);
  assert.deepEqual(lazy.programHeaders, whole.programHeaders);
  assert.deepEqual(lazy.symbols('.dynsym'), whole.symbols('.dynsym'));
  assert.deepEqual(lazy.allDynamicRelocations(), whole.allDynamicRelocations());
  // libc exports errno (GLIBC_PRIVATE) as a 4-byte TLS symbol.
  assert.deepEqual(
    { type: lazy.findSymbol('errno')?.type, size: lazy.findSymbol('errno')?.size },
    { type: 6, size: 4 },
  );
  assert.equal(lazy.findSymbol('malloc')?.value, whole.findSymbol('malloc')?.value);
  assert.ok((lazy.findSymbol('malloc')?.value ?? 0) > 0);
});

test('a symbol looked up in the table\'s bytes, before any parse of the whole table, is what the parsed table holds', () => {
  // Node's executable: 39 000 dynamic symbols, 145 000 in .symtab; libc: versioned names defined twice.
  for (const path of [process.execPath, '/lib/x86_64-linux-gnu/libc.so.6']) {
    const whole = openElfFile(path);
    for (const table of ['.dynsym', '.symtab'] as const) {
      const all = whole.symbols(table);
      const names = [...new Set(all.filter((s, i) => s.shndx !== 0 && i % 211 === 0).map((s) => s.name))];
      names.push('pthread_cond_wait', 'getaddrinfo', 'no_such_symbol_anywhere');
      const lazy = openElfFile(path); // a fresh file: nothing parsed whole
      for (const name of names) {
        const expected = all.filter((s) => s.name === name && s.shndx !== 0);
        assert.deepEqual(lazy.findSymbols(name, table), expected, `${path} ${table} ${name}`);
        assert.deepEqual(lazy.findSymbol(name, table), expected[0], `${path} ${table} ${name}`);
      }
    }
    // Relocations resolve their symbols one at a time on a fresh file, as from the parsed table.
    assert.deepEqual(openElfFile(path).allDynamicRelocations(), whole.allDynamicRelocations(), path);
  }
  const libc = openElfFile('/lib/x86_64-linux-gnu/libc.so.6');
  assert.ok(libc.findSymbols('pthread_cond_wait').length >= 2, 'libc defines pthread_cond_wait in two versions');
  // cstring() stops at a NUL and decodes latin1: such names match nothing.
  assert.deepEqual(libc.findSymbols('malloc\0'), []);
  assert.deepEqual(libc.findSymbols('mallo\u0441'), []);
  assert.equal(libc.findSymbol(''), undefined);
});

test('errors from a file name the file', () => {
  assert.throws(() => readElfFile('/etc/hostname'), (err: ElfFormatError) => err.details.path === '/etc/hostname' && /\/etc\/hostname: /.test(err.message));
});
