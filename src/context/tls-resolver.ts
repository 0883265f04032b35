/**
 * Finds where a process keeps a thread-context TLS symbol (otel_thread_ctx_v1,
 * or otel_thread_ctx_nodejs_v1 for the Node scheme) and turns it into what the
 * BPF reader needs: a `struct kspan_tls_loc` (bpf/kspan.h).
 *
 *   STATIC: address = fsbase + offset   (local-exec, initial-exec, static TLSDESC)
 *   DTV:    address = dtv[module] + offset, dtv = *(fsbase + 8)   (dlopen'ed;
 *           dtv_layout says whose entries: glibc 16 bytes, musl 8)
 *
 * Reads /proc/PID/{maps,exe,map_files,root,mem}; the per-file part (which
 * relocation names the symbol) is cached by file identity, since every process
 * maps the same libc and most map the same executable.
 */
import { readlinkSync } from 'node:fs';
import { KspanError } from '../core/errors.ts';
import { targetReadHint } from '../kernel/privileges.ts';
import { ElfFormatError, openElfFile } from '../elf/elf-file.ts';
import { KspanCtxScheme, KspanDtvLayout, KspanLimit, KspanTlsKind, type KspanTlsLoc } from '../records/abi.generated.ts';
import { type MappedFile, loadBias, mappedFiles, readProcMaps } from './proc-maps.ts';
import { ProcMemError, type ProcessMemory, procFailure, withProcessMemory } from './proc-mem.ts';
import { type ModuleTlsInfo, type TlsAccessModel, moduleTlsInfo } from './tls-access.ts';

export const OTEL_THREAD_CTX_SYMBOL = 'otel_thread_ctx_v1';

/** glibc never hands out more module ids than this in practice; bounds the DTV walk (BPF's too). */
const MAX_TLS_MODULE_ID = BigInt(KspanLimit.KSPAN_MAX_TLS_MODULE);

export type TlsResolveFailure =
  /** ld.so has not filled the slot yet (dlopen in progress): try again later. */
  | 'not-ready'
  /** The symbol is there but accessed in a way kspan cannot follow. */
  | 'unsupported'
  /** The slot holds something no libc writes there. */
  | 'bad-slot'
  /** The process exited. */
  | 'gone'
  /** Not allowed to read the process. */
  | 'permission';

export class TlsResolveError extends KspanError {
  readonly reason: TlsResolveFailure;
  constructor(pid: number, reason: TlsResolveFailure, message: string, opts: { hint?: string; cause?: unknown } = {}) {
    super('KSPAN_ERR_TLS', `process ${pid}: ${message}`, { hint: opts.hint, cause: opts.cause, details: { pid, reason } });
    this.name = 'TlsResolveError';
    this.reason = reason;
  }
}

/** How the location was found: for `kspan events` and for debugging. */
export interface TlsResolution {
  pid: number;
  symbol: string;
  /** What BPF needs (the location in the pid's `targets` map value). */
  loc: KspanTlsLoc;
  model: TlsAccessModel;
  /** TLSDESC/general-dynamic: whether ld.so put the module in static TLS. */
  dynamic: boolean;
  /** The module that defines the symbol (path in the target's namespace). */
  modulePath: string;
  /** The module whose relocation told us (often the same). */
  viaPath: string;
  /**
   * Which libc's loader laid out the TLS: the DTV entry size differs (glibc 16
   * bytes with the length at dtv[-1], musl 8 bytes with the length at dtv[0]).
   * 'unknown' for static binaries (no dlopen, so no DTV reads).
   */
  libc: LibcFlavor;
}

export type LibcFlavor = 'glibc' | 'musl' | 'unknown';

/** Which libc a process runs on, from the loader and libc it has mapped. */
export function libcFlavor(paths: string[]): LibcFlavor {
  // Alpine maps /lib/ld-musl-<arch>.so.1; Debian's musl resolves it to
  // /usr/lib/<arch>-linux-musl/libc.so.
  if (paths.some((p) => /\/ld-musl-[^/]*\.so|\/libc\.musl-[^/]*\.so|-linux-musl\/libc\.so$/.test(p))) return 'musl';
  if (paths.some((p) => /\/ld-linux[^/]*\.so|\/libc\.so\.6$/.test(p))) return 'glibc';
  return 'unknown';
}

export interface TlsResolveOptions {
  /** TLS symbol name (default otel_thread_ctx_v1). */
  symbol?: string;
  /** Value of kspan_tls_loc.scheme (default KSPAN_SCHEME_OTEL_V1). */
  scheme?: number;
}

interface Module {
  file: MappedFile;
  /** Path we can open from here (map_files or root-relative). */
  openPath: string;
  executable: boolean;
  info: ModuleTlsInfo;
  bias: number;
}

