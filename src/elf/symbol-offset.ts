/**
 * Where to put a uprobe: libbpf's bpf_program__attach_uprobe takes a file offset,
 * while ELF symbols and the entry point are virtual addresses. The PT_LOAD
 * segment that holds an address gives the translation. Pure over a parsed ELF.
 */
import { type ElfFile, PT_LOAD } from './elf-file.ts';
import { KspanError } from '../core/errors.ts';

/** The file offset of virtual address `vaddr` in `elf`. */
export function fileOffsetOf(elf: ElfFile, vaddr: number, what = `address 0x${vaddr.toString(16)}`): number {
  for (const ph of elf.programHeaders) {
    if (ph.type === PT_LOAD && vaddr >= ph.vaddr && vaddr < ph.vaddr + ph.filesz) return vaddr - ph.vaddr + ph.offset;
  }
  throw new KspanError('KSPAN_ERR_ELF', `${what} is in no loadable segment of the file`);
}

/** The file offset of a function symbol (.dynsym, then .symtab). */
export function symbolFileOffset(elf: ElfFile, name: string): number {
  const sym = elf.findSymbol(name, '.dynsym') ?? elf.findSymbol(name, '.symtab');
  if (!sym) throw new KspanError('KSPAN_ERR_ELF', `no symbol "${name}" in the file`, { hint: 'is the binary stripped?' });
  return fileOffsetOf(elf, sym.value, `symbol ${name}`);
}

/** The file offset of the entry point: always code, a safe place for a test uprobe. */
export function entryFileOffset(elf: ElfFile): number {
  return fileOffsetOf(elf, elf.entry, 'the entry point');
}
