/**
 * The userspace twin of what bpf/thread_ctx.bpf.h does per read: from a
 * thread's thread pointer (fsbase) and a resolved kspan_tls_loc to the address
 * of its TLS variable, through /proc/PID/mem. Used by tests (to check a
 * resolution against the address a thread printed) and for debugging a target.
 */
import { KspanDtvLayout, KspanTlsKind, type KspanTlsLoc } from '../records/abi.generated.ts';
import type { ProcessMemory } from './proc-mem.ts';

export interface DtvLayout {
  /** Bytes per DTV entry: glibc dtv_t is {pointer, to_free}, musl a bare pointer. */
  entrySize: 16 | 8;
  /** Entry index holding the number of usable entries (glibc dtv[-1], musl dtv[0]). */
  lengthIndex: -1 | 0;
}

export const GLIBC_X86_64_DTV: DtvLayout = { entrySize: 16, lengthIndex: -1 };
export const MUSL_X86_64_DTV: DtvLayout = { entrySize: 8, lengthIndex: 0 };

/** glibc's TLS_DTV_UNALLOCATED. */
const UNALLOCATED = 0xffffffffffffffffn;

export type TlsAddress =
  | { ok: true; address: number }
  | { ok: false; why: 'dtv-missing' | 'module-beyond-dtv' | 'block-unallocated' };

/** The walk the location's dtv_layout names (as BPF does). */
export function dtvLayoutOf(loc: KspanTlsLoc): DtvLayout {
  return loc.dtv_layout === KspanDtvLayout.KSPAN_DTV_MUSL ? MUSL_X86_64_DTV : GLIBC_X86_64_DTV;
}

export function tlsAddress(mem: ProcessMemory, fsbase: number, loc: KspanTlsLoc, layout: DtvLayout = dtvLayoutOf(loc)): TlsAddress {
  if (loc.kind === KspanTlsKind.KSPAN_TLS_STATIC) return { ok: true, address: fsbase + Number(loc.offset) };
  if (loc.kind !== KspanTlsKind.KSPAN_TLS_DTV) throw new Error(`unknown kspan_tls_loc kind ${loc.kind}`);
  // x86_64 (glibc and musl): the tcb's second word is the dtv pointer.
  const dtv = Number(mem.readU64(fsbase + 8));
  if (dtv === 0) return { ok: false, why: 'dtv-missing' };
  const length = mem.readU64(dtv + layout.lengthIndex * layout.entrySize);
  if (loc.module > length) return { ok: false, why: 'module-beyond-dtv' };
  const block = mem.readU64(dtv + Number(loc.module) * layout.entrySize);
  if (block === 0n || block === UNALLOCATED) return { ok: false, why: 'block-unallocated' };
  return { ok: true, address: Number(block) + Number(loc.offset) };
}
