/**
 * Function spans from uprobes, the kernel-touching half: for each traced process,
 * finds the probed functions in its executable and mapped libraries (kspan's
 * ELF reader, through /proc/PID/root so a container's files are the ones
 * probed), attaches an entry and a return uprobe once per binary (every process
 * mapping it; bpf/uprobes.bpf.h leaves untraced processes at once through the
 * `targets` map), and detaches a binary's probes when no traced process maps it
 * any more. Reads the `calls` ring buffer into CallRecords.
 *
 * The programs live in kspan.bpf.o (loaded by TcpTracer, graded optional as
 * feature `uprobes`); this class only attaches them.
 */
import { readlinkSync } from 'node:fs';
import { TUNING } from '../core/config.ts';
import { KspanError } from '../core/errors.ts';
import { openElfFile, type ElfFile } from '../elf/elf-file.ts';
import { fileOffsetOf } from '../elf/symbol-offset.ts';

/** ELF symbol type of a function (STT_FUNC). */
const STT_FUNC = 2;
import { mappedFiles, readProcMaps, type MappedFile } from '../context/proc-maps.ts';
import type { BpfObject, UprobeLink } from '../kernel/bpf-object.ts';
import { RingBufferReader } from '../kernel/ring-buffer.ts';
import { KSPAN_CALL_SIZE, KspanLimit } from '../records/abi.generated.ts';
import type { ProbeInfo } from '../spans/call-spans.ts';
import { decodeCallRecord, type CallRecord } from './call-record.ts';
import { binaryMatches, formatUprobeSpec, type UprobeSpec } from './uprobe-spec.ts';

/** The programs of bpf/uprobes.bpf.h. */
export const UPROBE_ENTRY = 'uprobe_call_entry';
const RETURN_PROGRAM = { call: 'uprobe_call_return', tls: 'uprobe_tls_return', dns: 'uprobe_dns_return' } as const;

export interface UprobeTracerOptions {
  /** kspan.bpf.o, loaded, with the uprobe programs. */
  object: BpfObject;
  /** Whether a program was loaded (the plan's decision: an optional one may be off). */
  loaded: (program: string) => boolean;
  specs: readonly UprobeSpec[];
  onCall: (c: CallRecord) => void;
  /** A record the decoder refused (counted). */
  onDecodeError?: (err: unknown) => void;
  onRingError?: (err: unknown) => void;
  /** A probe that could not be attached, or a file that could not be read: the function makes no spans. */
  onProbeError?: (err: KspanError) => void;
  /** A user-defined spec that matches nothing in a target (told once per spec and target). */
  onNotFound?: (spec: UprobeSpec, pid: number) => void;
}

/** One probed function in one binary (dev:inode): its two links and the processes that map it. */
interface Attachment {
  key: string;
  probe: number;
  links: UprobeLink[];
  pids: Set<number>;
}

export interface UprobeTracerStats {
  /** Attachments (function × binary) now, and ever made. */
  attached: number;
  attachedTotal: number;
  detachedTotal: number;
  decodeErrors: number;
  probeErrors: number;
}

export class UprobeTracer {
  readonly #o: UprobeTracerOptions;
  readonly #ring: RingBufferReader;
  /** `${spec index} ${dev}:${inode}` → attachment. */
  readonly #attachments = new Map<string, Attachment>();
  readonly #byPid = new Map<number, Set<Attachment>>();
  readonly #probes = new Map<number, ProbeInfo>();
  /**
   * What each binary (`${dev}:${inode}`) said of the symbols asked of it:
   * `symbolKey()` → file offset, or null where it does not define it; the binary
   * null when it could not be read (reported once). Only the answers are kept,
   * at most BINARY_ANSWERS binaries (the oldest let go first): an opened file
   * and the table bytes it read live for one track() pass (#pass).
   */
  readonly #binaries = new Map<string, Map<string, number | null> | null>();
  /**
   * The binaries opened during the track() pass under way, so that the specs of
   * one pass read each symbol table once; let go when the pass ends. (Kept for
   * the agent's life, with every symbol parsed, they were tens of MB of heap for
   * one Node target: its executable's 39 000 dynamic symbols, as objects and names.)
   */
  #pass: Map<string, ElfFile> | null = null;
  /** Spec × binary pairs that failed to attach (not retried every refresh). */
  readonly #failed = new Set<string>();
  readonly #notFound = new Set<string>();
  #nextProbe = 1;
  #stopped = false;
  readonly stats: UprobeTracerStats = { attached: 0, attachedTotal: 0, detachedTotal: 0, decodeErrors: 0, probeErrors: 0 };

