/**
 * Keys (and plain values) of the BPF maps, encoded as bpf/kspan.h declares
 * them: a `__u32` or `__u64` in host order (x86_64: little-endian). Pure, so
 * the readers that fill the maps need not import the loader.
 */

/** A u32 map key: a pid (`targets`, `node_layouts`), a counter index (`counters`). */
export function u32Key(n: number): Buffer {
  const key = Buffer.alloc(4);
  key.writeUInt32LE(n);
  return key;
}

/** The key of a pid's entry in the per-pid maps. */
export function pidKey(pid: number): Buffer {
  return u32Key(pid);
}

/** A u64 map value (a count), in host order. */
export function u64Value(n: bigint): Buffer {
  const value = Buffer.alloc(8);
  value.writeBigUInt64LE(n);
  return value;
}