/**
 * Resolves TLS locations; keeps a bounded cache of per-file facts across calls.
 * One instance per agent.
 */
export class TlsResolver {
  private readonly cache = new Map<string, ModuleTlsInfo | null>();
  private readonly cacheLimit: number;
  /** Mapped files that are not ELF images (data files, truncated): counted, then skipped. */
  skippedFiles = 0;

  constructor(opts: { cacheLimit?: number } = {}) {
    this.cacheLimit = opts.cacheLimit ?? 4096;
  }

  /**
   * The location of `symbol` in process `pid`, or null when no module of the
   * process defines it (the process does not publish). Throws TlsResolveError.
   */
  resolve(pid: number, opts: TlsResolveOptions = {}): TlsResolution | null {
    const symbol = opts.symbol ?? OTEL_THREAD_CTX_SYMBOL;
    const scheme = opts.scheme ?? KspanCtxScheme.KSPAN_SCHEME_OTEL_V1;
    const { modules, libc } = this.modules(pid, symbol);

    const definer = modules.find((m) => m.info.defines);
    if (!definer) return null;
    // The definer's own relocation first; else one in a module importing it
    // (an executable that reaches a library's TLS initial-exec).
    const via = definer.info.plan ? definer : modules.find((m) => m.info.plan && !m.info.defines);
    if (!via?.info.plan) {
      throw new TlsResolveError(
        pid,
        'unsupported',
        `${definer.file.path} defines ${symbol} but no dynamic relocation reaches it (local-dynamic, or unused)`,
        { hint: 'build the writer with -mtls-dialect=gnu2 (TLSDESC) or -ftls-model=initial-exec, and make sure it accesses the variable' },
      );
    }

    const plan = via.info.plan;
    const base = { pid, symbol, modulePath: definer.file.path, viaPath: via.file.path, libc };
    if (plan.model === 'local-exec') {
      return { ...base, model: plan.model, dynamic: false, loc: staticLoc(plan.offset, scheme, libc) };
    }

    const slot = via.bias + plan.slotVaddr;
    return withMem(pid, (mem) => {
      if (plan.model === 'initial-exec') {
        const off = mem.readS64(slot);
        if (off === 0n) throw notReady(pid, via, 'initial-exec GOT slot');
        if (off > 0n) throw badSlot(pid, via, `initial-exec GOT slot holds a positive TP offset ${off}`);
        return { ...base, model: plan.model, dynamic: false, loc: staticLoc(off, scheme, libc) };
      }
      if (plan.model === 'tlsdesc') {
        const desc = mem.read(slot, 16);
        const entry = desc.readBigUInt64LE(0);
        const arg = desc.readBigInt64LE(8);
        if (entry === 0n) throw notReady(pid, via, 'TLSDESC descriptor');
        // Variant II: static TLS lies below the thread pointer, so a static
        // argument is a negative offset; a dynamic one is a pointer to tls_index.
        if (arg < 0n) return { ...base, model: plan.model, dynamic: false, loc: staticLoc(arg, scheme, libc) };
        const ti = mem.read(Number(arg), 16);
        const module = ti.readBigUInt64LE(0);
        const offset = ti.readBigInt64LE(8);
        if (module < 1n || module > MAX_TLS_MODULE_ID) {
          // glibc < 2.33 filled TLSDESC lazily: arg then points at the relocation.
          throw notReady(pid, via, `TLSDESC argument (module id ${module})`);
        }
        return { ...base, model: plan.model, dynamic: true, loc: dtvLoc(module, offset, scheme, libc) };
      }
      const pair = mem.read(slot, 16);
      const module = pair.readBigUInt64LE(0);
      const offset = pair.readBigInt64LE(8);
      if (module === 0n) throw notReady(pid, via, 'general-dynamic GOT pair');
      if (module > MAX_TLS_MODULE_ID) throw badSlot(pid, via, `general-dynamic module id ${module}`);
      return { ...base, model: plan.model, dynamic: true, loc: dtvLoc(module, offset, scheme, libc) };
    });
  }

