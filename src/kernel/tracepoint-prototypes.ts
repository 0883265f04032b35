/**
 * The prototypes of BTF tracepoints, read from a kernel's BTF through libbpf:
 * `btf_trace_<name>` is a typedef of a pointer to a FUNC_PROTO whose first
 * parameter is the tracepoint's `void *__data`, then the tracepoint's arguments.
 * A tp_btf program may read only the arguments the running kernel's prototype
 * has, so kspan picks its program variants from these (src/kernel/programs.ts).
 *
 * The same reader runs on the live kernel (/sys/kernel/btf/vmlinux) and on BTF
 * captured from other kernels (tools/capture-prototypes.ts writes the unit tests'
 * fixtures with it).
 */
import { KspanError } from '../core/errors.ts';
import { BTF_KIND } from '../elf/btf-kind.ts';
import { koffi, libbpf } from './native.ts';

/** A tracepoint's arguments as C type names, e.g. ['const struct sock *', 'int']. */
export type TracepointPrototype = readonly string[];

const BTF_TYPE_SIZE = 12;
const BTF_PARAM_SIZE = 8;
/** Bounds a walk through modifiers and pointers (a sane type never needs more). */
const MAX_TYPE_DEPTH = 16;

interface BtfType {
  name: string;
  kind: number;
  vlen: number;
  /** size_or_type: the referenced type for PTR, TYPEDEF, CONST, … */
  type: number;
  ptr: bigint;
}

class BtfHandle {
  readonly #btf: bigint;
  constructor(btf: bigint) {
    this.#btf = btf;
  }

  type(id: number): BtfType | undefined {
    const ptr = libbpf().btfTypeById(this.#btf, id);
    if (!ptr) return undefined;
    const v = new DataView(koffi.view(ptr, BTF_TYPE_SIZE));
    const info = v.getUint32(4, true);
    const nameOff = v.getUint32(0, true);
    return { name: libbpf().btfNameByOffset(this.#btf, nameOff) ?? '', kind: (info >>> 24) & 0x1f, vlen: info & 0xffff, type: v.getUint32(8, true), ptr };
  }

  /** The FUNC_PROTO's parameter type ids. */
  params(t: BtfType): number[] {
    const v = new DataView(koffi.view(t.ptr, BTF_TYPE_SIZE + t.vlen * BTF_PARAM_SIZE));
    const out: number[] = [];
    for (let i = 0; i < t.vlen; i++) out.push(v.getUint32(BTF_TYPE_SIZE + i * BTF_PARAM_SIZE + 4, true));
    return out;
  }

  find(name: string, kind: number): number {
    return libbpf().btfFindByNameKind(this.#btf, name, kind);
  }

  /** A C spelling of type `id`, enough to tell prototypes apart. */
  typeName(id: number, depth = 0): string {
    if (id === 0) return 'void';
    const t = this.type(id);
    if (!t || depth > MAX_TYPE_DEPTH) return '?';
    switch (t.kind) {
      case BTF_KIND.PTR: return `${this.typeName(t.type, depth + 1)} *`;
      case BTF_KIND.CONST: return `const ${this.typeName(t.type, depth + 1)}`;
      case BTF_KIND.VOLATILE: return `volatile ${this.typeName(t.type, depth + 1)}`;
      case BTF_KIND.RESTRICT: return this.typeName(t.type, depth + 1);
      case BTF_KIND.STRUCT: return `struct ${t.name}`;
      case BTF_KIND.UNION: return `union ${t.name}`;
      case BTF_KIND.ENUM: case BTF_KIND.ENUM64: return `enum ${t.name}`;
      case BTF_KIND.ARRAY: return `${t.name || 'array'}[]`;
      case BTF_KIND.FUNC_PROTO: return 'fn';
      default: return t.name || '?';
    }
  }
}

/** Reads the prototype of each named tracepoint from a BTF file (captured from another kernel). */
export function readTracepointPrototypes(names: readonly string[], btfPath: string): Map<string, TracepointPrototype> {
  const lib = libbpf();
  const raw = lib.btfParse(btfPath, null);
  if (!raw) throw new KspanError('KSPAN_ERR_NO_BTF', `cannot read BTF from ${btfPath}`, { hint: 'give a raw BTF file, e.g. a copy of /sys/kernel/btf/vmlinux' });
  try {
    return tracepointPrototypes(raw, names);
  } finally {
    lib.btfFree(raw);
  }
}

/** The prototype of each named tracepoint in a parsed BTF (libbpf handle); absent ones are left out. */
export function tracepointPrototypes(raw: bigint, names: readonly string[]): Map<string, TracepointPrototype> {
  const btf = new BtfHandle(raw);
  const out = new Map<string, TracepointPrototype>();
  for (const name of names) {
    const id = btf.find(`btf_trace_${name}`, BTF_KIND.TYPEDEF);
    if (id <= 0) continue;
    const typedef = btf.type(id);
    const ptr = typedef && btf.type(typedef.type);
    const proto = ptr?.kind === BTF_KIND.PTR ? btf.type(ptr.type) : undefined;
    if (proto?.kind !== BTF_KIND.FUNC_PROTO) continue;
    // The first parameter is the tracepoint's own `void *__data`.
    out.set(name, btf.params(proto).slice(1).map((p) => btf.typeName(p)));
  }
  return out;
}
