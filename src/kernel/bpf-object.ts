/**
 * Opens, loads and attaches a BPF object through libbpf, and owns everything it
 * attached: close() destroys every link and the object. No pinning, so when the
 * process dies (even by SIGKILL) the kernel drops the programs with its fds.
 *
 * Failures become KspanError with a code and what to do; a verifier rejection is a
 * VerifierError with the program name and the verifier's log.
 */
import { existsSync } from 'node:fs';
import { attachRefusedHint, loadRefusedHint, tracefsState } from './privileges.ts';
import { constants } from 'node:os';
import {
  errnoError,
  HINT_BTF,
  HINT_TRACEFS,
  KspanError,
  VerifierError,
} from '../core/errors.ts';
import { BpfTestRunOpts, BpfUprobeOpts, errno, libbpf, withSignalsBlocked } from './native.ts';
import { captureLibbpfLog } from './libbpf-log.ts';

type Ptr = bigint;

export interface AttachOptions {
  /** uprobe: attach to this pid only (-1: every process mapping the binary). */
  pid?: number;
  binaryPath?: string;
  offset?: number;
  retprobe?: boolean;
}

/** One attached uprobe; destroy() detaches it (idempotent). */
export interface UprobeLink {
  destroy(): void;
}

const VERIFIER_LOG_SIZE = 4 << 20;
const { EPERM, ENOENT, EACCES, EAGAIN, EEXIST, EINTR, ENOSPC } = constants.errno;
const BPF_NOEXIST = 1;
const BPF_EXIST = 2;

export class BpfMap {
  readonly name: string;
  readonly keySize: number;
  readonly valueSize: number;
  readonly fd: number;
  readonly #ptr: Ptr;

  constructor(name: string, ptr: Ptr) {
    const lib = libbpf();
    this.name = name;
    this.#ptr = ptr;
    this.keySize = lib.mapKeySize(ptr);
    this.valueSize = lib.mapValueSize(ptr);
    this.fd = lib.mapFd(ptr);
  }

