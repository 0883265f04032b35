/**
 * Random OpenTelemetry ids for the spans kspan makes: the span builder's own
 * span ids (and orphans' trace ids), and the correlator's exchange roots.
 * Drawn from a pooled buffer: one randomFillSync per 4 kB.
 */
import { randomFillSync } from 'node:crypto';

export class IdSource {
  #buf = Buffer.allocUnsafe(4096);
  #pos = this.#buf.length;
  readonly #random: (buf: Buffer) => void;

  /** `random` refills the pool (default crypto's randomFillSync; tests pass a seeded one). */
  constructor(random: (buf: Buffer) => void = randomFillSync) {
    this.#random = random;
  }

  /** `bytes` random bytes as lowercase hex, never all zero (an invalid id). */
  hex(bytes: 8 | 16): string {
    for (;;) {
      if (this.#pos + bytes > this.#buf.length) {
        this.#random(this.#buf);
        this.#pos = 0;
      }
      const s = this.#buf.toString('hex', this.#pos, this.#pos + bytes);
      this.#pos += bytes;
      if (s !== '0'.repeat(bytes * 2)) return s;
    }
  }

  /** Writes `bytes` random bytes, never all zero, into `out` at `at` (the OTLP encoder's ids). */
  fill(out: Uint8Array, at: number, bytes: 8 | 16): void {
    for (;;) {
      if (this.#pos + bytes > this.#buf.length) {
        this.#random(this.#buf);
        this.#pos = 0;
      }
      const buf = this.#buf;
      let any = 0;
      for (let i = 0; i < bytes; i++) any |= out[at + i] = buf[this.#pos + i];
      this.#pos += bytes;
      if (any) return;
    }
  }
}
