/**
 * What the verifier allows, asked before the load rather than learnt from a
 * refused one: each question loads a program of a few instructions (well under
 * a millisecond) and throws it away. The planner (src/kernel/programs.ts) asks
 * only about the programs it is about to choose, through KernelHooks.can.
 */
import { c, libbpf, withSignalsBlocked } from './native.ts';
import type { KernelCapability } from './programs.ts';

const BPF_PROG_TYPE_SYSCALL = 31;
const BPF_MAP_TYPE_QUEUE = 22;
const BPF_FUNC_loop = 181;
const BPF_F_SLEEPABLE = 1 << 4;
const BPF_PSEUDO_MAP_FD = 1;

/** libbpf's struct bpf_prog_load_opts up to attach_btf_obj_fd (libbpf 1.1): sz, then prog_flags at 20. */
const LOAD_OPTS_SIZE = 44;

/** One instruction: opcode, dst/src registers, offset, immediate. */
function insn(code: number, dst: number, src: number, off: number, imm: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(code, 0);
  b.writeUInt8((src << 4) | dst, 1);
  b.writeInt16LE(off, 2);
  b.writeInt32LE(imm, 4);
  return b;
}

/**
 * Whether a sleepable program (the `syscall` type, as flush_idle is) may use a
 * queue map. Before 6.2 (or so) the verifier refuses it: "Sleepable programs can
 * only use array, hash, and ringbuf maps".
 */
function sleepableQueueMap(): boolean {
  const lib = libbpf();
  const map = lib.mapCreate(BPF_MAP_TYPE_QUEUE, null, 0, 8, 1, null);
  if (map < 0) return false;
  try {
    const prog = Buffer.concat([
      insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map), // r1 = &map (ld_imm64, two slots)
      insn(0, 0, 0, 0, 0),
      insn(0xb7, 0, 0, 0, 0), // r0 = 0
      insn(0x95, 0, 0, 0, 0), // exit
    ]);
    const opts = Buffer.alloc(LOAD_OPTS_SIZE);
    opts.writeBigUInt64LE(BigInt(LOAD_OPTS_SIZE), 0);
    opts.writeUInt32LE(BPF_F_SLEEPABLE, 20);
    const fd = withSignalsBlocked(() => lib.progLoad(BPF_PROG_TYPE_SYSCALL, null, 'GPL', prog, prog.length / 8, opts));
    if (fd < 0) return false;
    c.close(fd);
    return true;
  } finally {
    c.close(map);
  }
}

/** Whether the syscall program type may call bpf_loop (5.17+). */
function syscallBpfLoop(): boolean {
  return libbpf().probeBpfHelper(BPF_PROG_TYPE_SYSCALL, BPF_FUNC_loop, null) === 1;
}

const BPF_PROG_TYPE_TRACEPOINT = 5;
const BPF_FUNC_task_pt_regs = 175;

/** Whether a tracepoint program may call bpf_task_pt_regs (5.15+): the fallback's exit reads the fd from the saved registers. */
function tracepointTaskPtRegs(): boolean {
  return libbpf().probeBpfHelper(BPF_PROG_TYPE_TRACEPOINT, BPF_FUNC_task_pt_regs, null) === 1;
}

const PROBES: Record<KernelCapability, () => boolean> = {
  bpf_loop: syscallBpfLoop,
  sleepable_queue_map: sleepableQueueMap,
  task_pt_regs: tracepointTaskPtRegs,
};

/** Asks the running kernel, once per capability per process. */
export function kernelCapabilities(): (cap: KernelCapability) => boolean {
  const known = new Map<KernelCapability, boolean>();
  return (cap) => {
    let v = known.get(cap);
    if (v === undefined) {
      v = PROBES[cap]();
      known.set(cap, v);
    }
    return v;
  };
}
