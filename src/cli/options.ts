/** Option parsing and the stop signal shared by the long-running commands. */
import { KspanError } from '../errors.ts';
import type { IoPath } from '../loader/kernel-features.ts';

export function parsePids(values: string[] | undefined): number[] {
  if (!values?.length) throw new KspanError('KSPAN_ERR_USAGE', 'no target: give --pid PID (repeatable)');
  return values.map((v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) throw new KspanError('KSPAN_ERR_USAGE', `--pid ${v}: not a process id`);
    return n;
  });
}

export function parseDuration(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new KspanError('KSPAN_ERR_USAGE', `--duration ${v}: give seconds > 0`);
  return n;
}

export function parseIoHooks(v: string | undefined): IoPath | undefined {
  if (v === undefined || v === 'auto') return undefined;
  if (v === 'sock_length' || v === 'syscalls') return v;
  throw new KspanError('KSPAN_ERR_USAGE', `--io-hooks ${v}: use auto, sock_length or syscalls`);
}

/** Resolves after `seconds`, or on SIGINT/SIGTERM, whichever comes first. */
export function waitForStop(seconds: number | undefined): Promise<string> {
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const done = (why: string) => {
      if (timer) clearTimeout(timer);
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      resolve(why);
    };
    const onInt = () => done('SIGINT');
    const onTerm = () => done('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    if (seconds !== undefined) timer = setTimeout(() => done('duration'), seconds * 1000);
  });
}
