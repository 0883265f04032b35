/**
 * The kernel's own count of retransmitted skbs for one TCP port: `perf stat` on
 * the tcp:tcp_retransmit_skb tracepoint with a filter. perf counts through perf
 * events, not BPF: a BPF oracle on the classic tracepoint (bpftrace) misses hits
 * that land while another BPF program runs on that CPU (bpf_prog_active), which
 * kspan's tp_btf programs do not.
 */
import { readdirSync, readlinkSync } from 'node:fs';
import type { Proc, ProcessGroup } from './processes.ts';
import { scaled } from './timeouts.ts';

export interface RetransmitOracle {
  /** Stops counting and returns the count. */
  stop(): Promise<number>;
}

function perfEventFds(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).filter((fd) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${fd}`).includes('perf_event');
      } catch {
        return false;
      }
    }).length;
  } catch {
    return 0;
  }
}

/** Counts the retransmits of sockets to or from `port`; `localOnly`: of sockets whose own port it is (a server's accepted sockets). */
export async function startRetransmitOracle(group: ProcessGroup, port: number, opts: { localOnly?: boolean } = {}): Promise<RetransmitOracle> {
  const filter = opts.localOnly ? `sport == ${port}` : `sport == ${port} || dport == ${port}`;
  const perf: Proc = group.start('perf', ['stat', '-x,', '-a', '-e', 'tcp:tcp_retransmit_skb', '--filter', filter]);
  for (let i = 0; perfEventFds(perf.pid) === 0; i++) {
    if (i * 25 > scaled(5_000)) throw new Error(`perf stat did not open its events: ${perf.stderr.join('\n')}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    async stop() {
      perf.child.kill('SIGINT');
      await perf.exited;
      const line = perf.stderr.find((l) => l.includes('tcp:tcp_retransmit_skb'));
      const m = line && /^(\d+),/.exec(line);
      if (!m) throw new Error(`perf stat printed no count: ${perf.stderr.join('\n')}`);
      return Number(m[1]);
    },
  };
}
