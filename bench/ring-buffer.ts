/**
 * Ring-buffer read throughput on one core: kspan's zero-copy reader (mmap +
 * koffi view, no FFI call per record) against libbpf's ring_buffer__consume with
 * a koffi callback, on the same ring filled by bpf/bench.bpf.c with records of
 * struct kspan_event size. Each reader runs walk-only and with the full decode to
 * KernelRecords, alternately, in one run.
 *
 *   node bench/ring-buffer.ts [records=200000] [rounds=3]
 */
import { KSPAN_EVENT_SIZE } from '../src/records/abi.generated.ts';
import { koffi, libbpf } from '../src/kernel/native.ts';
import { RingBufferReader } from '../src/kernel/ring-buffer.ts';
import { decodeRecords } from '../src/records/decoder.ts';
import type { KernelRecord } from '../src/records/kernel-record.ts';
import { openRingFiller } from '../test/helpers/ring-filler.ts';

const count = Number(process.argv[2] ?? 200_000);
const rounds = Number(process.argv[3] ?? 3);
const RING = 64 << 20;

const { obj, ringFd, fill } = openRingFiller(count, RING);

let sink = 0;
const keep = (r: KernelRecord) => {
  sink += r.bytes;
};

const zeroCopyWalk = new RingBufferReader(ringFd, RING, (v, off) => {
  sink += v.getUint8(off + 72);
});
const zeroCopyDecode = new RingBufferReader(ringFd, RING, (v, off) => decodeRecords(v, off, keep));

const lib = libbpf();
const cbType = koffi.proto('int kspan_bench_sample(void *ctx, void *data, size_t size)');
let mode: 'walk' | 'decode' = 'walk';
const cb = koffi.register((_ctx: bigint, data: bigint, size: number) => {
  const view = new DataView(koffi.view(data, size));
  if (mode === 'walk') sink += view.getUint8(72);
  else decodeRecords(view, 0, keep);
  return 0;
}, koffi.pointer(cbType));
const rb = lib.ringBufferNew(ringFd, cb, null, null);
if (!rb) throw new Error('ring_buffer__new failed');

function timeIt(read: () => number): { perSec: number; n: number } {
  fill();
  const t0 = process.hrtime.bigint();
  const n = read();
  const ns = Number(process.hrtime.bigint() - t0);
  return { perSec: (n / ns) * 1e9, n };
}

const results: Record<string, number[]> = { 'zero-copy walk': [], 'zero-copy decode': [], 'libbpf walk': [], 'libbpf decode': [] };
for (let i = 0; i < rounds + 1; i++) {
  const r = {
    'zero-copy walk': timeIt(() => zeroCopyWalk.drain()),
    'zero-copy decode': timeIt(() => zeroCopyDecode.drain()),
    'libbpf walk': timeIt(() => ((mode = 'walk'), lib.ringBufferConsume(rb))),
    'libbpf decode': timeIt(() => ((mode = 'decode'), lib.ringBufferConsume(rb))),
  };
  for (const [k, v] of Object.entries(r)) {
    if (v.n !== count) throw new Error(`${k}: read ${v.n} of ${count} records`);
    if (i > 0) results[k].push(v.perSec); // round 0 warms the JIT
  }
}
lib.ringBufferFree(rb);
obj.close();

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const base = median(results['libbpf walk']);
console.log(`records per round ${count} of ${KSPAN_EVENT_SIZE} B, ${rounds} rounds, medians; ratio against libbpf walk`);
for (const [k, v] of Object.entries(results)) {
  const m = median(v);
  console.log(`${k.padEnd(18)} ${(m / 1e6).toFixed(2).padStart(6)} M records/s  (${(1e9 / m).toFixed(0)} ns/record, ratio ${(m / base).toFixed(2)})`);
}
if (sink === -1) console.log('');
