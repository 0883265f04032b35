/**
 * The count of tcp_retransmit_skb hits for one TCP port that a tp_btf program
 * runs for, counted by a minimal witness program of the same kind as kspan's
 * (test/fixtures/bpf/retransmit-witness.bpf.c): what kspan's hook is given, so
 * kspan's records must add up to it exactly.
 *
 * Not a perf or ftrace count of the tracepoint: on some hosts the kernel fires a
 * hit for ftrace and the perf counter but runs no BPF program for it and counts
 * no recursion miss (seen on a 6.18 host: retransmit-timer softirqs that
 * interrupted one particular process outside the test's PID namespace), and a
 * perf sampling event (`perf record`) misses hits too (some landing on the idle
 * task). A hit the witness's own program skipped (its recursion misses, a
 * softirq hitting it mid-run) makes the count inexact: stop() throws then.
 */
import { join } from 'node:path';
import { BpfObject } from '../../src/kernel/bpf-object.ts';
import { libbpf } from '../../src/kernel/native.ts';
import { REPO_ROOT } from './build-fixture.ts';
import type { ProcessGroup } from './processes.ts';

export interface RetransmitOracle {
  /** Stops counting and returns the count. */
  stop(): Promise<number>;
}

const PROGRAM = 'witness_retransmit';

/** Counts for sockets to or from `port`; `localOnly`: only those whose own port it is (a server's accepted sockets). */
export async function startRetransmitOracle(_group: ProcessGroup, port: number, opts: { localOnly?: boolean } = {}): Promise<RetransmitOracle> {
  const obj = BpfObject.open(join(REPO_ROOT, 'bpf/.output/retransmit-witness.bpf.o'));
  try {
    obj.load();
    const key = Buffer.alloc(4);
    const value = Buffer.alloc(4);
    value.writeUInt32LE(port);
    obj.map('witness_port').update(key, value);
    if (opts.localOnly) {
      key.writeUInt32LE(1);
      value.writeUInt32LE(1);
      obj.map('witness_port').update(key, value);
    }
    obj.attachAll();
  } catch (err) {
    obj.close();
    throw err;
  }
  return {
    async stop() {
      try {
        obj.detachAll();
        const misses = obj.programInfo(PROGRAM)?.recursionMisses ?? 0n;
        if (misses > 0n) throw new Error(`the retransmit witness skipped ${misses} run(s) (recursion); its count is not exact`);
        const v = obj.map('witness_hits').lookup(Buffer.alloc(4), 8 * libbpf().numPossibleCpus());
        let n = 0n;
        for (let i = 0; v && i < v.length / 8; i++) n += v.readBigUInt64LE(8 * i);
        return Number(n);
      } finally {
        obj.close();
      }
    },
  };
}
