/**
 * What each of kspan's BPF programs costs in the kernel: its run count and run
 * time, as the kernel keeps them in `struct bpf_prog_info` while BPF run-time
 * statistics are on.
 *
 * The statistics are off by default (they cost two clock reads per run). kspan
 * turns them on with bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME), which returns an
 * fd: the statistics stay on while any such fd is open, so holding it for the
 * agent's lifetime scopes them to kspan, and the kernel drops it when kspan
 * dies, however it dies. The call needs CAP_SYS_ADMIN; without it the kernel's
 * own switch (sysctl kernel.bpf_stats_enabled=1) serves, and when neither is
 * on, run counts and times are not reported (kspan.bpf.stats.enabled says 0).
 */
import { readFileSync } from 'node:fs';
import { errnoError } from '../core/errors.ts';
import type { BpfObject } from '../kernel/bpf-object.ts';
import { c, libbpf } from '../kernel/native.ts';

const BPF_STATS_RUN_TIME = 0;

/**
 * struct bpf_prog_info (include/uapi/linux/bpf.h): the fields read, at their
 * UAPI offsets (test/unit/metrics-bpf-info.test.ts checks them against the
 * running kernel's BTF). The kernel fills as many bytes as the caller gives.
 */
export const BPF_PROG_INFO = {
  id: 4,
  runTimeNs: 192,
  runCnt: 200,
  recursionMisses: 208,
  /** Bytes asked for: up to the end of recursion_misses (Linux 5.12). */
  size: 216,
} as const;

export interface ProgramStats {
  /** The program's name in kspan.bpf.o (the kernel keeps only its first 15 bytes). */
  name: string;
  /** The kernel's program id, as `bpftool prog show` lists it. */
  id: number;
  runCount: bigint;
  runTimeNs: bigint;
  /** Runs the kernel skipped because another BPF program was running on that CPU. */
  recursionMisses: bigint;
}

/** The kernel's switch for BPF run-time statistics (kernel.bpf_stats_enabled). */
function sysctlStatsOn(): boolean {
  try {
    return readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'latin1').trim() === '1';
  } catch {
    return false;
  }
}

export class BpfProgramStats {
  /** The fd from BPF_ENABLE_STATS; -1 when the kernel refused it. */
  #statsFd: number;
  /** Why BPF_ENABLE_STATS was refused, if it was. */
  readonly enableError: Error | undefined;
  #programs: { name: string; fd: number }[] = [];
  /** The last reading, kept once the programs are gone (after freeze()). */
  #frozen: ProgramStats[] | undefined;

  private constructor(fd: number, err: Error | undefined) {
    this.#statsFd = fd;
    this.enableError = err;
  }

  /** Turns BPF run-time statistics on for as long as the returned object is open. */
  static enable(): BpfProgramStats {
    const fd = libbpf().enableStats(BPF_STATS_RUN_TIME);
    if (fd < 0) return new BpfProgramStats(-1, errnoError('bpf(BPF_ENABLE_STATS)', fd));
    return new BpfProgramStats(fd, undefined);
  }

  /** True when the kernel counts runs now: kspan's fd (while open), or the sysctl. */
  get enabled(): boolean {
    return this.#statsFd >= 0 || sysctlStatsOn();
  }

  /** The programs to report: every loaded program of `obj`. */
  watch(obj: BpfObject, names: readonly string[]): void {
    this.#programs = names.map((name) => ({ name, fd: obj.programFd(name) })).filter((p) => p.fd >= 0);
    this.#frozen = undefined;
  }

  /** Each watched program's counters now (the last reading after freeze()). */
  read(): ProgramStats[] {
    if (this.#frozen) return this.#frozen;
    const lib = libbpf();
    const out: ProgramStats[] = [];
    const info = Buffer.alloc(BPF_PROG_INFO.size);
    const len = Buffer.alloc(4);
    for (const p of this.#programs) {
      info.fill(0);
      len.writeUInt32LE(BPF_PROG_INFO.size);
      if (lib.objGetInfoByFd(p.fd, info, len) !== 0) continue;
      out.push({
        name: p.name,
        id: info.readUInt32LE(BPF_PROG_INFO.id),
        runTimeNs: info.readBigUInt64LE(BPF_PROG_INFO.runTimeNs),
        runCount: info.readBigUInt64LE(BPF_PROG_INFO.runCnt),
        recursionMisses: info.readBigUInt64LE(BPF_PROG_INFO.recursionMisses),
      });
    }
    return out;
  }

  /** Takes a last reading and stops reading: call it before the programs' object is closed. */
  freeze(): void {
    this.#frozen ??= this.read();
    this.#programs = [];
  }

  /** Turns kspan's hold on the statistics off. Idempotent. */
  close(): void {
    this.freeze();
    if (this.#statsFd >= 0) c.close(this.#statsFd);
    this.#statsFd = -1;
  }
}
