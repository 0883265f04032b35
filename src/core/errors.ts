/**
 * Every user-facing failure of kspan: a stable code, a sentence that says what to
 * do, and the underlying cause. docs/ERRORS.md lists the codes.
 */
import { getSystemErrorName } from 'node:util';

export type ErrorCode =
  | 'KSPAN_ERR_PRIVILEGE'
  | 'KSPAN_ERR_NO_BTF'
  | 'KSPAN_ERR_TRACEFS'
  | 'KSPAN_ERR_LIBBPF'
  | 'KSPAN_ERR_BPF_OBJECT'
  | 'KSPAN_ERR_VERIFIER'
  | 'KSPAN_ERR_BPF_INTERRUPTED'
  | 'KSPAN_ERR_ATTACH'
  | 'KSPAN_ERR_MAP'
  | 'KSPAN_ERR_RINGBUF'
  | 'KSPAN_ERR_USAGE'
  | 'KSPAN_ERR_TARGET'
  | 'KSPAN_ERR_ELF'
  | 'KSPAN_ERR_TLS'
  | 'KSPAN_ERR_PROCESS_CONTEXT'
  | 'KSPAN_ERR_RECORD_FILE'
  | 'KSPAN_ERR_EXPORT'
  | 'KSPAN_ERR_KERNEL'
  | 'KSPAN_ERR_RECORD_DECODE'
  | 'KSPAN_ERR_BTF'
  | 'KSPAN_ERR_POLICY'
  | 'KSPAN_ERR_SPOOL'
  | 'KSPAN_ERR_UPROBE'
  | 'KSPAN_ERR_METRICS';

export interface KspanErrorOptions {
  /** What the user should do about it. */
  hint?: string;
  cause?: unknown;
  /** Extra detail (e.g. the verifier log). */
  details?: Record<string, unknown>;
}

export class KspanError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: KspanErrorOptions = {}) {
    super(options.hint ? `${message} (${options.hint})` : message, { cause: options.cause });
    this.name = 'KspanError';
    this.code = code;
    this.hint = options.hint;
    this.details = options.details ?? {};
  }
}

/**
 * The BPF verifier refused a program. The message ends with where the verifier
 * stopped (the log's last meaningful line) and says when the log was truncated;
 * `log` is the verifier's whole output.
 */
export class VerifierError extends KspanError {
  readonly program: string;
  readonly log: string;
  /** The log did not fit the buffer given to the kernel: some of it is missing. */
  readonly truncated: boolean;

  constructor(program: string, log: string, options: { truncated?: boolean; cause?: unknown; details?: Record<string, unknown> } = {}) {
    const truncated = options.truncated ?? false;
    const note = truncated ? ' (its log was truncated; the last line kept)' : '';
    super('KSPAN_ERR_VERIFIER', `the kernel's BPF verifier rejected program "${program}"${note}: ${verifierLogLastLine(log)}`, {
      hint: 'this is a kspan bug or an unsupported kernel: report it with the verifier log (err.log)',
      cause: options.cause,
      details: { ...options.details, program, truncated },
    });
    this.program = program;
    this.log = log;
    this.truncated = truncated;
  }
}

/** The verifier's closing statistics, printed after the line that says why it stopped. */
const VERIFIER_SUMMARY = /^(processed \d+ insns|verification time|stack depth|-- END PROG LOAD LOG --)/;

/**
 * Where the verifier stopped: the log's last line before its closing
 * statistics. A register line ("R0 min value is outside ...") or an indented
 * one explains the line before it, so that one comes too: "invalid access to
 * map value, ...: R0 min value is outside of the allowed memory range".
 */
export function verifierLogLastLine(log: string): string {
  const lines = log.split('\n').map((l) => l.trimEnd());
  let end = lines.length;
  while (end > 0 && (lines[end - 1] === '' || VERIFIER_SUMMARY.test(lines[end - 1]))) end--;
  if (end === 0) return lines.filter((l) => l !== '').at(-1) ?? '(empty log)';
  const last = lines[end - 1].trim();
  const before = end >= 2 ? lines[end - 2].trim() : '';
  return before && /^(R\d|\s)/.test(lines[end - 1]) ? `${before}: ${last}` : last;
}

/** An errno from libbpf (negative or positive) as a Node-style error with its name. */
export function errnoError(call: string, errno: number): Error & { errno: number; syscall: string } {
  const n = Math.abs(errno);
  const err = new Error(`${call} failed: ${errnoName(n)} (${n})`) as Error & {
    errno: number;
    syscall: string;
  };
  err.errno = n;
  err.syscall = call;
  return err;
}

/** A kernel-internal errno that libbpf passes on and libc has no name for (include/linux/errno.h). */
const ENOTSUPP = 524;

/** The symbolic name of an errno (EPERM, ENOENT, ...), from the platform's own table. */
export function errnoName(errno: number): string {
  const n = Math.abs(errno);
  if (n === 0) return 'errno 0';
  const name = getSystemErrorName(-n);
  if (!name.startsWith('Unknown')) return name;
  return n === ENOTSUPP ? 'ENOTSUPP' : `errno ${n}`;
}

export const HINT_PRIVILEGE =
  'run as root, or grant CAP_BPF and CAP_PERFMON (and CAP_SYS_PTRACE to read other users\' processes)';
export const HINT_TRACEFS = 'mount tracefs: mount -t tracefs tracefs /sys/kernel/tracing';
export const HINT_BPFFS = 'mount bpffs: mount -t bpf bpf /sys/fs/bpf';
export const HINT_BTF =
  'kspan needs the kernel\'s BTF at /sys/kernel/btf/vmlinux: use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian 11+, Ubuntu 22.04+, RHEL 8.2+, Amazon Linux 2023)';
export const HINT_LIBBPF = 'install libbpf 1.x: apt-get install libbpf1 (Debian/Ubuntu) or dnf install libbpf';

/** A ring-buffer record kspan cannot decode (an unknown type: the BPF object and the agent differ). */
export class RecordDecodeError extends KspanError {
  constructor(message: string) {
    super('KSPAN_ERR_RECORD_DECODE', message, { hint: 'rebuild the BPF objects with this version of kspan: make -C bpf' });
    this.name = 'RecordDecodeError';
  }
}

/** A BPF object's .BTF section the decoder generator cannot read. */
export class BtfFormatError extends KspanError {
  constructor(message: string) {
    super('KSPAN_ERR_BTF', `BTF: ${message}`, { hint: 'rebuild the BPF objects with clang -g (make -C bpf)' });
    this.name = 'BtfFormatError';
  }
}
