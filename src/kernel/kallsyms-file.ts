/** /proc/kallsyms read into a KernelSymbols table (src/spans/kallsyms.ts, the pure parser). */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { KernelSymbols } from '../spans/kallsyms.ts';

export type { KernelSymbols };

/**
 * The kernel's text symbols, read once, at the first blocked stack to name
 * (/proc/kallsyms: ~100 ms). Unreadable, or all zeros (kptr_restrict: kspan not
 * root), is said once here; the events then carry no wait channel or stack.
 */
export function readKernelSymbols(log: Logger | undefined, path = '/proc/kallsyms'): KernelSymbols | null {
  let table: KernelSymbols;
  try {
    table = KernelSymbols.parse(readFileSync(path, 'latin1'));
  } catch (err) {
    log?.warn({ err, path }, 'cannot read the kernel symbols: thread.off_cpu events carry no wait channel or kernel stack');
    return null;
  }
  if (table.restricted) {
    log?.warn({ path }, 'kernel symbol addresses are hidden (kptr_restrict, or kspan is not root): thread.off_cpu events carry no wait channel or kernel stack');
    return null;
  }
  log?.debug({ path, symbols: table.size }, 'kernel symbols read');
  return table;
}

/** readKernelSymbols, on the first call only. */
export function onceKernelSymbols(log: Logger | undefined): () => KernelSymbols | null {
  let table: KernelSymbols | null | undefined;
  return () => (table === undefined ? (table = readKernelSymbols(log)) : table);
}
