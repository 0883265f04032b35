/**
 * A small ELF64 little-endian reader. The parser is pure (parseElf over bytes in
 * memory, parseElfSource over any byte source) so it is unit-testable; the two
 * conveniences at the end touch the disk: readElfFile (whole file) and
 * openElfFile (headers now, sections on demand), both usable on
 * /proc/PID/map_files entries.
 *
 * It reads what kspan needs and no more: section headers (for .BTF, .dynsym,
 * .rela.dyn), program headers (PT_TLS, PT_LOAD), symbols and RELA relocations.
 * 64-bit values become JS numbers; anything beyond 2^53 (never a real offset or
 * address in user space) is rejected rather than silently rounded.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { KspanError } from '../core/errors.ts';

export const ET_EXEC = 2;
export const ET_DYN = 3;

export const SHT_SYMTAB = 2;
export const SHT_RELA = 4;
export const SHT_NOBITS = 8;
export const SHT_DYNSYM = 11;

export const PT_LOAD = 1;
export const PT_TLS = 7;

export const STT_TLS = 6;
export const SHN_UNDEF = 0;

/** x86_64 relocation types kspan cares about (TLS). */
export const R_X86_64_DTPMOD64 = 16;
export const R_X86_64_DTPOFF64 = 17;
export const R_X86_64_TPOFF64 = 18;
export const R_X86_64_TLSDESC = 36;

export const EM_X86_64 = 62;
export const EM_BPF = 247;

/** The bytes are not an ELF64 little-endian file, or a table in it is out of bounds. */
export class ElfFormatError extends KspanError {
  constructor(message: string, options: { path?: string; cause?: unknown } = {}) {
    super('KSPAN_ERR_ELF', options.path ? `${options.path}: ${message}` : message, {
      cause: options.cause,
      details: options.path ? { path: options.path } : {},
    });
    this.name = 'ElfFormatError';
  }
}

export interface ElfSection {
  index: number;
  name: string;
  type: number;
  flags: number;
  addr: number;
  offset: number;
  size: number;
  link: number;
  info: number;
  addralign: number;
  entsize: number;
}

export interface ElfProgramHeader {
  type: number;
  flags: number;
  offset: number;
  vaddr: number;
  paddr: number;
  filesz: number;
  memsz: number;
  align: number;
}

export interface ElfSymbol {
  /** Index in its symbol table (what relocations refer to). */
  index: number;
  name: string;
  value: number;
  size: number;
  /** STT_* (low 4 bits of st_info). */
  type: number;
  /** STB_* (high 4 bits of st_info). */
  bind: number;
  other: number;
  shndx: number;
}

export interface ElfRelocation {
  /** Where the relocation applies (a virtual address, before load bias). */
  offset: number;
  type: number;
  /** Index into the symbol table the section links to (0: no symbol). */
  symIndex: number;
  addend: number;
  /** The referenced symbol, resolved through the section's sh_link table. */
  symbol?: ElfSymbol;
}

export interface ElfFile {
  /** e_type: ET_EXEC, ET_DYN, ... */
  type: number;
  machine: number;
  entry: number;
  sections: ElfSection[];
  programHeaders: ElfProgramHeader[];
  /** A section's bytes (a view, not a copy); undefined when absent or SHT_NOBITS. */
  section(name: string): Uint8Array | undefined;
  sectionHeader(name: string): ElfSection | undefined;
  /** Symbols of '.symtab' or '.dynsym' (default), [] when the table is absent. */
  symbols(sectionName?: '.symtab' | '.dynsym'): ElfSymbol[];
  /** The first defined symbol with that name in the table, or undefined. */
  findSymbol(name: string, sectionName?: '.symtab' | '.dynsym'): ElfSymbol | undefined;
  /** Every defined symbol with that name in the table, in table order (a versioned name can be defined more than once). */
  findSymbols(name: string, sectionName?: '.symtab' | '.dynsym'): ElfSymbol[];
  /** The PT_TLS program header, when the file has a TLS segment. */
  tls(): ElfProgramHeader | undefined;
  /** RELA relocations of one section (default '.rela.dyn'), symbols resolved. */
  relocations(sectionName?: string): ElfRelocation[];
  /** Every SHT_RELA section's relocations (.rela.dyn, .rela.plt, ...). */
  allDynamicRelocations(): ElfRelocation[];
}

const EHDR_SIZE = 64;
const SHDR_SIZE = 64;
const PHDR_SIZE = 56;
const SYM_SIZE = 24;
const RELA_SIZE = 24;

