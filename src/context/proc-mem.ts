/**
 * Reads another process's memory through /proc/PID/mem (root or CAP_SYS_PTRACE):
 * the one way kspan reads a target's memory. Every failure becomes a ProcMemError
 * with the address, so callers can tell "gone" from "not allowed" from "not
 * mapped"; an address outside user space is refused before any read.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { KspanError } from '../core/errors.ts';
import { targetReadHint } from '../kernel/privileges.ts';

export type ProcMemFailure = 'gone' | 'permission' | 'unmapped';

/** x86_64 user space ends below 2^47 (4-level paging): nothing above is a process's memory. */
export const USER_SPACE_END = 0x0000_8000_0000_0000n;

export class ProcMemError extends KspanError {
  readonly reason: ProcMemFailure;
  constructor(pid: number, reason: ProcMemFailure, message: string, cause?: unknown) {
    super('KSPAN_ERR_TARGET', `process ${pid}: ${message}`, {
      hint: reason === 'permission' ? targetReadHint(`/proc/${pid}/mem`) : undefined,
      cause,
      details: { pid, reason },
    });
    this.name = 'ProcMemError';
    this.reason = reason;
  }
}

/** Maps a /proc access errno to what it means for the target. */
export function procFailure(err: unknown): ProcMemFailure | undefined {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT' || code === 'ESRCH') return 'gone';
  if (code === 'EACCES' || code === 'EPERM') return 'permission';
  if (code === 'EIO' || code === 'EFAULT') return 'unmapped';
  return undefined;
}

const hex = (addr: bigint) => `0x${addr.toString(16)}`;

export class ProcessMemory {
  readonly pid: number;
  private fd: number;

  constructor(pid: number) {
    this.pid = pid;
    try {
      this.fd = openSync(`/proc/${pid}/mem`, 'r');
    } catch (err) {
      const reason = procFailure(err);
      if (!reason) throw err;
      throw new ProcMemError(pid, reason, `cannot open /proc/${pid}/mem`, err);
    }
  }

  /** Exactly `length` bytes at `addr`, or a ProcMemError. */
  read(addr: number | bigint, length: number): Buffer {
    const at = BigInt(addr);
    if (at <= 0n || at + BigInt(length) > USER_SPACE_END) {
      throw new ProcMemError(this.pid, 'unmapped', `${hex(at)} (+${length}) is not a user-space address`);
    }
    const buf = Buffer.alloc(length);
    let done = 0;
    try {
      while (done < length) {
        const n = readSync(this.fd, buf, done, length - done, at + BigInt(done));
        if (n === 0) break;
        done += n;
      }
    } catch (err) {
      const reason = procFailure(err);
      if (!reason) throw err;
      throw new ProcMemError(this.pid, reason, `cannot read ${length} bytes at ${hex(at)}`, err);
    }
    if (done < length) {
      throw new ProcMemError(this.pid, 'unmapped', `short read at ${hex(at)}: ${done} of ${length} bytes`);
    }
    return buf;
  }

  /**
   * `length` bytes at `addr`, or undefined when any of them is not mapped (for
   * walks where a miss means "no context"). A process that is gone or may not be
   * read still throws.
   */
  tryRead(addr: number | bigint, length: number): Buffer | undefined {
    try {
      return this.read(addr, length);
    } catch (err) {
      if (err instanceof ProcMemError && err.reason === 'unmapped') return undefined;
      throw err;
    }
  }

  readU64(addr: number | bigint): bigint {
    return this.read(addr, 8).readBigUInt64LE(0);
  }

  readS64(addr: number | bigint): bigint {
    return this.read(addr, 8).readBigInt64LE(0);
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/** Runs fn with the process's memory open, and closes it afterwards. */
export function withProcessMemory<T>(pid: number, fn: (mem: ProcessMemory) => T): T {
  const mem = new ProcessMemory(pid);
  try {
    return fn(mem);
  } finally {
    mem.close();
  }
}