  /** Every ELF module mapped in the process that defines or imports `symbol`. */
  private modules(pid: number, symbol: string): { modules: Module[]; libc: LibcFlavor } {
    let maps;
    let exe: string | undefined;
    try {
      maps = readProcMaps(pid);
      exe = readlinkSync(`/proc/${pid}/exe`).replace(/ \(deleted\)$/, '');
    } catch (err) {
      throw procError(pid, err);
    }
    const out: Module[] = [];
    const files = mappedFiles(maps);
    for (const file of files) {
      const executable = file.path === exe;
      const first = file.mappings[0];
      if (first.offset !== 0) continue; // not mapped from its start: not a loaded ELF image
      const openPath = `/proc/${pid}/map_files/${first.start.toString(16)}-${first.end.toString(16)}`;
      const info = this.fileInfo(file, openPath, pid, symbol, executable);
      if (!info || (!info.defines && !info.plan)) continue;
      const bias = info.fixedAddress ? 0 : info.firstLoad ? loadBias(file, info.firstLoad) : undefined;
      if (bias === undefined) continue;
      out.push({ file, openPath, executable, info, bias });
    }
    // The executable comes first in ld.so's lookup scope.
    out.sort((a, b) => Number(b.executable) - Number(a.executable));
    return { modules: out, libc: libcFlavor(files.map((f) => f.path)) };
  }

  private fileInfo(file: MappedFile, openPath: string, pid: number, symbol: string, executable: boolean): ModuleTlsInfo | null {
    const key = `${file.dev}:${file.inode}:${file.path}:${executable}:${symbol}`;
    const hit = this.cache.get(key);
    if (hit !== undefined) return hit;
    let info: ModuleTlsInfo | null = null;
    for (const path of [openPath, `/proc/${pid}/root${file.path}`]) {
      try {
        info = moduleTlsInfo(openElfFile(path), symbol, { executable, dynsymOnly: false });
        break;
      } catch (err) {
        if (err instanceof ElfFormatError) {
          this.skippedFiles++;
          break; // not an ELF file (a data file mmap'ed at offset 0): skip it
        }
        if (procFailure(err) === 'gone' && path === openPath) continue; // try the root-relative path
        if (procFailure(err) === 'permission' && path === openPath) continue;
        throw procError(pid, err);
      }
    }
    if (this.cache.size >= this.cacheLimit) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(key, info);
    return info;
  }
}

function staticLoc(offset: number | bigint, scheme: number, libc: LibcFlavor): KspanTlsLoc {
  return { kind: KspanTlsKind.KSPAN_TLS_STATIC, offset: BigInt(offset), module: 0n, scheme, dtv_layout: dtvLayout(libc) };
}

/**
 * The DTV walk differs by libc: glibc's entries are 16 bytes ({pointer, to_free})
 * with the length at dtv[-1]; musl's are bare 8-byte pointers with the length at
 * dtv[0]. 'unknown' (no loader mapped: a static binary) gets glibc's, but the
 * reader refuses to push such a DTV location (a static binary has no loader to
 * tell us whose). STATIC locations carry the field too, only for the record.
 */
function dtvLoc(module: bigint, offset: bigint, scheme: number, libc: LibcFlavor): KspanTlsLoc {
  return { kind: KspanTlsKind.KSPAN_TLS_DTV, offset, module, scheme, dtv_layout: dtvLayout(libc) };
}

function dtvLayout(libc: LibcFlavor): number {
  return libc === 'musl' ? KspanDtvLayout.KSPAN_DTV_MUSL : KspanDtvLayout.KSPAN_DTV_GLIBC;
}

function notReady(pid: number, m: Module, what: string): TlsResolveError {
  return new TlsResolveError(pid, 'not-ready', `the ${what} in ${m.file.path} is not relocated yet`, {
    hint: 'the library is still being loaded: resolve again later',
  });
}

function badSlot(pid: number, m: Module, what: string): TlsResolveError {
  return new TlsResolveError(pid, 'bad-slot', `unexpected ${what} in ${m.file.path}`, {
    hint: 'this libc or loader is not supported (glibc and musl on x86_64 are); please report it',
  });
}

function procError(pid: number, err: unknown): Error {
  const reason = err instanceof ProcMemError ? err.reason : procFailure(err);
  if (reason === 'gone') return new TlsResolveError(pid, 'gone', 'the process exited', { cause: err });
  if (reason === 'permission') {
    const path = err instanceof ProcMemError ? `/proc/${pid}/mem` : (err as NodeJS.ErrnoException)?.path;
    return new TlsResolveError(pid, 'permission', `cannot read ${path ?? 'its /proc files'}`, { hint: targetReadHint(path), cause: err });
  }
  return err instanceof Error ? err : new Error(String(err));
}

function withMem<T>(pid: number, fn: (mem: ProcessMemory) => T): T {
  try {
    return withProcessMemory(pid, fn);
  } catch (err) {
    if (err instanceof TlsResolveError) throw err;
    if (err instanceof ProcMemError && err.reason === 'unmapped') {
      throw new TlsResolveError(pid, 'not-ready', err.message, { hint: 'a module is being loaded or unloaded: resolve again later', cause: err });
    }
    throw procError(pid, err);
  }
}
