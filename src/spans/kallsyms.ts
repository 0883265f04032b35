/**
 * Kernel text symbols from /proc/kallsyms, to name the return addresses of a
 * blocked thread's kernel stack (OffCpuRecord) and find its wait channel: the
 * first frame outside the scheduler's own text, as the kernel's wchan
 * (get_wchan skips in_sched_functions(): `__sched_text_start`..`__sched_text_end`
 * and `__lock_text_start`..`__lock_text_end`). Pure: the caller reads the file.
 *
 * An unprivileged reader (kptr_restrict) sees every address as zero: the table
 * is then `restricted` and names nothing.
 */

/** A blocked stack described: its wait channel and the frames from it outwards. */
export interface KernelStackNames {
  /** The first frame outside the scheduler's text; null when there is none or nothing could be named. */
  wchan: string | null;
  /** Function names from the wait channel outwards (`name [module]` for a module's). */
  frames: string[];
}

/** The text ranges the kernel leaves out of a wait channel. */
const SKIP_RANGES = [['__sched_text_start', '__sched_text_end'], ['__lock_text_start', '__lock_text_end']] as const;

export class KernelSymbols {
  /** Start addresses, ascending; names[i] is the symbol starting at addrs[i]. */
  readonly #addrs: BigUint64Array;
  readonly #names: string[];
  readonly #skip: [bigint, bigint][];
  /** Every address read as zero (kptr_restrict): nothing can be named. */
  readonly restricted: boolean;

  private constructor(addrs: BigUint64Array, names: string[], skip: [bigint, bigint][], restricted: boolean) {
    this.#addrs = addrs;
    this.#names = names;
    this.#skip = skip;
    this.restricted = restricted;
  }

  /** Parses /proc/kallsyms' text: `ADDRESS TYPE NAME [MODULE]` lines; text symbols (t, T, w, W) are kept. */
  static parse(text: string): KernelSymbols {
    const rows: { addr: bigint; name: string }[] = [];
    const marks = new Map<string, bigint>();
    let nonzero = false;
    let start = 0;
    while (start < text.length) {
      let end = text.indexOf('\n', start);
      if (end < 0) end = text.length;
      const line = text.slice(start, end);
      start = end + 1;
      const sp1 = line.indexOf(' ');
      const sp2 = line.indexOf(' ', sp1 + 1);
      if (sp1 <= 0 || sp2 !== sp1 + 2) continue;
      const type = line[sp1 + 1];
      if (type !== 't' && type !== 'T' && type !== 'w' && type !== 'W') continue;
      let addr: bigint;
      try {
        addr = BigInt(`0x${line.slice(0, sp1)}`);
      } catch {
        continue;
      }
      const rest = line.slice(sp2 + 1);
      const tab = rest.indexOf('\t');
      const name = tab < 0 ? rest : `${rest.slice(0, tab)} ${rest.slice(tab + 1).trim()}`;
      if (!name) continue;
      if (addr !== 0n) nonzero = true;
      if (tab < 0 && (name.startsWith('__sched_text_') || name.startsWith('__lock_text_'))) marks.set(name, addr);
      rows.push({ addr, name });
    }
    if (!nonzero) return new KernelSymbols(new BigUint64Array(0), [], [], rows.length > 0);
    rows.sort((a, b) => (a.addr < b.addr ? -1 : a.addr > b.addr ? 1 : 0));
    const addrs = new BigUint64Array(rows.length);
    const names = new Array<string>(rows.length);
    rows.forEach((r, i) => {
      addrs[i] = r.addr;
      names[i] = r.name;
    });
    const skip: [bigint, bigint][] = [];
    for (const [a, b] of SKIP_RANGES) {
      const lo = marks.get(a);
      const hi = marks.get(b);
      if (lo !== undefined && hi !== undefined && lo < hi) skip.push([lo, hi]);
    }
    return new KernelSymbols(addrs, names, skip, false);
  }

  /** Text symbols in the table. */
  get size(): number {
    return this.#addrs.length;
  }

  /** The function an address is in (the last symbol at or below it), or null below the first. */
  symbolAt(addr: bigint): string | null {
    const a = this.#addrs;
    let lo = 0;
    let hi = a.length - 1;
    if (hi < 0 || addr < a[0]) return null;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (a[mid] <= addr) lo = mid;
      else hi = mid - 1;
    }
    return this.#names[lo];
  }

  /** Whether an address is in the scheduler's (or the spinlocks') text, which a wait channel skips. */
  inSchedText(addr: bigint): boolean {
    for (const [lo, hi] of this.#skip) if (addr >= lo && addr < hi) return true;
    return false;
  }

  /**
   * A blocked stack (return addresses, innermost first): its wait channel and the
   * frames from it outwards, at most `max`. A return address points past its
   * call, so it is looked up one byte back (the call may be a function's last
   * instruction).
   */
  describe(stack: readonly bigint[], max = stack.length): KernelStackNames {
    if (this.restricted || this.#addrs.length === 0) return { wchan: null, frames: [] };
    let i = 0;
    while (i < stack.length && (stack[i] === 0n || this.inSchedText(stack[i] - 1n))) i++;
    const frames: string[] = [];
    for (let j = i; j < stack.length && frames.length < max; j++) {
      const name = stack[j] ? this.symbolAt(stack[j] - 1n) : null;
      frames.push(name ?? `0x${stack[j].toString(16)}`);
    }
    const wchan = i < stack.length ? this.symbolAt(stack[i] - 1n) : null;
    return { wchan, frames };
  }
}
