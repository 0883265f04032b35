/**
 * What the running kernel offers, probed at start: BTF, which tp_btf tracepoints
 * exist (their btf_trace_* typedefs in vmlinux BTF), which classic tracepoints
 * exist (tracefs). Used to switch programs off (libbpf autoload) and pick the I/O
 * path: sock_{send,recv}_length (6.3+) or the syscall-tracepoint fallback.
 */
import { existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { BTF_KIND_TYPEDEF, libbpf } from './native.ts';
import { PROGRAMS, type KernelHooks } from './programs.ts';
import { readTracepointPrototypes, type TracepointPrototype } from './tracepoint-prototypes.ts';

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
  return existsSync(VMLINUX_BTF);
}

export function tracefsMounted(): boolean {
  return existsSync(`${TRACEFS}/events`);
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

/** Whether the kernel has the BTF tracepoint `name` (tp_btf/name can attach). */
export function hasBtfTracepoint(name: string): boolean {
  if (!hasVmlinuxBtf()) return false;
  const lib = libbpf();
  vmlinux ??= lib.btfLoadVmlinux();
  if (!vmlinux) return false;
  return lib.btfFindByNameKind(vmlinux, `btf_trace_${name}`, BTF_KIND_TYPEDEF) > 0;
}

export function hasTracepoint(category: string, name: string): boolean {
  return existsSync(`${TRACEFS}/events/${category}/${name}`);
}

/**
 * The running kernel's hooks as the program planner sees them: the prototypes of
 * the BTF tracepoints kspan's programs use (read once from vmlinux BTF), and the
 * classic tracepoints under tracefs.
 */
export function kernelHooks(tracepoints: readonly string[] = PROGRAM_TRACEPOINTS): KernelHooks {
  const prototypes = hasVmlinuxBtf() ? readTracepointPrototypes(tracepoints) : new Map<string, TracepointPrototype>();
  return {
    tracepointArgs: (name) => prototypes.get(name)?.length,
    hasTracepoint,
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
