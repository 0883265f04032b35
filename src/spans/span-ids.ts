/**
 * Random OpenTelemetry ids for the spans kspan makes: the span builder's own
 * span ids (and orphans' trace ids), and the correlator's exchange roots.
 * Drawn from a pooled buffer: one randomFillSync per 4 kB.
 */
import { randomFillSync } from 'node:crypto';

export class IdSource {
  #buf = Buffer.allocUnsafe(4096);
  #pos = this.#buf.length;

  /** `bytes` random bytes as lowercase hex, never all zero (an invalid id). */
  hex(bytes: 8 | 16): string {
    for (;;) {
      if (this.#pos + bytes > this.#buf.length) {
        randomFillSync(this.#buf);
        this.#pos = 0;
      }
      const s = this.#buf.toString('hex', this.#pos, this.#pos + bytes);
      this.#pos += bytes;
      if (s !== '0'.repeat(bytes * 2)) return s;
    }
  }
}
