/**
 * A BTF reader (the .BTF section of a BPF object): enough to lay out structs,
 * arrays, integers and enums for the decoder generator. Pure: bytes in, types out.
 * Format: linux/Documentation/bpf/btf.rst (header, type section, string section).
 */
import { BtfFormatError } from '../../src/core/errors.ts';
import { BTF_KIND } from '../../src/elf/btf-kind.ts';

export { BTF_KIND };

export interface BtfMember {
  name: string;
  type: number;
  /** Offset in bits from the start of the struct. */
  bitOffset: number;
  bitfieldSize: number;
}

export interface BtfType {
  id: number;
  kind: number;
  name: string;
  /** INT/STRUCT/UNION/ENUM/FLOAT/DATASEC: size in bytes; else 0. */
  size: number;
  /** PTR/TYPEDEF/CONST/VOLATILE/RESTRICT/VAR/FUNC/TYPE_TAG/DECL_TAG: referenced type. */
  ref: number;
  members: BtfMember[];
  /** INT: signedness and bit width. */
  intSigned: boolean;
  intBits: number;
  /** ARRAY: element type and count. */
  elemType: number;
  nelems: number;
  /** ENUM/ENUM64: values. */
  enumValues: { name: string; value: bigint }[];
}

export interface Btf {
  types: BtfType[]; // index = type id; [0] is void
  byName(name: string, kind: number): BtfType | undefined;
  /** Skips typedef/const/volatile/restrict/type_tag. */
  resolve(id: number): BtfType;
  sizeOf(id: number): number;
}

