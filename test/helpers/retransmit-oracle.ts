/**
 * The kernel's count of retransmitted skbs for one TCP port, as a tracing hook
 * sees them: `perf record` samples of the tcp:tcp_retransmit_skb tracepoint with
 * a filter, counted with `perf script`. perf samples through perf events, not
 * BPF: a BPF oracle on the classic tracepoint (bpftrace) misses hits that land
 * while another BPF program runs on that CPU (bpf_prog_active), which kspan's
 * tp_btf programs do not.
 *
 * Samples, not a counter (`perf stat`): on some hosts the kernel runs a
 * tracepoint's hit for the perf counter and ftrace but runs no BPF program and
 * takes no perf sample for it. Seen on a 6.18 host: retransmit-timer softirqs
 * that interrupted one particular process outside the test's PID namespace;
 * no program ran and no recursion miss was counted, so no hook could see them.
 * `perf stat` counted those and came out 1-3 above kspan now and then; the
 * samples agree with kspan's records one for one.
 *
 * perf starts with its events off (-D -1) and turns them on through its control
 * FIFO; start() returns once perf acknowledged, so nothing before that counts and
 * nothing after it is missed.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Proc, ProcessGroup } from './processes.ts';
import { scaled } from './timeouts.ts';

export interface RetransmitOracle {
  /** Stops counting and returns the count. */
  stop(): Promise<number>;
}

export async function startRetransmitOracle(group: ProcessGroup, port: number): Promise<RetransmitOracle> {
  const dir = mkdtempSync(join(tmpdir(), 'kspan-rtx-oracle-'));
  const [ctl, ack, data] = ['ctl', 'ack', 'perf.data'].map((f) => join(dir, f));
  execFileSync('mkfifo', [ctl, ack]);
  // Both FIFOs opened read-write and non-blocking: no open waits for perf, and
  // nothing here hangs if perf never gets that far.
  const ctlFd = openSync(ctl, constants.O_RDWR | constants.O_NONBLOCK);
  const acks = new Socket({ fd: openSync(ack, constants.O_RDWR | constants.O_NONBLOCK), readable: true, writable: false });
  const perf: Proc = group.start('perf', ['record', '-q', '-a', '--no-bpf-event', '-D', '-1', '--control', `fifo:${ctl},${ack}`,
    '-o', data, '-e', 'tcp:tcp_retransmit_skb', '--filter', `sport == ${port} || dport == ${port}`]);
  try {
    await new Promise<void>((resolve, reject) => {
      let got = '';
      const timer = setTimeout(() => reject(new Error(`perf record did not enable its events: ${perf.stderr.join('\n')}`)), scaled(10_000));
      acks.on('data', (b: Buffer) => {
        got += b.toString();
        if (got.includes('ack')) {
          clearTimeout(timer);
          resolve();
        }
      });
      acks.on('error', reject);
      writeSync(ctlFd, 'enable\n');
    });
  } catch (err) {
    perf.child.kill('SIGKILL');
    throw err;
  } finally {
    acks.destroy();
    closeSync(ctlFd);
  }
  return {
    async stop() {
      try {
        perf.child.kill('SIGINT');
        // perf record finishes its file, then dies of the SIGINT it was sent
        const { code, signal } = await perf.exited;
        if (code !== 0 && signal !== 'SIGINT') throw new Error(`perf record exited ${code ?? signal}: ${perf.stderr.join('\n')}`);
        const out = execFileSync('perf', ['script', '-i', data, '-F', 'trace'], { encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
        return out.split('\n').filter((l) => l.includes('skbaddr=')).length;
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