  constructor(o: UprobeTracerOptions) {
    this.#o = o;
    this.#ring = new RingBufferReader(o.object.map('calls').fd, KspanLimit.KSPAN_CALL_RING_BYTES, (view, off, len) => {
      try {
        if (len < KSPAN_CALL_SIZE) throw new Error(`short call record: ${len} bytes`);
        o.onCall(decodeCallRecord(view, off));
      } catch (err) {
        this.stats.decodeErrors++;
        o.onDecodeError?.(err);
      }
    }, { onError: o.onRingError });
  }

  start(): void {
    this.#ring.start(TUNING.ringIdleMs);
  }

  /** What the agent knows of probe `id` (the record's cookie). */
  probe(id: number): ProbeInfo | undefined {
    return this.#probes.get(id);
  }

  /**
   * Probes what `pid` maps now (again after a dlopen or an exec: call it on the
   * refresh timer). Binaries it no longer maps are let go.
   */
  track(pid: number): void {
    if (this.#stopped) return;
    this.#pass = new Map();
    try {
      this.#track(pid);
    } finally {
      this.#pass = null;
    }
  }

  #track(pid: number): void {
    const files = mappedFiles(readProcMaps(pid));
    let exe = '';
    try {
      exe = readlinkSync(`/proc/${pid}/exe`).replace(/ \(deleted\)$/, '');
    } catch {
      // a kernel thread or a process gone: no executable to match
    }
    const now = new Set<Attachment>();
    this.#o.specs.forEach((spec, i) => {
      let found = false;
      for (const f of files) {
        if (!binaryMatches(spec.binary, f.path) && !(spec.alsoExecutable && f.path === exe)) continue;
        const a = this.#attach(i, spec, f, pid);
        if (a) {
          a.pids.add(pid);
          now.add(a);
          found = true;
        }
      }
      const nf = `${i} ${pid}`;
      if (!found && spec.kind === 'call' && !this.#notFound.has(nf)) {
        this.#notFound.add(nf);
        this.#o.onNotFound?.(spec, pid);
      }
    });
    for (const a of this.#byPid.get(pid) ?? []) if (!now.has(a)) this.#release(a, pid);
    this.#byPid.set(pid, now);
  }

  /** `pid` is no longer traced: binaries no traced process maps any more are detached. */
  untrack(pid: number): void {
    for (const a of this.#byPid.get(pid) ?? []) this.#release(a, pid);
    this.#byPid.delete(pid);
    for (const k of this.#notFound) if (k.endsWith(` ${pid}`)) this.#notFound.delete(k);
  }

  #release(a: Attachment, pid: number): void {
    a.pids.delete(pid);
    if (a.pids.size) return;
    for (const l of a.links) l.destroy();
    this.#attachments.delete(a.key);
    this.stats.attached--;
    this.stats.detachedTotal++;
  }

  #attach(i: number, spec: UprobeSpec, f: MappedFile, pid: number): Attachment | undefined {
    const binKey = `${f.dev}:${f.inode}`;
    const key = `${i} ${binKey}`;
    const existing = this.#attachments.get(key);
    if (existing) return existing;
    if (this.#failed.has(key)) return undefined;
    const path = `/proc/${pid}/root${f.path}`;
    const offset = this.#offset(binKey, path, spec);
    if (offset === null) return undefined;
    const probe = this.#nextProbe++;
    const links: UprobeLink[] = [];
    try {
      const obj = this.#o.object;
      // A preset's own return program when the kernel took it, else the plain one (duration and result).
      const ret = this.#o.loaded(RETURN_PROGRAM[spec.kind]) ? RETURN_PROGRAM[spec.kind] : RETURN_PROGRAM.call;
      links.push(obj.attachUprobe(UPROBE_ENTRY, { binaryPath: path, offset, retprobe: false, cookie: probe }));
      links.push(obj.attachUprobe(ret, { binaryPath: path, offset, retprobe: true, cookie: probe }));
    } catch (err) {
      for (const l of links) l.destroy();
      this.#failed.add(key);
      this.stats.probeErrors++;
      this.#o.onProbeError?.(new KspanError('KSPAN_ERR_UPROBE', `cannot attach a uprobe to ${spec.symbol} in ${f.path} (${formatUprobeSpec(spec)})`, {
        hint: 'the function makes no spans; check that the kernel has CONFIG_UPROBES (kspan doctor) and that the file is readable',
        cause: err,
      }));
      return undefined;
    }
    this.#probes.set(probe, { spanName: spec.spanName, kind: spec.kind, symbol: spec.symbol, binary: f.path });
    const a: Attachment = { key, probe, links, pids: new Set() };
    this.#attachments.set(key, a);
    this.stats.attached++;
    this.stats.attachedTotal++;
    return a;
  }

  /**
   * The file offset of `symbol` in the binary, or null when it does not define
   * it (or the file cannot be read: reported once). A symbol table's bytes are
   * read once per binary and pass, and searched for each function without being
   * parsed whole (Node's executable is 120 MB, 145 000 symbols); each answer is
   * kept, so a later pass (the refresh timer, another process mapping the
   * binary) asks the file nothing again. `.symtab` is read for user-defined
   * functions, and for presets only when the file has no `.dynsym` (a static
   * executable): what a preset probes is exported where it is linked dynamically.
   */
  #offset(binKey: string, path: string, spec: UprobeSpec): number | null {
    const known = this.#binaries.get(binKey);
    if (known === null) return null;
    const key = symbolKey(spec);
    const answer = known?.get(key);
    if (answer !== undefined) return answer;
    const bin = this.#open(binKey, path, spec);
    const offset = bin ? functionOffset(bin, spec) : null;
    if (bin) this.#answer(binKey, known).set(key, offset);
    return offset;
  }

  /** The binary, opened in this pass (now if not yet), or null when it cannot be read (reported, remembered). */
  #open(binKey: string, path: string, spec: UprobeSpec): ElfFile | null {
    const open = this.#pass?.get(binKey);
    if (open) return open;
    let elf: ElfFile;
    try {
      elf = openElfFile(path);
    } catch (err) {
      this.#remember(binKey, null);
      this.stats.probeErrors++;
      this.#o.onProbeError?.(new KspanError('KSPAN_ERR_UPROBE', `cannot read ${path} to find ${spec.symbol}`, {
        hint: 'the functions kspan probes in this file make no spans; is it an ELF file kspan may read?',
        cause: err,
      }));
      return null;
    }
    this.#pass?.set(binKey, elf);
    return elf;
  }

  /** The answers kept for a binary, made on its first. */
  #answer(binKey: string, known: Map<string, number | null> | undefined): Map<string, number | null> {
    if (known) return known;
    const made = new Map<string, number | null>();
    this.#remember(binKey, made);
    return made;
  }

  /** Keeps what a binary said (null: unreadable), the oldest binary's let go past BINARY_ANSWERS. */
  #remember(binKey: string, answers: Map<string, number | null> | null): void {
    if (this.#binaries.size >= BINARY_ANSWERS) this.#binaries.delete(this.#binaries.keys().next().value!);
    this.#binaries.set(binKey, answers);
  }

  /** Processes tracked now. */
  get pids(): number[] {
    return [...this.#byPid.keys()];
  }

  /** Detaches every probe, then delivers what is left in the ring. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#ring.stop();
    for (const a of this.#attachments.values()) for (const l of a.links) l.destroy();
    this.stats.detachedTotal += this.#attachments.size;
    this.stats.attached = 0;
    this.#attachments.clear();
    this.#byPid.clear();
    this.#ring.drain();
    this.#ring.close();
  }
}

/** Binaries whose answers are kept (a few symbols each). */
const BINARY_ANSWERS = 4096;

/** What an answer is kept under: the symbol, and whether the spec may find it in `.symtab` (a user's function). */
function symbolKey(spec: UprobeSpec): string {
  return `${spec.kind === 'call' ? 'call' : 'preset'} ${spec.symbol}`;
}

/**
 * The file offset of the spec's function in the binary, or null where it does
 * not define it. Where a table defines the name more than once (symbol
 * versions), the last definition is taken.
 */
function functionOffset(elf: ElfFile, spec: UprobeSpec): number | null {
  const dynamic = elf.sections.some((x) => x.name === '.dynsym');
  const tables: ('.dynsym' | '.symtab')[] = spec.kind === 'call' || !dynamic ? ['.dynsym', '.symtab'] : ['.dynsym'];
  for (const t of tables) {
    const fn = elf.findSymbols(spec.symbol, t).findLast((sym) => sym.type === STT_FUNC && sym.value !== 0);
    if (!fn) continue;
    try {
      return fileOffsetOf(elf, fn.value, `symbol ${spec.symbol}`);
    } catch {
      return null;
    }
  }
  return null;
}
