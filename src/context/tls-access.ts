/**
 * How a module reaches a TLS symbol, decided from its ELF file alone (pure).
 * The access model is read off the dynamic relocation that names the symbol
 * (REFERENCES.md, "Computing a TLS address on x86_64"):
 *
 *   R_X86_64_TLSDESC           → TLSDESC: a 2-word descriptor ld.so fills
 *   R_X86_64_DTPMOD64 (+DTPOFF) → GNU general-dynamic: a {modid, dtpoff} GOT pair
 *   R_X86_64_TPOFF64           → initial-exec: a GOT word holding the TP offset
 *   none, in the executable    → local-exec: the offset follows from PT_TLS
 *
 * Turning a plan into a location needs the running process (tls-resolver.ts).
 */
import {
  type ElfFile,
  type ElfProgramHeader,
  type ElfRelocation,
  type ElfSymbol,
  ET_EXEC,
  PT_LOAD,
  R_X86_64_DTPMOD64,
  R_X86_64_DTPOFF64,
  R_X86_64_TLSDESC,
  R_X86_64_TPOFF64,
  SHN_UNDEF,
  STT_TLS,
} from '../elf/elf-file.ts';

export type TlsAccessModel = 'local-exec' | 'initial-exec' | 'tlsdesc' | 'general-dynamic';

export type TlsAccessPlan =
  /** TP-relative offset known from the file: fsbase + offset. */
  | { model: 'local-exec'; offset: number }
  /** Read the s64 TP offset ld.so wrote at bias + slotVaddr. */
  | { model: 'initial-exec'; slotVaddr: number }
  /** Read the descriptor {entry, arg} at bias + slotVaddr. */
  | { model: 'tlsdesc'; slotVaddr: number }
  /** Read {modid, dtpoff} at bias + slotVaddr. */
  | { model: 'general-dynamic'; slotVaddr: number };

/** What a module's ELF file says about one TLS symbol. */
export interface ModuleTlsInfo {
  /** The module defines the symbol (a TLS symbol, not undefined). */
  defines: ElfSymbol | undefined;
  /** The module has a dynamic relocation naming it (defined there or imported). */
  plan: TlsAccessPlan | undefined;
  /** The first PT_LOAD: what the load bias is computed from. */
  firstLoad: Pick<ElfProgramHeader, 'offset' | 'vaddr'> | undefined;
  /** ET_EXEC: loaded at its link address (bias 0). */
  fixedAddress: boolean;
}

/** x86_64 variant II: the executable's TLS block ends at the thread pointer. */
function roundUp(n: number, align: number): number {
  return align > 1 ? Math.ceil(n / align) * align : n;
}

/**
 * Local-exec offset of a symbol in the executable's PT_TLS block:
 * st_value − roundup(p_memsz, p_align). Exact when p_vaddr % p_align == 0 (what
 * linkers produce); otherwise glibc shifts the block, so we refuse.
 */
export function localExecOffset(elf: ElfFile, sym: ElfSymbol): number | undefined {
  const tls = elf.tls();
  if (!tls) return undefined;
  const align = Math.max(tls.align, 1);
  if (tls.vaddr % align !== 0) return undefined;
  return sym.value - roundUp(tls.memsz, align);
}

function relocationPlan(relocs: ElfRelocation[], symbol: string, defined: ElfSymbol | undefined): TlsAccessPlan | undefined {
  const named = (r: ElfRelocation) => r.symbol?.name === symbol;
  // Relocations against the section symbol (symIndex 0) carry the symbol's
  // offset in the addend: what a module does for its own non-preemptible TLS.
  const anonymousForOurs = (r: ElfRelocation) => r.symIndex === 0 && defined !== undefined && r.addend === defined.value;
  const pick = (type: number, anonymousOk: boolean) =>
    relocs.find((r) => r.type === type && (named(r) || (anonymousOk && anonymousForOurs(r))));

  const desc = pick(R_X86_64_TLSDESC, true);
  if (desc) return { model: 'tlsdesc', slotVaddr: desc.offset };
  // A general-dynamic pair: DTPMOD64 then DTPOFF64 on the next word. The symbol-0
  // form stores dtpoff in the file, not as a relocation, so it is only accepted
  // with the symbol named.
  const mod = pick(R_X86_64_DTPMOD64, false);
  if (mod) {
    const off = relocs.find((r) => r.type === R_X86_64_DTPOFF64 && r.offset === mod.offset + 8);
    if (!off || (off.symbol && off.symbol.name !== symbol)) return undefined;
    return { model: 'general-dynamic', slotVaddr: mod.offset };
  }
  const ie = pick(R_X86_64_TPOFF64, true);
  if (ie) return { model: 'initial-exec', slotVaddr: ie.offset };
  return undefined;
}

/**
 * What one module's ELF says about `symbol`. `dynsymOnly: false` also looks in
 * .symtab of an executable without the symbol in .dynsym (static binaries that
 * were not linked with --export-dynamic-symbol but kept their symbol table).
 */
export function moduleTlsInfo(elf: ElfFile, symbol: string, opts: { executable: boolean; dynsymOnly?: boolean }): ModuleTlsInfo {
  let defines = elf.findSymbol(symbol, '.dynsym');
  if (!defines && opts.executable && opts.dynsymOnly === false) defines = elf.findSymbol(symbol, '.symtab');
  if (defines && (defines.type !== STT_TLS || defines.shndx === SHN_UNDEF)) defines = undefined;

  let plan = relocationPlan(elf.allDynamicRelocations(), symbol, defines);
  if (!plan && defines && opts.executable) {
    const offset = localExecOffset(elf, defines);
    if (offset !== undefined) plan = { model: 'local-exec', offset };
  }
  const load = elf.programHeaders.find((p) => p.type === PT_LOAD);
  return {
    defines,
    plan,
    firstLoad: load ? { offset: load.offset, vaddr: load.vaddr } : undefined,
    fixedAddress: elf.type === ET_EXEC,
  };
}
