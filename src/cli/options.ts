/** Option parsing and the stop signal shared by the long-running commands. */
import { KspanError } from '../core/errors.ts';
import type { IoPath } from '../kernel/kernel-features.ts';

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

export type StopSignal = Promise<string> & {
  /** Removes the handlers and the timer (the command failed before it started). */
  cancel(): void;
};

/** Resolves after `seconds`, or on SIGINT/SIGTERM, whichever comes first. */
export function waitForStop(seconds: number | undefined): StopSignal {
  let timer: NodeJS.Timeout | undefined;
  let finish: (why: string) => void = () => {};
  const onInt = () => finish('SIGINT');
  const onTerm = () => finish('SIGTERM');
  const cleanup = () => {
    if (timer) clearTimeout(timer);
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  };
  const promise = new Promise<string>((resolve) => {
    finish = (why) => {
      cleanup();
      resolve(why);
    };
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    if (seconds !== undefined) timer = setTimeout(() => finish('duration'), seconds * 1000);
  });
  return Object.assign(promise, { cancel: cleanup });
}

/** --max-sockets N: a positive integer, or undefined for the default. */
export function parseMaxSockets(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 1 << 24) {
    throw new KspanError('KSPAN_ERR_USAGE', `--max-sockets ${v}: give a whole number from 1 to 16777216`);
  }
  return n;
}
