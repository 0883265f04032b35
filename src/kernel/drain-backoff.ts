/**
 * How often the rings' timer drains them (src/kernel/ring-buffer.ts, RingPoller).
 * Pure: the poller tells it what each drain delivered and arms its timer with the
 * interval it returns.
 *
 * The timer only bounds how long a record waits at low rates: the kernel wakes the
 * reader itself once a ring is an eighth full. Each of the timer's wake-ups costs
 * the agent's process some hundred microseconds of CPU on the reference machine
 * (BENCHMARKS.md, "The agent's wake-ups while idle"), most of an idle agent's CPU
 * at a 20 ms interval. So the interval starts at the readers' shortest idle
 * interval (`baseMs`) and doubles, up to `maxMs`, after every `quietDrains` timer
 * drains in a row that found nothing; any drain that delivers a record sets it back
 * to `baseMs`. A busy agent drains as before; an idle one wakes `maxMs / baseMs`
 * times less often, and its first record after a quiet spell waits at most `maxMs`.
 */
export interface DrainBackoffOptions {
  baseMs: number;
  /** The longest interval (default 8 × baseMs). */
  maxMs?: number;
  /** Quiet timer drains before each doubling (default 5). */
  quietDrains?: number;
}

export class DrainBackoff {
  readonly baseMs: number;
  readonly maxMs: number;
  readonly #quietDrains: number;
  #intervalMs: number;
  #quiet = 0;

  constructor(opts: DrainBackoffOptions) {
    if (!(opts.baseMs > 0)) throw new RangeError(`DrainBackoff: baseMs must be positive, not ${opts.baseMs}`);
    this.baseMs = opts.baseMs;
    this.maxMs = Math.max(opts.baseMs, opts.maxMs ?? 8 * opts.baseMs);
    this.#quietDrains = Math.max(1, opts.quietDrains ?? 5);
    this.#intervalMs = this.baseMs;
  }

  /** The interval the timer runs at now. */
  get intervalMs(): number {
    return this.#intervalMs;
  }

  /** A drain (timer, wake-up or on demand) delivered `records`. Returns the interval. */
  delivered(records: number): number {
    if (records > 0) {
      this.#intervalMs = this.baseMs;
      this.#quiet = 0;
    }
    return this.#intervalMs;
  }

  /** The timer fired and its drain delivered `records`: the interval to arm it with next. */
  timerDrained(records: number): number {
    if (records > 0) return this.delivered(records);
    if (++this.#quiet >= this.#quietDrains && this.#intervalMs < this.maxMs) {
      this.#intervalMs = Math.min(this.maxMs, 2 * this.#intervalMs);
      this.#quiet = 0;
    }
    return this.#intervalMs;
  }
}
