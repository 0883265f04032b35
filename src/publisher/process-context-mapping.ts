/**
 * Publishes an OTEP 4719 process context from inside the target: a mapping that an
 * out-of-process reader finds in /proc/PID/maps by its name, holding
 *
 *   @0 "OTEL_CTX"  @8 version u32 = 2  @12 payload_size u32
 *   @16 published_at_ns u64 (0 while an update is in progress)  @24 payload pointer
 *
 * The payload is kept in the same mapping, right after the header. The mapping is
 * a memfd named OTEL_CTX (shows up as `/memfd:OTEL_CTX (deleted)`); where memfd is
 * refused it is an anonymous mapping named with PR_SET_VMA_ANON_NAME (needs
 * CONFIG_ANON_VMA_NAME, which some kernels lack: then nothing would find it, and
 * publication fails). The signature is written last and published_at_ns is zeroed
 * around updates, so a reader that checks both never decodes a half-written payload.
 */
import { isMainThread } from 'node:worker_threads';
import {
  MADV_DONTFORK,
  MAP_ANONYMOUS,
  MAP_FAILED,
  MAP_PRIVATE,
  MFD_CLOEXEC,
  PROT_READ,
  PROT_WRITE,
  publisherLibc,
  type PublisherLibc,
} from './libc.ts';

export const OTEL_CTX_SIGNATURE = 'OTEL_CTX';
export const OTEL_CTX_VERSION = 2;
export const OTEL_CTX_HEADER_SIZE = 32;
const PAGE = 4096;
/** Two pages at least, as the reference writer does: a hint for readers on kernels that cannot name mappings. */
const MIN_MAPPING = 2 * PAGE;
const SIGNATURE_WORD = Buffer.from(OTEL_CTX_SIGNATURE, 'latin1').readBigUInt64LE(0);

export type MappingKind = 'memfd' | 'anon';

export class ProcessContextPublishError extends Error {
  readonly errno: number;
  constructor(message: string, errno: number) {
    super(errno ? `${message} (errno ${errno})` : message);
    this.name = 'ProcessContextPublishError';
    this.errno = errno;
  }
}

export class ProcessContextMapping {
  readonly address: bigint;
  readonly size: number;
  readonly kind: MappingKind;
  readonly #libc: PublisherLibc;
  readonly #pid = process.pid;
  #bytes: Uint8Array;
  #words: BigUint64Array;
  #dropped = false;
  /** Publications and updates that went through. */
  updates = 0;

  private constructor(libc: PublisherLibc, address: bigint, size: number, kind: MappingKind) {
    this.#libc = libc;
    this.address = address;
    this.size = size;
    this.kind = kind;
    const view = libc.view(address, size);
    this.#bytes = new Uint8Array(view);
    this.#words = new BigUint64Array(view, 0, OTEL_CTX_HEADER_SIZE / 8);
  }

  /**
   * Creates the mapping and publishes `payload` in it. Throws
   * ProcessContextPublishError when no mapping a reader could find can be made.
   */
  static publish(payload: Uint8Array, libc: PublisherLibc = publisherLibc()): ProcessContextMapping {
    if (!isMainThread) throw new ProcessContextPublishError('the process context is published from the main thread only', 0);
    const size = mappingSizeFor(payload.length);
    let kind: MappingKind = 'memfd';
    let addr = MAP_FAILED;
    const fd = libc.memfdCreate(OTEL_CTX_SIGNATURE, MFD_CLOEXEC);
    if (fd >= 0) {
      if (libc.ftruncate(fd, size) === 0) addr = libc.mmap(null, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      libc.close(fd);
    }
    if (addr === MAP_FAILED) {
      kind = 'anon';
      addr = libc.mmap(null, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (addr === MAP_FAILED) throw new ProcessContextPublishError('mmap of the OTEL_CTX mapping failed', libc.errno());
    }
    if (libc.madvise(addr, size, MADV_DONTFORK) !== 0) {
      const errno = libc.errno();
      libc.munmap(addr, size);
      throw new ProcessContextPublishError('madvise(MADV_DONTFORK) on the OTEL_CTX mapping failed', errno);
    }
    const mapping = new ProcessContextMapping(libc, addr, size, kind);
    mapping.#write(payload, true);
    // Always try to name it: readers may hook prctl even where naming is unsupported.
    const named = libc.nameAnonMapping(addr, size, OTEL_CTX_SIGNATURE) === 0;
    if (kind === 'anon' && !named) {
      const errno = libc.errno();
      mapping.drop();
      throw new ProcessContextPublishError(
        'memfd_create is refused and the kernel cannot name anonymous mappings (CONFIG_ANON_VMA_NAME): no reader could find the process context',
        errno,
      );
    }
    return mapping;
  }

  /** Whether `payload` fits in this mapping (else drop it and publish a new one). */
  fits(payload: Uint8Array): boolean {
    return OTEL_CTX_HEADER_SIZE + payload.length <= this.size;
  }

  /** OTEP 4719 updating protocol: published_at_ns = 0, new payload, new timestamp. */
  update(payload: Uint8Array): void {
    if (this.#dropped) throw new ProcessContextPublishError('the OTEL_CTX mapping was dropped', 0);
    if (!this.fits(payload)) throw new ProcessContextPublishError('payload does not fit the OTEL_CTX mapping', 0);
    this.#write(payload, false);
    this.#libc.nameAnonMapping(this.address, this.size, OTEL_CTX_SIGNATURE);
  }

  drop(): void {
    if (this.#dropped) return;
    this.#dropped = true;
    // After fork (no exec) the child has no such mapping (MADV_DONTFORK): leave it be.
    if (process.pid !== this.#pid) return;
    this.#libc.munmap(this.address, this.size);
  }

  #write(payload: Uint8Array, first: boolean): void {
    const libc = this.#libc;
    if (!first && libc.mprotect(this.address, this.size, PROT_READ | PROT_WRITE) !== 0) {
      throw new ProcessContextPublishError('mprotect of the OTEL_CTX mapping failed', libc.errno());
    }
    const now = libc.realtimeNs();
    if (now === 0n) throw new ProcessContextPublishError('clock_gettime(CLOCK_REALTIME) failed', libc.errno());
    // Atomics stores keep the order the protocol needs: timestamp 0 (update) or no
    // signature (first) before the payload, signature and timestamp last.
    if (!first) Atomics.store(this.#words, 2, 0n);
    this.#bytes.set(payload, OTEL_CTX_HEADER_SIZE);
    const header = new DataView(this.#bytes.buffer, this.#bytes.byteOffset, OTEL_CTX_HEADER_SIZE);
    header.setUint32(8, OTEL_CTX_VERSION, true);
    header.setUint32(12, payload.length, true);
    Atomics.store(this.#words, 3, this.address + BigInt(OTEL_CTX_HEADER_SIZE));
    Atomics.store(this.#words, 2, now);
    if (first) Atomics.store(this.#words, 0, SIGNATURE_WORD);
    // Read-only afterwards: a stray write from the app cannot corrupt it, and the
    // shape (anonymous, 2 pages, r--p) is a hint on kernels without mapping names.
    libc.mprotect(this.address, this.size, PROT_READ);
    this.updates++;
  }
}

export function mappingSizeFor(payloadLength: number): number {
  const need = OTEL_CTX_HEADER_SIZE + payloadLength;
  return Math.max(MIN_MAPPING, Math.ceil(need / PAGE) * PAGE);
}
