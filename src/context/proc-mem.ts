/**
 * Reads another process's memory through /proc/PID/mem (root or CAP_SYS_PTRACE).
 * Every failure becomes a ProcMemError with the address, so callers can tell
 * "gone" from "not allowed" from "not mapped".
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { KspanError, HINT_PRIVILEGE } from '../core/errors.ts';

export type ProcMemFailure = 'gone' | 'permission' | 'unmapped';

export class ProcMemError extends KspanError {
  readonly reason: ProcMemFailure;
  constructor(pid: number, reason: ProcMemFailure, message: string, cause?: unknown) {
    super('KSPAN_ERR_TARGET', `process ${pid}: ${message}`, {
      hint: reason === 'permission' ? HINT_PRIVILEGE : undefined,
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
  read(addr: number, length: number): Buffer {
    const buf = Buffer.alloc(length);
    let done = 0;
    try {
      while (done < length) {
        const n = readSync(this.fd, buf, done, length - done, addr + done);
        if (n === 0) break;
        done += n;
      }
    } catch (err) {
      const reason = procFailure(err);
      if (!reason) throw err;
      throw new ProcMemError(this.pid, reason, `cannot read ${length} bytes at 0x${addr.toString(16)}`, err);
    }
    if (done < length) {
      throw new ProcMemError(this.pid, 'unmapped', `short read at 0x${addr.toString(16)}: ${done} of ${length} bytes`);
    }
    return buf;
  }

  readU64(addr: number): bigint {
    return this.read(addr, 8).readBigUInt64LE(0);
  }

  readS64(addr: number): bigint {
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
