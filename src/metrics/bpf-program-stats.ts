/**
 * What each of kspan's BPF programs costs in the kernel: its run count and run
 * time, as the kernel keeps them in `struct bpf_prog_info` (read through
 * BpfObject.programInfo) while BPF run-time statistics are on.
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

export interface ProgramStats {
  /** The program's name in kspan.bpf.o (the kernel keeps only its first 15 bytes). */
  name: string;
  /** The kernel's program id, as `bpftool prog show` lists it. */
  id: number;
  runCount: bigint;
  runTimeNs: bigint;
  /** Runs the kernel skipped because the program was already running on that CPU. */
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
  /** The fd from BPF_ENABLE_STATS; -1 when the kernel refused it, or after close(). */
  #statsFd: number;
  /** Why BPF_ENABLE_STATS was refused, if it was. */
  readonly enableError: Error | undefined;
  #obj: BpfObject | undefined;
  #names: readonly string[] = [];
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

  /** The programs to report: `names`, those of them loaded in `obj`. */
  watch(obj: BpfObject, names: readonly string[]): void {
    this.#obj = obj;
    this.#names = names;
    this.#frozen = undefined;
  }

  /** Each watched program's counters now (the last reading after freeze()). */
  read(): ProgramStats[] {
    if (this.#frozen) return this.#frozen;
    const out: ProgramStats[] = [];
    for (const name of this.#names) {
      let info;
      try {
        info = this.#obj?.programInfo(name);
      } catch {
        continue; // a program whose info cannot be read now is left out of this reading only
      }
      if (info) out.push({ name, ...info });
    }
    return out;
  }

  /** Takes a last reading and stops reading: call it before the programs' object is closed. */
  freeze(): void {
    this.#frozen ??= this.read();
    this.#obj = undefined;
  }

  /** Turns kspan's hold on the statistics off. Idempotent. */
  close(): void {
    this.freeze();
    if (this.#statsFd >= 0) c.close(this.#statsFd);
    this.#statsFd = -1;
  }
}
