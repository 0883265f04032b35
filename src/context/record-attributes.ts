/**
 * The attributes of an OTEP 4947 thread-context record: `{key u8, len u8,
 * val[len]}` entries, key N named by entry N of the process context's
 * `threadlocal.attribute_key_map`. The one decoder, for the kernel's copies
 * (span attributes, `kspan events`) and the userspace Node walk alike. Pure.
 */

export interface RecordAttributes {
  attributes: Record<string, string>;
  /** Entries whose key index is not in the key map (kept out of `attributes`, counted). */
  unknownKeys: number;
  /** The data ended inside an entry. */
  truncated: boolean;
}

/** Bytes of `bytes` taken by whole entries: a copy clamped mid-entry ends there. */
export function wholeEntriesLength(bytes: Uint8Array): number {
  let off = 0;
  while (off + 2 <= bytes.length && off + 2 + bytes[off + 1] <= bytes.length) off += 2 + bytes[off + 1];
  return off;
}

/** Decodes the entries with the process's key map. A repeated key: the last one wins. */
export function decodeRecordAttributes(bytes: Uint8Array, keyMap: readonly string[]): RecordAttributes {
  const attributes: Record<string, string> = {};
  let unknownKeys = 0;
  const whole = wholeEntriesLength(bytes);
  for (let i = 0; i < whole; i += 2 + bytes[i + 1]) {
    const name = keyMap[bytes[i]];
    if (name === undefined) unknownKeys++;
    else attributes[name] = Buffer.from(bytes.buffer, bytes.byteOffset + i + 2, bytes[i + 1]).toString('utf8');
  }
  return { attributes, unknownKeys, truncated: whole < bytes.length };
}
