/**
 * bpf/bench.bpf.c's `fill_ring`, loaded alone: each getppid() of this process
 * writes `count` records of kspan_event size (cookie i + 1, bytes 100 + i) into
 * `bench_ring`. For the ring-buffer reader's tests and benchmark.
 */
import { join } from 'node:path';
import { BpfObject } from '../../src/kernel/bpf-object.ts';
import { koffi } from '../../src/kernel/native.ts';
import { REPO_ROOT } from './build-fixture.ts';

const getppid = koffi.load('libc.so.6').func('int getppid()') as () => number;

export interface RingFiller {
  obj: BpfObject;
  ringFd: number;
  /** Writes the records (one getppid() call). */
  fill(): void;
}

/** `ringBytes`: the ring's size (default: the object's 64 MiB). Close `obj` when done. */
export function openRingFiller(count: number, ringBytes?: number): RingFiller {
  const obj = BpfObject.open(join(REPO_ROOT, 'bpf/.output/bench.bpf.o'));
  try {
    for (const p of obj.programNames) obj.setAutoload(p, p === 'fill_ring');
    if (ringBytes !== undefined) obj.setMaxEntries('bench_ring', ringBytes);
    obj.load();
    obj.attachAll();
    const cfg = Buffer.alloc(8);
    cfg.writeUInt32LE(process.pid, 0);
    cfg.writeUInt32LE(count, 4);
    obj.map('fill_config').update(Buffer.alloc(4), cfg);
    return { obj, ringFd: obj.map('bench_ring').fd, fill: () => void getppid() };
  } catch (err) {
    obj.close();
    throw err;
  }
}