export function parseBtf(bytes: Uint8Array): Btf {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 24) throw new BtfFormatError('section too short');
  const magic = dv.getUint16(0, true);
  if (magic !== 0xeb9f) throw new BtfFormatError(`bad magic 0x${magic.toString(16)} (big-endian BTF is not supported)`);
  const hdrLen = dv.getUint32(4, true);
  const typeOff = dv.getUint32(8, true);
  const typeLen = dv.getUint32(12, true);
  const strOff = dv.getUint32(16, true);
  const strLen = dv.getUint32(20, true);
  const tStart = hdrLen + typeOff;
  const sStart = hdrLen + strOff;
  if (tStart + typeLen > bytes.length || sStart + strLen > bytes.length) {
    throw new BtfFormatError('sections run past the end');
  }
  const decoder = new TextDecoder();
  const str = (off: number): string => {
    if (off >= strLen) throw new BtfFormatError(`string offset ${off} out of range`);
    let end = sStart + off;
    while (end < sStart + strLen && bytes[end] !== 0) end++;
    return decoder.decode(bytes.subarray(sStart + off, end));
  };

  const types: BtfType[] = [blank(0, 0, '')];
  let p = tStart;
  const end = tStart + typeLen;
  while (p < end) {
    if (p + 12 > end) throw new BtfFormatError('truncated type');
    const nameOff = dv.getUint32(p, true);
    const info = dv.getUint32(p + 4, true);
    const sizeOrType = dv.getUint32(p + 8, true);
    const vlen = info & 0xffff;
    const kind = (info >>> 24) & 0x1f;
    const kflag = info >>> 31;
    const t = blank(types.length, kind, str(nameOff));
    p += 12;
    // What follows the common header must lie within the type section too.
    if (p + trailingBytes(kind, vlen) > end) throw new BtfFormatError(`truncated type ${t.id}`);
    switch (kind) {
      case BTF_KIND.INT: {
        const enc = dv.getUint32(p, true);
        t.size = sizeOrType;
        t.intSigned = ((enc >>> 24) & 1) === 1;
        t.intBits = enc & 0xff;
        p += 4;
        break;
      }
      case BTF_KIND.ARRAY:
        t.elemType = dv.getUint32(p, true);
        t.nelems = dv.getUint32(p + 8, true);
        p += 12;
        break;
      case BTF_KIND.STRUCT:
      case BTF_KIND.UNION:
        t.size = sizeOrType;
        for (let i = 0; i < vlen; i++, p += 12) {
          const off = dv.getUint32(p + 8, true);
          t.members.push({
            name: str(dv.getUint32(p, true)),
            type: dv.getUint32(p + 4, true),
            bitOffset: kflag ? off & 0xffffff : off,
            bitfieldSize: kflag ? off >>> 24 : 0,
          });
        }
        break;
      case BTF_KIND.ENUM:
        t.size = sizeOrType;
        for (let i = 0; i < vlen; i++, p += 8) {
          t.enumValues.push({ name: str(dv.getUint32(p, true)), value: BigInt(dv.getInt32(p + 4, true)) });
        }
        break;
      case BTF_KIND.ENUM64:
        t.size = sizeOrType;
        for (let i = 0; i < vlen; i++, p += 12) {
          const lo = BigInt(dv.getUint32(p + 4, true));
          const hi = BigInt(dv.getUint32(p + 8, true));
          t.enumValues.push({ name: str(dv.getUint32(p, true)), value: (hi << 32n) | lo });
        }
        break;
      case BTF_KIND.FUNC_PROTO:
        t.ref = sizeOrType;
        p += 8 * vlen;
        break;
      case BTF_KIND.VAR:
      case BTF_KIND.DECL_TAG:
        t.ref = sizeOrType;
        p += 4;
        break;
      case BTF_KIND.DATASEC:
        t.size = sizeOrType;
        p += 12 * vlen;
        break;
      case BTF_KIND.FLOAT:
        t.size = sizeOrType;
        break;
      case BTF_KIND.PTR:
      case BTF_KIND.FWD:
      case BTF_KIND.TYPEDEF:
      case BTF_KIND.VOLATILE:
      case BTF_KIND.CONST:
      case BTF_KIND.RESTRICT:
      case BTF_KIND.FUNC:
      case BTF_KIND.TYPE_TAG:
        t.ref = sizeOrType;
        break;
      default:
        throw new BtfFormatError(`unknown kind ${kind} at type ${t.id}`);
    }
    types.push(t);
  }

  const index = new Map<string, BtfType>();
  for (const t of types) if (t.name && !index.has(`${t.kind}:${t.name}`)) index.set(`${t.kind}:${t.name}`, t);

  const resolve = (id: number): BtfType => {
    let t = types[id];
    for (let hops = 0; t && hops < 32; hops++) {
      if (
        t.kind === BTF_KIND.TYPEDEF || t.kind === BTF_KIND.CONST || t.kind === BTF_KIND.VOLATILE ||
        t.kind === BTF_KIND.RESTRICT || t.kind === BTF_KIND.TYPE_TAG
      ) {
        t = types[t.ref];
      } else {
        return t;
      }
    }
    throw new BtfFormatError(`cannot resolve type ${id}`);
  };
  const sizeOf = (id: number, depth = 0): number => {
    const t = resolve(id);
    if (t.kind === BTF_KIND.ARRAY) {
      // An array of itself (a malformed section) would recurse forever.
      if (depth >= 32) throw new BtfFormatError(`arrays nested too deep at type ${id}`);
      return sizeOf(t.elemType, depth + 1) * t.nelems;
    }
    if (t.kind === BTF_KIND.PTR) return 8;
    return t.size;
  };
  return { types, byName: (name, kind) => index.get(`${kind}:${name}`), resolve, sizeOf };
}

/** Bytes a type's record has after its 12-byte common header. */
function trailingBytes(kind: number, vlen: number): number {
  switch (kind) {
    case BTF_KIND.INT:
    case BTF_KIND.VAR:
    case BTF_KIND.DECL_TAG:
      return 4;
    case BTF_KIND.ARRAY:
      return 12;
    case BTF_KIND.STRUCT:
    case BTF_KIND.UNION:
    case BTF_KIND.ENUM64:
    case BTF_KIND.DATASEC:
      return 12 * vlen;
    case BTF_KIND.ENUM:
    case BTF_KIND.FUNC_PROTO:
      return 8 * vlen;
    default:
      return 0;
  }
}

function blank(id: number, kind: number, name: string): BtfType {
  return {
    id, kind, name, size: 0, ref: 0, members: [], intSigned: false, intBits: 0,
    elemType: 0, nelems: 0, enumValues: [],
  };
}
