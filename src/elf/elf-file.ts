/**
 * A small ELF64 little-endian reader over bytes already in memory. Pure: no fs
 * here (readElfFile below is the one convenience that touches the disk), so it
 * is unit-testable and usable on files read through /proc/PID/map_files.
 *
 * It reads what kspan needs and no more: section headers (for .BTF, .dynsym,
 * .rela.dyn), program headers (PT_TLS, PT_LOAD), symbols and RELA relocations.
 * 64-bit values become JS numbers; anything beyond 2^53 (never a real offset or
 * address in user space) is rejected rather than silently rounded.
 */
import { readFileSync } from 'node:fs';

export const ET_EXEC = 2;
export const ET_DYN = 3;

export const SHT_SYMTAB = 2;
export const SHT_STRTAB = 3;
export const SHT_RELA = 4;
export const SHT_DYNAMIC = 6;
export const SHT_NOBITS = 8;
export const SHT_DYNSYM = 11;

export const PT_LOAD = 1;
export const PT_DYNAMIC = 2;
export const PT_INTERP = 3;
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
export const EM_AARCH64 = 183;

export class ElfFormatError extends Error {
  readonly code = 'ELF_FORMAT';
  constructor(message: string) {
    super(message);
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

function cstring(bytes: Uint8Array, off: number): string {
  if (off >= bytes.length) return '';
  let end = off;
  while (end < bytes.length && bytes[end] !== 0) end++;
  return Buffer.from(bytes.buffer, bytes.byteOffset + off, end - off).toString('latin1');
}

export function parseElf(bytes: Uint8Array): ElfFile {
  if (bytes.length < EHDR_SIZE) throw new ElfFormatError(`too short for an ELF header (${bytes.length} bytes)`);
  if (bytes[0] !== 0x7f || bytes[1] !== 0x45 || bytes[2] !== 0x4c || bytes[3] !== 0x46) {
    throw new ElfFormatError('not an ELF file (bad magic)');
  }
  if (bytes[4] !== 2) throw new ElfFormatError(`not ELF64 (EI_CLASS ${bytes[4]})`);
  if (bytes[5] !== 1) throw new ElfFormatError(`not little-endian (EI_DATA ${bytes[5]})`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);

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

  const inBounds = (off: number, len: number) => off >= 0 && len >= 0 && off + len <= bytes.length;

  // Extended numbering: the real counts live in section header 0.
  if (shoff !== 0 && inBounds(shoff, SHDR_SIZE)) {
    if (shnum === 0) shnum = u64(view, shoff + 32);
    if (shstrndx === 0xffff) shstrndx = view.getUint32(shoff + 40, true);
    if (phnum === 0xffff) phnum = view.getUint32(shoff + 44, true);
  }

  const programHeaders: ElfProgramHeader[] = [];
  if (phoff !== 0 && phnum > 0) {
    if (phentsize < PHDR_SIZE || !inBounds(phoff, phnum * phentsize)) {
      throw new ElfFormatError('program header table out of bounds');
    }
    for (let i = 0; i < phnum; i++) {
      const o = phoff + i * phentsize;
      programHeaders.push({
        type: view.getUint32(o, true),
        flags: view.getUint32(o + 4, true),
        offset: u64(view, o + 8),
        vaddr: u64(view, o + 16),
        paddr: u64(view, o + 24),
        filesz: u64(view, o + 32),
        memsz: u64(view, o + 40),
        align: u64(view, o + 48),
      });
    }
  }

  const sections: ElfSection[] = [];
  if (shoff !== 0 && shnum > 0) {
    if (shentsize < SHDR_SIZE || !inBounds(shoff, shnum * shentsize)) {
      throw new ElfFormatError('section header table out of bounds');
    }
    const raw: Array<Omit<ElfSection, 'name'> & { nameOff: number }> = [];
    for (let i = 0; i < shnum; i++) {
      const o = shoff + i * shentsize;
      raw.push({
        index: i,
        nameOff: view.getUint32(o, true),
        type: view.getUint32(o + 4, true),
        flags: u64(view, o + 8),
        addr: u64(view, o + 16),
        offset: u64(view, o + 24),
        size: u64(view, o + 32),
        link: view.getUint32(o + 40, true),
        info: view.getUint32(o + 44, true),
        addralign: u64(view, o + 48),
        entsize: u64(view, o + 56),
      });
    }
    const strtab = raw[shstrndx];
    const names =
      strtab && strtab.type !== SHT_NOBITS && inBounds(strtab.offset, strtab.size)
        ? bytes.subarray(strtab.offset, strtab.offset + strtab.size)
        : new Uint8Array(0);
    for (const { nameOff, ...s } of raw) sections.push({ ...s, name: cstring(names, nameOff) });
  }

  const byName = new Map<string, ElfSection>();
  for (const s of sections) if (!byName.has(s.name)) byName.set(s.name, s);

  const sectionBytes = (s: ElfSection): Uint8Array | undefined => {
    if (s.type === SHT_NOBITS) return undefined;
    if (!inBounds(s.offset, s.size)) throw new ElfFormatError(`section ${s.name} out of bounds`);
    return bytes.subarray(s.offset, s.offset + s.size);
  };

  const symbolCache = new Map<number, ElfSymbol[]>();
  const symbolsOf = (tab: ElfSection): ElfSymbol[] => {
    const cached = symbolCache.get(tab.index);
    if (cached) return cached;
    const data = sectionBytes(tab);
    const strSec = sections[tab.link];
    const strs = strSec ? (sectionBytes(strSec) ?? new Uint8Array(0)) : new Uint8Array(0);
    const out: ElfSymbol[] = [];
    if (data) {
      const entsize = tab.entsize || SYM_SIZE;
      if (entsize < SYM_SIZE) throw new ElfFormatError(`symbol table ${tab.name} has entsize ${entsize}`);
      const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
      const n = Math.floor(data.length / entsize);
      for (let i = 0; i < n; i++) {
        const o = i * entsize;
        const info = dv.getUint8(o + 4);
        out.push({
          index: i,
          name: cstring(strs, dv.getUint32(o, true)),
          type: info & 0xf,
          bind: info >> 4,
          other: dv.getUint8(o + 5),
          shndx: dv.getUint16(o + 6, true),
          value: u64(dv, o + 8),
          size: u64(dv, o + 16),
        });
      }
    }
    symbolCache.set(tab.index, out);
    return out;
  };

  const relocationsOf = (sec: ElfSection): ElfRelocation[] => {
    const data = sectionBytes(sec);
    if (!data) return [];
    const entsize = sec.entsize || RELA_SIZE;
    if (entsize < RELA_SIZE) throw new ElfFormatError(`relocation section ${sec.name} has entsize ${entsize}`);
    const symtab = sec.link !== 0 ? sections[sec.link] : undefined;
    const syms = symtab && (symtab.type === SHT_DYNSYM || symtab.type === SHT_SYMTAB) ? symbolsOf(symtab) : [];
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
      if (symIndex !== 0 && syms[symIndex]) rel.symbol = syms[symIndex];
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
      if (!s) return undefined;
      return symbolsOf(s).find((sym) => sym.name === name && sym.shndx !== SHN_UNDEF);
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

/** Reads and parses a file (or /proc/PID/map_files/... entry). */
export function readElfFile(path: string): ElfFile {
  return parseElf(readFileSync(path));
}
