/**
 * The per-process value of the BPF `node_layouts` map (struct kspan_node_layout,
 * bpf/kspan.h) for a Node.js target, from the walk layout its process context
 * declares (v8-walk.ts). Field offsets come from the generated decoders.
 */
import { KSPAN_NODE_LAYOUT_SIZE, encodeKspanNodeLayout, type KspanNodeLayout } from '../../records/abi.generated.ts';
import type { AttrValue } from '../../proto/otlp.ts';
import { nodeLayoutFromProcessContext, type NodeWalkLayout } from './v8-walk.ts';

export function kspanNodeLayout(layout: NodeWalkLayout): KspanNodeLayout {
  const r = layout.record;
  return {
    map_table_offset: layout.mapTableOffset,
    hash_map_header_size: layout.hashMapHeaderSize,
    record_slot: r.kind === 'direct' ? r.slot : r.kind === 'native' ? r.wrappedObjectOffset : 0,
    native_field_offset: r.kind === 'native' ? r.nativeFieldOffset : 0,
    generation: Number(layout.generation.slice(1)),
  };
}

export type NodeLayoutResult = { ok: true; layout: KspanNodeLayout; generation: NodeWalkLayout['generation'] } | { ok: false; reason: string };

/** From a process context's threadlocal.* attributes to the BPF map value, or why not. */
export function nodeLayoutForBpf(threadlocal: Record<string, AttrValue>): NodeLayoutResult {
  const r = nodeLayoutFromProcessContext(threadlocal);
  if (!r.ok) return r;
  return { ok: true, layout: kspanNodeLayout(r.layout), generation: r.layout.generation };
}

export function encodeNodeLayoutValue(layout: KspanNodeLayout): Buffer {
  const buf = Buffer.alloc(KSPAN_NODE_LAYOUT_SIZE);
  encodeKspanNodeLayout(layout, new DataView(buf.buffer, buf.byteOffset, buf.length), 0);
  return buf;
}
