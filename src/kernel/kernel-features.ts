/**
 * What the running kernel offers, probed at start: BTF, the prototypes of the
 * tp_btf tracepoints kspan uses (their btf_trace_* typedefs in vmlinux BTF),
 * which classic tracepoints exist (tracefs), and what the verifier allows
 * (src/kernel/program-probes.ts, asked lazily). The program planner
 * (src/kernel/programs.ts) turns these into which programs load, and the I/O
 * path: sock_{send,recv}_length (6.3+) or the syscall-tracepoint fallback.
 */
import { readFileSync } from 'node:fs';
import { pathAccess, tracefsState } from './privileges.ts';
import { release } from 'node:os';
import { BTF_KIND } from '../elf/btf-kind.ts';
import { libbpf } from './native.ts';
import { kernelCapabilities } from './program-probes.ts';
import { PROGRAMS, type KernelHooks } from './programs.ts';
import { tracepointPrototypes, type TracepointPrototype } from './tracepoint-prototypes.ts';

export const VMLINUX_BTF = '/sys/kernel/btf/vmlinux';
export const TRACEFS = '/sys/kernel/tracing';

export type { IoPath } from './programs.ts';
import type { IoPath } from './programs.ts';

export function kernelRelease(): string {
  return release();
}

/** [major, minor] of the running kernel. */
export function kernelVersion(rel = release()): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(rel);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

export function hasVmlinuxBtf(): boolean {
  return pathAccess(VMLINUX_BTF) === 'ok';
}

/** Whether tracefs's events can be read here (stat, not access(2): capabilities count). */
export function tracefsMounted(): boolean {
  return pathAccess(`${TRACEFS}/events`) === 'ok';
}

export function bpffsMounted(): boolean {
  try {
    return readFileSync('/proc/mounts', 'utf8')
      .split('\n')
      .some((l) => l.split(' ')[1] === '/sys/fs/bpf' && l.split(' ')[2] === 'bpf');
  } catch {
    return false;
  }
}

let vmlinux: bigint | undefined;

/** How often the vmlinux BTF was parsed and freed (it takes megabytes while held). */
export const vmlinuxBtfStats = { loads: 0, frees: 0 };

/**
 * Runs `fn` on the kernel's parsed BTF, or returns undefined when there is none.
 * Questions come in bursts (every program of an object, at load), so one parse
 * serves the current turn of the event loop and is freed right after it.
 */
function withVmlinuxBtf<T>(fn: (btf: bigint) => T): T | undefined {
  if (!hasVmlinuxBtf()) return undefined;
  const lib = libbpf();
  if (!vmlinux) {
    const btf = lib.btfLoadVmlinux();
    if (!btf) return undefined;
    vmlinux = btf;
    vmlinuxBtfStats.loads++;
    setImmediate(() => {
      vmlinux = undefined;
      lib.btfFree(btf);
      vmlinuxBtfStats.frees++;
    }).unref();
  }
  return fn(vmlinux);
}

/** Whether the kernel has the BTF tracepoint `name` (tp_btf/name can attach). */
export function hasBtfTracepoint(name: string): boolean {
  return withVmlinuxBtf((btf) => libbpf().btfFindByNameKind(btf, `btf_trace_${name}`, BTF_KIND.TYPEDEF) > 0) ?? false;
}

/**
 * Whether BPF hash maps allocate their elements with the BPF memory allocator
 * (struct bpf_mem_alloc, 6.1+): from then on a hash map that is not preallocated
 * is safe in tracing programs; before, the verifier lets such a program load but
 * the kernel WARNs ("trace type BPF program uses run-time allocation").
 */
export function hasBpfMemAlloc(): boolean {
  return withVmlinuxBtf((btf) => libbpf().btfFindByNameKind(btf, 'bpf_mem_alloc', BTF_KIND.STRUCT) > 0) ?? false;
}

export function hasTracepoint(category: string, name: string): boolean {
  return pathAccess(`${TRACEFS}/events/${category}/${name}`) === 'ok';
}

/**
 * The running kernel's hooks as the program planner sees them: the prototypes of
 * the BTF tracepoints kspan's programs use (read once from vmlinux BTF), and the
 * classic tracepoints under tracefs.
 */
export function kernelHooks(tracepoints: readonly string[] = PROGRAM_TRACEPOINTS): KernelHooks {
  const prototypes = withVmlinuxBtf((btf) => tracepointPrototypes(btf, tracepoints)) ?? new Map<string, TracepointPrototype>();
  const tracefs = tracefsState();
  return {
    tracepointArgs: (name) => prototypes.get(name)?.length,
    hasTracepoint,
    can: kernelCapabilities(),
    ...(tracefs.state === 'denied' ? { tracepointsUnreadable: { reason: 'tracefs is not readable here', privilege: tracefs.fix! } } : {}),
  };
}

/** Every BTF tracepoint a program of kspan.bpf.o attaches to. */
export const PROGRAM_TRACEPOINTS = [...new Set(PROGRAMS.filter((p) => p.section.startsWith('tp_btf/')).map((p) => p.section.slice('tp_btf/'.length)))];

/** The I/O path the kernel supports, or the one forced. */
export function chooseIoPath(forced?: IoPath, hooks?: KernelHooks): IoPath {
  if (forced) return forced;
  const has = (tp: string) => (hooks ? hooks.tracepointArgs(tp) !== undefined : hasBtfTracepoint(tp));
  return has('sock_send_length') && has('sock_recv_length') ? 'sock_length' : 'syscalls';
}