function u64(view: DataView, off: number): number {
  const v = view.getBigUint64(off, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ElfFormatError(`64-bit value 0x${v.toString(16)} at ${off} is beyond 2^53`);
  return Number(v);
}

function s64(view: DataView, off: number): number {
  const v = view.getBigInt64(off, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new ElfFormatError(`64-bit value ${v} at ${off} is beyond 2^53`);
  }
  return Number(v);
}

/** Whether the NUL-terminated string at `off` (or the bytes to the end, as cstring() reads them) is `want`. */
function nameAt(bytes: Uint8Array, off: number, want: Uint8Array): boolean {
  if (off >= bytes.length) return want.length === 0; // cstring() reads ''
  const end = off + want.length;
  if (end > bytes.length || (end < bytes.length && bytes[end] !== 0)) return false;
  for (let k = 0; k < want.length; k++) if (bytes[off + k] !== want[k]) return false;
  return true;
}

function cstring(bytes: Uint8Array, off: number): string {
  if (off >= bytes.length) return '';
  let end = off;
  while (end < bytes.length && bytes[end] !== 0) end++;
  return Buffer.from(bytes.buffer, bytes.byteOffset + off, end - off).toString('latin1');
}

/**
 * Where the bytes come from: all in memory, or read on demand from a file so
 * that a 100 MB executable costs only its headers and the sections asked for.
 */
export interface ElfByteSource {
  size: number;
  /** `length` bytes at `offset`; the caller has checked the bounds. */
  read(offset: number, length: number): Uint8Array;
}

/** Parses an ELF file held in memory. Section bytes are views into `bytes`. */
export function parseElf(bytes: Uint8Array): ElfFile {
  return parseElfSource({ size: bytes.length, read: (o, n) => bytes.subarray(o, o + n) });
}

/** Parses an ELF file read on demand (headers now, each section when asked for). */
export function parseElfSource(src: ElfByteSource): ElfFile {
  if (src.size < EHDR_SIZE) throw new ElfFormatError(`too short for an ELF header (${src.size} bytes)`);
  const ehdr = src.read(0, EHDR_SIZE);
  if (ehdr[0] !== 0x7f || ehdr[1] !== 0x45 || ehdr[2] !== 0x4c || ehdr[3] !== 0x46) {
    throw new ElfFormatError('not an ELF file (bad magic)');
  }
  if (ehdr[4] !== 2) throw new ElfFormatError(`not ELF64 (EI_CLASS ${ehdr[4]})`);
  if (ehdr[5] !== 1) throw new ElfFormatError(`not little-endian (EI_DATA ${ehdr[5]})`);
  const view = new DataView(ehdr.buffer, ehdr.byteOffset, ehdr.byteLength);

  const type = view.getUint16(16, true);
  const machine = view.getUint16(18, true);
  const entry = u64(view, 24);
  const phoff = u64(view, 32);
  const shoff = u64(view, 40);
  const phentsize = view.getUint16(54, true);
  let phnum = view.getUint16(56, true);
  const shentsize = view.getUint16(58, true);
  let shnum = view.getUint16(60, true);
  let shstrndx = view.getUint16(62, true);

  const inBounds = (off: number, len: number) => off >= 0 && len >= 0 && off + len <= src.size;
  const tableView = (off: number, len: number) => {
    const b = src.read(off, len);
    return new DataView(b.buffer, b.byteOffset, b.byteLength);
  };

  // Extended numbering: the real counts live in section header 0.
  if (shoff !== 0 && inBounds(shoff, SHDR_SIZE)) {
    const sh0 = tableView(shoff, SHDR_SIZE);
    if (shnum === 0) shnum = u64(sh0, 32);
    if (shstrndx === 0xffff) shstrndx = sh0.getUint32(40, true);
    if (phnum === 0xffff) phnum = sh0.getUint32(44, true);
  }

  const programHeaders: ElfProgramHeader[] = [];
  if (phoff !== 0 && phnum > 0) {
    if (phentsize < PHDR_SIZE || !inBounds(phoff, phnum * phentsize)) {
      throw new ElfFormatError('program header table out of bounds');
    }
    const ph = tableView(phoff, phnum * phentsize);
    for (let i = 0; i < phnum; i++) {
      const o = i * phentsize;
      programHeaders.push({
        type: ph.getUint32(o, true),
        flags: ph.getUint32(o + 4, true),
        offset: u64(ph, o + 8),
        vaddr: u64(ph, o + 16),
        paddr: u64(ph, o + 24),
        filesz: u64(ph, o + 32),
        memsz: u64(ph, o + 40),
        align: u64(ph, o + 48),
      });
    }
  }

  const sections: ElfSection[] = [];
  if (shoff !== 0 && shnum > 0) {
    if (shentsize < SHDR_SIZE || !inBounds(shoff, shnum * shentsize)) {
      throw new ElfFormatError('section header table out of bounds');
    }
    const raw: Array<Omit<ElfSection, 'name'> & { nameOff: number }> = [];
    const sh = tableView(shoff, shnum * shentsize);
    for (let i = 0; i < shnum; i++) {
      const o = i * shentsize;
      raw.push({
        index: i,
        nameOff: sh.getUint32(o, true),
        type: sh.getUint32(o + 4, true),
        flags: u64(sh, o + 8),
        addr: u64(sh, o + 16),
        offset: u64(sh, o + 24),
        size: u64(sh, o + 32),
        link: sh.getUint32(o + 40, true),
        info: sh.getUint32(o + 44, true),
        addralign: u64(sh, o + 48),
        entsize: u64(sh, o + 56),
      });
    }
    const strtab = raw[shstrndx];
    const names =
      strtab && strtab.type !== SHT_NOBITS && inBounds(strtab.offset, strtab.size)
        ? src.read(strtab.offset, strtab.size)
        : new Uint8Array(0);
    for (const { nameOff, ...s } of raw) sections.push({ ...s, name: cstring(names, nameOff) });
  }

  const byName = new Map<string, ElfSection>();
  for (const s of sections) if (!byName.has(s.name)) byName.set(s.name, s);

  const sectionCache = new Map<number, Uint8Array>();
  const sectionBytes = (s: ElfSection): Uint8Array | undefined => {
    if (s.type === SHT_NOBITS) return undefined;
    if (!inBounds(s.offset, s.size)) throw new ElfFormatError(`section ${s.name} out of bounds`);
    let b = sectionCache.get(s.index);
    if (!b) sectionCache.set(s.index, (b = src.read(s.offset, s.size)));
    return b;
  };

  /** A symbol table's bytes, its string table and its entry count (undefined: SHT_NOBITS). */
  const tableOf = (tab: ElfSection) => {
    const data = sectionBytes(tab);
    if (!data) return undefined;
    const strSec = sections[tab.link];
    const strs = strSec ? (sectionBytes(strSec) ?? new Uint8Array(0)) : new Uint8Array(0);
    const entsize = tab.entsize || SYM_SIZE;
    if (entsize < SYM_SIZE) throw new ElfFormatError(`symbol table ${tab.name} has entsize ${entsize}`);
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    return { dv, strs, entsize, count: Math.floor(data.length / entsize) };
  };
  type Table = NonNullable<ReturnType<typeof tableOf>>;
  const symbolAt = (t: Table, i: number): ElfSymbol => {
    const o = i * t.entsize;
    const info = t.dv.getUint8(o + 4);
    return {
      index: i,
      name: cstring(t.strs, t.dv.getUint32(o, true)),
      type: info & 0xf,
      bind: info >> 4,
      other: t.dv.getUint8(o + 5),
      shndx: t.dv.getUint16(o + 6, true),
      value: u64(t.dv, o + 8),
      size: u64(t.dv, o + 16),
    };
  };

  const symbolCache = new Map<number, ElfSymbol[]>();
  const symbolsOf = (tab: ElfSection): ElfSymbol[] => {
    const cached = symbolCache.get(tab.index);
    if (cached) return cached;
    const t = tableOf(tab);
    const out: ElfSymbol[] = [];
    if (t) for (let i = 0; i < t.count; i++) out.push(symbolAt(t, i));
    symbolCache.set(tab.index, out);
    return out;
  };

  /**
   * The defined symbols named `name`, in table order. A table not parsed whole
   * yet is searched in its bytes: only the matches become objects (an
   * executable's .symtab can hold 145 000 symbols and 12 MB of names, which
   * parsed whole would be tens of MB of short-lived heap for one lookup).
   */
  const symbolsNamed = (tab: ElfSection, name: string): ElfSymbol[] => {
    const cached = symbolCache.get(tab.index);
    if (cached) return cached.filter((sym) => sym.name === name && sym.shndx !== SHN_UNDEF);
    // cstring() decodes names as latin1 and stops at a NUL: a name with a
    // character outside latin1, or a NUL, equals none of them.
    if (/[^\u0001-\u00ff]/.test(name)) return [];
    const t = tableOf(tab);
    if (!t) return [];
    const want = Buffer.from(name, 'latin1');
    const out: ElfSymbol[] = [];
    for (let i = 0; i < t.count; i++) {
      const o = i * t.entsize;
      if (t.dv.getUint16(o + 6, true) === SHN_UNDEF) continue;
      if (!nameAt(t.strs, t.dv.getUint32(o, true), want)) continue;
      out.push(symbolAt(t, i));
    }
    return out;
  };

  /** Symbol `i` of a table, decoded alone unless the table was parsed whole (undefined past its end). */
  const symbolIndexer = (tab: ElfSection): ((i: number) => ElfSymbol | undefined) => {
    const cached = symbolCache.get(tab.index);
    if (cached) return (i) => cached[i];
    const t = tableOf(tab);
    return (i) => (t && i < t.count ? symbolAt(t, i) : undefined);
  };

  const relocationsOf = (sec: ElfSection): ElfRelocation[] => {
    const data = sectionBytes(sec);
    if (!data) return [];
    const entsize = sec.entsize || RELA_SIZE;
    if (entsize < RELA_SIZE) throw new ElfFormatError(`relocation section ${sec.name} has entsize ${entsize}`);
    const symtab = sec.link !== 0 ? sections[sec.link] : undefined;
    const symbolOf = symtab && (symtab.type === SHT_DYNSYM || symtab.type === SHT_SYMTAB) ? symbolIndexer(symtab) : () => undefined;
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const out: ElfRelocation[] = [];
    const n = Math.floor(data.length / entsize);
    for (let i = 0; i < n; i++) {
      const o = i * entsize;
      const info = dv.getBigUint64(o + 8, true);
      const symIndex = Number(info >> 32n);
      const rel: ElfRelocation = {
        offset: u64(dv, o),
        type: Number(info & 0xffffffffn),
        symIndex,
        addend: s64(dv, o + 16),
      };
      const symbol = symIndex !== 0 ? symbolOf(symIndex) : undefined;
      if (symbol) rel.symbol = symbol;
      out.push(rel);
    }
    return out;
  };

  return {
    type,
    machine,
    entry,
    sections,
    programHeaders,
    section(name) {
      const s = byName.get(name);
      return s ? sectionBytes(s) : undefined;
    },
    sectionHeader(name) {
      return byName.get(name);
    },
    symbols(sectionName = '.dynsym') {
      const s = byName.get(sectionName);
      return s ? symbolsOf(s) : [];
    },
    findSymbol(name, sectionName = '.dynsym') {
      const s = byName.get(sectionName);
      return s ? symbolsNamed(s, name)[0] : undefined;
    },
    findSymbols(name, sectionName = '.dynsym') {
      const s = byName.get(sectionName);
      return s ? symbolsNamed(s, name) : [];
    },
    tls() {
      return programHeaders.find((p) => p.type === PT_TLS);
    },
    relocations(sectionName = '.rela.dyn') {
      const s = byName.get(sectionName);
      if (!s || s.type !== SHT_RELA) return [];
      return relocationsOf(s);
    },
    allDynamicRelocations() {
      // Only relocations against the dynamic symbol table: those are what ld.so applies.
      return sections
        .filter((s) => s.type === SHT_RELA && sections[s.link]?.type === SHT_DYNSYM)
        .flatMap(relocationsOf);
    },
  };
}

/** Reads and parses a whole file (or /proc/PID/map_files/... entry). */
export function readElfFile(path: string): ElfFile {
  try {
    return parseElf(readFileSync(path));
  } catch (err) {
    if (err instanceof ElfFormatError && err.details.path === undefined) {
      throw new ElfFormatError(err.message, { path, cause: err });
    }
    throw err;
  }
}

/**
 * Opens a file and reads only its headers now; sections are read when asked
 * for (the file is reopened for each, so no descriptor stays open). For large
 * executables where only .dynsym and the relocations matter.
 */
export function openElfFile(path: string): ElfFile {
  const size = withFd(path, (fd) => fstatSync(fd).size);
  const read = (offset: number, length: number): Uint8Array =>
    withFd(path, (fd) => {
      const buf = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const n = readSync(fd, buf, done, length - done, offset + done);
        if (n === 0) throw new ElfFormatError(`file shrank while reading (offset ${offset + done})`, { path });
        done += n;
      }
      return buf;
    });
  try {
    return parseElfSource({ size, read });
  } catch (err) {
    if (err instanceof ElfFormatError && err.details.path === undefined) {
      throw new ElfFormatError(err.message, { path, cause: err });
    }
    throw err;
  }
}

function withFd<T>(path: string, fn: (fd: number) => T): T {
  const fd = openSync(path, 'r');
  try {
    return fn(fd);
  } finally {
    closeSync(fd);
  }
}