  /** Value size as the kernel copies it: per-CPU maps hold one slot per possible CPU. */
  lookup(key: Buffer, valueSize = this.valueSize): Buffer | null {
    const out = Buffer.alloc(valueSize);
    const rc = libbpf().mapLookup(this.#ptr, key, key.length, out, valueSize, 0);
    if (rc === -ENOENT) return null;
    if (rc < 0) throw this.#error('lookup', rc);
    return out;
  }

  update(key: Buffer, value: Buffer, flags = 0): void {
    const rc = libbpf().mapUpdate(this.#ptr, key, key.length, value, value.length, flags);
    if (rc < 0) throw this.#error('update', rc);
  }

  /** Adds the key only if absent (BPF_NOEXIST); false when it was there. */
  insert(key: Buffer, value: Buffer): boolean {
    const rc = libbpf().mapUpdate(this.#ptr, key, key.length, value, value.length, BPF_NOEXIST);
    if (rc === -EEXIST) return false;
    if (rc < 0) throw this.#error('update', rc);
    return true;
  }

  /** Replaces the value only if the key is there (BPF_EXIST); false when it was not. */
  replace(key: Buffer, value: Buffer): boolean {
    const rc = libbpf().mapUpdate(this.#ptr, key, key.length, value, value.length, BPF_EXIST);
    if (rc === -ENOENT) return false;
    if (rc < 0) throw this.#error('update', rc);
    return true;
  }

  /** Returns false when the key was not there. */
  delete(key: Buffer): boolean {
    const rc = libbpf().mapDelete(this.#ptr, key, key.length, 0);
    if (rc === -ENOENT) return false;
    if (rc < 0) throw this.#error('delete', rc);
    return true;
  }

  /** Every key present now (a snapshot; the kernel may change the map meanwhile). */
  keys(): Buffer[] {
    const out: Buffer[] = [];
    let cur: Buffer | null = null;
    for (;;) {
      const next = Buffer.alloc(this.keySize);
      const rc = libbpf().mapNextKey(this.#ptr, cur, next, this.keySize);
      if (rc === -ENOENT) return out;
      if (rc < 0) throw this.#error('get_next_key', rc);
      out.push(next);
      cur = next;
    }
  }

  #error(op: string, rc: number): KspanError {
    return new KspanError('KSPAN_ERR_MAP', `BPF map "${this.name}": ${op} failed`, {
      cause: errnoError(`bpf_map__${op}`, rc),
    });
  }
}

/**
 * struct bpf_prog_info (uapi): the offsets of the fields read, and the bytes
 * asked for (up to the end of recursion_misses, Linux 5.12). The kernel fills
 * as many as the caller gives. test/unit/metrics.test.ts checks them against
 * the running kernel's BTF.
 */
export const BPF_PROG_INFO = { id: 4, runTimeNs: 192, runCnt: 200, recursionMisses: 208, verifiedInsns: 216, size: 224 } as const;
const PROG_INFO_SIZE = BPF_PROG_INFO.size;

export interface BpfProgramInfo {
  id: number;
  runTimeNs: bigint;
  runCount: bigint;
  recursionMisses: bigint;
  /** Instructions the verifier processed to accept the program (its `insns processed`; 5.16+, else 0). */
  verifiedInsns: number;
}

export class BpfObject {
  readonly path: string;
  readonly #obj: Ptr;
  readonly #programs = new Map<string, Ptr>();
  readonly #maps = new Map<string, BpfMap>();
  readonly #links: { name: string; ptr: Ptr }[] = [];
  #logBuf: Buffer | undefined;
  #loaded = false;
  #closed = false;

  private constructor(path: string, obj: Ptr) {
    this.path = path;
    this.#obj = obj;
    const lib = libbpf();
    for (let p = lib.objectNextProgram(obj, null); p; p = lib.objectNextProgram(obj, p)) {
      this.#programs.set(lib.programName(p), p);
    }
  }

  static open(path: string): BpfObject {
    if (!existsSync(path)) {
      throw new KspanError('KSPAN_ERR_BPF_OBJECT', `BPF object ${path} does not exist`, {
        hint: 'build it: make -C bpf (scripts/setup.sh does this)',
      });
    }
    const log = captureLibbpfLog();
    const obj = libbpf().objectOpenFile(path, null);
    const err = errno();
    const lines = log.stop();
    if (!obj) {
      throw new KspanError('KSPAN_ERR_BPF_OBJECT', `libbpf could not open ${path}`, {
        cause: errnoError('bpf_object__open_file', err),
        details: { libbpfLog: lines },
      });
    }
    return new BpfObject(path, obj);
  }

  get programNames(): string[] {
    return [...this.#programs.keys()];
  }

  #program(name: string): Ptr {
    const p = this.#programs.get(name);
    if (!p) throw new KspanError('KSPAN_ERR_BPF_OBJECT', `no program "${name}" in ${this.path}`);
    return p;
  }

  setAutoload(name: string, on: boolean): void {
    libbpf().programSetAutoload(this.#program(name), on);
  }

  /** Changes a program's type before load (fault injection in tests). */
  setProgramType(name: string, type: number): void {
    libbpf().programSetType(this.#program(name), type);
  }

  autoload(name: string): boolean {
    return libbpf().programAutoload(this.#program(name));
  }

  sectionName(name: string): string {
    return libbpf().programSectionName(this.#program(name));
  }

  /** Resizes a map before load (e.g. the ring buffer). */
  setMaxEntries(mapName: string, n: number): void {
    const m = libbpf().objectFindMap(this.#obj, mapName);
    if (!m) throw new KspanError('KSPAN_ERR_BPF_OBJECT', `no map "${mapName}" in ${this.path}`);
    const rc = libbpf().mapSetMaxEntries(m, n);
    if (rc < 0) {
      throw new KspanError('KSPAN_ERR_MAP', `cannot size map "${mapName}" to ${n}`, {
        cause: errnoError('bpf_map__set_max_entries', rc),
      });
    }
  }

  /** Adds creation flags to a map before load (e.g. BPF_F_NO_PREALLOC). */
  addMapFlags(mapName: string, flags: number): void {
    const lib = libbpf();
    const m = lib.objectFindMap(this.#obj, mapName);
    if (!m) throw new KspanError('KSPAN_ERR_BPF_OBJECT', `no map "${mapName}" in ${this.path}`);
    const rc = lib.mapSetFlags(m, (lib.mapFlags(m) | flags) >>> 0);
    if (rc < 0) {
      throw new KspanError('KSPAN_ERR_MAP', `cannot set flags 0x${flags.toString(16)} on map "${mapName}"`, {
        cause: errnoError('bpf_map__set_map_flags', rc),
      });
    }
  }

  /** `verifierLogSize`: bytes for the verifier's log of a rejected program (default 4 MiB; at least 128: a kernel before 6.4 refuses a smaller log with EINVAL, writing none). */
  load(opts: { verifierLogSize?: number } = {}): void {
    const lib = libbpf();
    // One log buffer serves every program: programs load in order and libbpf only
    // writes the log (at level 1, on its retry) for the one that failed. Since
    // the buffer is ours, libbpf does not print the log itself.
    const size = opts.verifierLogSize ?? VERIFIER_LOG_SIZE;
    this.#logBuf = Buffer.alloc(size);
    for (const p of this.#programs.values()) lib.programSetLogBuf(p, this.#logBuf, size);
    const log = captureLibbpfLog();
    const rc = withSignalsBlocked(() => lib.objectLoad(this.#obj));
    const lines = log.stop();
    if (rc < 0) throw this.#loadError(rc, lines);
    this.#loaded = true;
    // libbpf writes a program's log only while loading it: the buffer (4 MiB of
    // address space; resident only where a log was written) is not kept.
    this.#logBuf = undefined;
  }

  #loadError(rc: number, libbpfLog: string[]): KspanError {
    const cause = errnoError('bpf_object__load', rc);
    const details = { libbpfLog };
    // The verifier refuses with EACCES (or EINVAL) and writes its log; a missing
    // privilege is EPERM with no log.
    if (-rc === EAGAIN || -rc === EINTR) {
      // The kernel gives up verifying when a signal is pending (a profiler's
      // SIGPROF, say): not a rejection, and a fresh attempt usually passes.
      return new KspanError('KSPAN_ERR_BPF_INTERRUPTED', 'loading the BPF programs was interrupted by a signal', {
        hint: 'try again (kspan blocks signals while loading and retries a few times)',
        cause,
        details,
      });
    }
    const failed = this.#failedProgram(libbpfLog);
    const logBuf = this.#logBuf ?? Buffer.alloc(0);
    const logEnd = logBuf.indexOf(0);
    const verifierLog = logBuf.toString('utf8', 0, logEnd < 0 ? logBuf.length : logEnd);
    if (failed && verifierLog) {
      // The kernel says ENOSPC when the log did not fit; a full buffer says the same.
      const truncated = -rc === ENOSPC || logEnd < 0 || logEnd >= logBuf.length - 1;
      return new VerifierError(failed, verifierLog, { truncated, cause, details });
    }
    if (failed && -rc !== EPERM) {
      // Refused before the verifier wrote a line (a bad attach target, say):
      // still one program's failure, named so the caller can grade it.
      return new KspanError('KSPAN_ERR_BPF_OBJECT', `the kernel refused to load program "${failed}"`, {
        hint: 'see the libbpf log in err.details.libbpfLog',
        cause,
        details: { ...details, program: failed },
      });
    }
    if (-rc === EPERM || -rc === EACCES) {
      return new KspanError('KSPAN_ERR_PRIVILEGE', 'the kernel refused to load BPF programs', {
        hint: loadRefusedHint(),
        cause,
        details,
      });
    }
    if (!existsSync('/sys/kernel/btf/vmlinux')) {
      return new KspanError('KSPAN_ERR_NO_BTF', 'this kernel exposes no BTF', { hint: HINT_BTF, cause, details });
    }
    return new KspanError('KSPAN_ERR_BPF_OBJECT', `libbpf could not load ${this.path}`, {
      hint: 'see the libbpf log in err.details.libbpfLog',
      cause,
      details,
    });
  }

  /** The program that failed: libbpf names it in its log; else the first unloaded one. */
  #failedProgram(libbpfLog: string[]): string | undefined {
    for (const line of libbpfLog) {
      const m = /prog '([^']+)': (?:BPF program load failed|failed to load)/.exec(line);
      if (m) return m[1];
    }
    const lib = libbpf();
    for (const [name, p] of this.#programs) {
      if (lib.programAutoload(p) && lib.programFd(p) < 0) return name;
    }
    return undefined;
  }

  /** Attaches by section type (tracepoint, tp_btf, uprobe with options). */
  attach(name: string, opts: AttachOptions = {}): void {
    if (!this.#loaded) throw new KspanError('KSPAN_ERR_ATTACH', `attach "${name}" before load()`);
    const lib = libbpf();
    const p = this.#program(name);
    const log = captureLibbpfLog();
    const link = opts.binaryPath
      ? lib.programAttachUprobe(p, opts.retprobe ?? false, opts.pid ?? -1, opts.binaryPath, opts.offset ?? 0)
      : lib.programAttach(p);
    const err = errno();
    const lines = log.stop();
    if (!link) throw this.#attachError(name, err, lines);
    this.#links.push({ name, ptr: link });
  }

  /**
   * Attaches uprobe program `name` to `offset` in `binaryPath` (every process
   * mapping it, or `pid`), with `cookie` for bpf_get_attach_cookie(). The link
   * is the caller's to destroy; close() destroys any left.
   */
  attachUprobe(name: string, o: { binaryPath: string; offset: number; retprobe: boolean; cookie: number; pid?: number }): UprobeLink {
    if (!this.#loaded) throw new KspanError('KSPAN_ERR_ATTACH', `attach "${name}" before load()`);
    const lib = libbpf();
    const opts = { sz: BpfUprobeOpts.size, ref_ctr_offset: 0, bpf_cookie: BigInt(o.cookie), retprobe: o.retprobe, func_name: null };
    const log = captureLibbpfLog();
    const ptr = lib.programAttachUprobeOpts(this.#program(name), o.pid ?? -1, o.binaryPath, o.offset, opts);
    const err = errno();
    const lines = log.stop();
    if (!ptr) throw this.#attachError(name, err, lines);
    const entry = { name, ptr };
    this.#links.push(entry);
    return {
      destroy: () => {
        const i = this.#links.indexOf(entry);
        if (i < 0) return;
        this.#links.splice(i, 1);
        lib.linkDestroy(ptr);
      },
    };
  }

  #attachError(name: string, err: number, libbpfLog: string[]): KspanError {
    const section = this.sectionName(name);
    const cause = errnoError('bpf_program__attach', err);
    const details = { program: name, section, libbpfLog };
    if (err === EPERM || err === EACCES) {
      return new KspanError('KSPAN_ERR_PRIVILEGE', `not allowed to attach "${name}" (${section})`, {
        hint: attachRefusedHint(section),
        cause,
        details,
      });
    }
    if (section.startsWith('tracepoint/') && tracefsState().state === 'not-mounted') {
      return new KspanError('KSPAN_ERR_TRACEFS', `cannot attach tracepoint "${section}": tracefs is not mounted`, {
        hint: HINT_TRACEFS,
        cause,
        details,
      });
    }
    return new KspanError('KSPAN_ERR_ATTACH', `cannot attach "${name}" (${section})`, { cause, details });
  }

  /** Attaches every program that is set to load (syscall programs are run, not attached; uprobes need a binary). */
  attachAll(): void {
    for (const name of this.#programs.keys()) {
      const section = this.sectionName(name);
      if (this.autoload(name) && section !== 'syscall' && section !== 'uprobe' && section !== 'uretprobe') this.attach(name);
    }
  }

  /**
   * What the kernel keeps about a loaded program (struct bpf_prog_info): its id,
   * and the runs the kernel skipped because the program was already running on
   * that CPU (a softirq interrupting it: the hook fired, the program did not
   * run). Run time and count are zero unless BPF stats are enabled. Undefined
   * when the program is not loaded.
   */
  programInfo(name: string): BpfProgramInfo | undefined {
    const fd = libbpf().programFd(this.#program(name));
    if (fd < 0) return undefined;
    const info = Buffer.alloc(PROG_INFO_SIZE);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(PROG_INFO_SIZE);
    const rc = libbpf().objGetInfoByFd(fd, info, len);
    if (rc < 0) throw new KspanError('KSPAN_ERR_BPF_OBJECT', `reading BPF program "${name}"'s info failed`, { cause: errnoError('bpf_obj_get_info_by_fd', rc) });
    const has = (off: number) => len.readUInt32LE(0) >= off + 8;
    const o = BPF_PROG_INFO;
    return {
      id: info.readUInt32LE(o.id),
      runTimeNs: has(o.runTimeNs) ? info.readBigUInt64LE(o.runTimeNs) : 0n,
      runCount: has(o.runCnt) ? info.readBigUInt64LE(o.runCnt) : 0n,
      recursionMisses: has(o.recursionMisses) ? info.readBigUInt64LE(o.recursionMisses) : 0n,
      verifiedInsns: len.readUInt32LE(0) >= o.verifiedInsns + 4 ? info.readUInt32LE(o.verifiedInsns) : 0,
    };
  }

  /**
   * Runs a syscall program once (BPF_PROG_TEST_RUN) with `ctx` as its argument;
   * the kernel copies the argument back into `ctx`. Returns the program's return value.
   */
  run(name: string, ctx: Buffer): number {
    const lib = libbpf();
    const fd = lib.programFd(this.#program(name));
    const opts = {
      sz: BpfTestRunOpts.size, data_in: null, data_out: null, data_size_in: 0, data_size_out: 0,
      ctx_in: ctx, ctx_out: null, ctx_size_in: ctx.length, ctx_size_out: 0, retval: 0, repeat: 0,
      duration: 0, flags: 0, cpu: 0, batch_size: 0,
    };
    const rc = lib.progTestRun(fd, opts);
    if (rc < 0) {
      throw new KspanError('KSPAN_ERR_BPF_OBJECT', `running BPF program "${name}" failed`, {
        cause: errnoError('bpf_prog_test_run_opts', rc),
      });
    }
    return opts.retval;
  }

  map(name: string): BpfMap {
    let m = this.#maps.get(name);
    if (!m) {
      const ptr = libbpf().objectFindMap(this.#obj, name);
      if (!ptr) throw new KspanError('KSPAN_ERR_BPF_OBJECT', `no map "${name}" in ${this.path}`);
      m = new BpfMap(name, ptr);
      this.#maps.set(name, m);
    }
    return m;
  }

  /** Destroys every link (in reverse order); maps stay readable until close(). */
  detachAll(): void {
    const lib = libbpf();
    for (const l of this.#links.reverse()) lib.linkDestroy(l.ptr);
    this.#links.length = 0;
  }

  /** Detaches everything and frees the object. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.detachAll();
    libbpf().objectClose(this.#obj);
  }
}
