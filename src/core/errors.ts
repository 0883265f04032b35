/**
 * Every user-facing failure of kspan: a stable code, a sentence that says what to
 * do, and the underlying cause. docs/ERRORS.md lists the codes.
 */

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
  | 'KSPAN_ERR_KERNEL';

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

/** The BPF verifier refused a program; `log` is the verifier's own output. */
export class VerifierError extends KspanError {
  readonly program: string;
  readonly log: string;

  constructor(program: string, log: string, cause?: unknown) {
    super('KSPAN_ERR_VERIFIER', `the kernel's BPF verifier rejected program "${program}"`, {
      hint: 'this is a kspan bug or an unsupported kernel: report it with the verifier log (err.log)',
      cause,
      details: { program },
    });
    this.program = program;
    this.log = log;
  }
}

/** Where the verifier stopped: the log's last line that is not blank or a summary. */
export function verifierLogLastLine(log: string): string {
  const lines = log.split('\n').map((l) => l.trim()).filter(Boolean);
  const summary = /^(processed \d+ insns|verification time|stack depth|-- END PROG LOAD LOG --)/;
  for (let i = lines.length - 1; i >= 0; i--) if (!summary.test(lines[i])) return lines[i];
  return lines.at(-1) ?? '(empty log)';
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

const ERRNO: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 3: 'ESRCH', 4: 'EINTR', 7: 'E2BIG', 9: 'EBADF', 12: 'ENOMEM',
  13: 'EACCES', 14: 'EFAULT', 16: 'EBUSY', 17: 'EEXIST', 22: 'EINVAL', 24: 'EMFILE',
  28: 'ENOSPC', 38: 'ENOSYS', 95: 'EOPNOTSUPP', 524: 'ENOTSUPP',
};

export function errnoName(n: number): string {
  return ERRNO[n] ?? `errno ${n}`;
}

export const HINT_PRIVILEGE =
  'run as root, or grant CAP_BPF and CAP_PERFMON (and CAP_SYS_PTRACE to read other users\' processes)';
export const HINT_TRACEFS = 'mount tracefs: mount -t tracefs tracefs /sys/kernel/tracing';
export const HINT_BPFFS = 'mount bpffs: mount -t bpf bpf /sys/fs/bpf';
export const HINT_BTF =
  'kspan needs the kernel\'s BTF at /sys/kernel/btf/vmlinux: use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian 11+, Ubuntu 22.04+, RHEL 8.2+, Amazon Linux 2023)';
export const HINT_LIBBPF = 'install libbpf 1.x: apt-get install libbpf1 (Debian/Ubuntu) or dnf install libbpf';
