/**
 * What to probe: the built-in presets (dns, tls) and user-defined function spans
 * (`--uprobe BINARY_OR_LIB:SYMBOL[:SPAN_NAME]`), and which of a process's mapped
 * files each one applies to. Pure.
 */

/** How a call's record becomes a span: its attributes and its status. */
export type CallKind = 'call' | 'dns' | 'tls';

export type Preset = 'dns' | 'tls';
export const PRESETS: readonly Preset[] = ['dns', 'tls'];

/** One function to probe, in whichever mapped file `binary` names. */
export interface UprobeSpec {
  /** An absolute path, or a file name (`libssl.so.3`), or a library's stem (`libssl`, `libc`, an executable's name). */
  binary: string;
  symbol: string;
  spanName: string;
  kind: CallKind;
  /** A preset also looks in the target's executable (statically linked libc or OpenSSL). */
  alsoExecutable?: boolean;
}

/** The functions of a preset. */
export function presetSpecs(preset: Preset): UprobeSpec[] {
  if (preset === 'dns') return [{ binary: 'libc', symbol: 'getaddrinfo', spanName: 'dns.lookup', kind: 'dns', alsoExecutable: true }];
  return ['SSL_do_handshake', 'SSL_connect', 'SSL_accept'].map((symbol) => ({
    binary: 'libssl',
    symbol,
    spanName: 'tls.handshake',
    kind: 'tls' as const,
    alsoExecutable: true,
  }));
}

/** Every function to probe: the presets', then the user's. */
export function uprobeSpecs(presets: readonly Preset[], user: readonly UprobeSpec[]): UprobeSpec[] {
  return [...presets.flatMap(presetSpecs), ...user];
}

/** A `--uprobe` value that cannot be used: what is wrong, and what to give. */
export class UprobeSpecError extends Error {
  readonly hint: string;
  constructor(message: string, hint: string) {
    super(message);
    this.hint = hint;
  }
}

const SYMBOL = /^[A-Za-z_.$][A-Za-z0-9_.$@]*$/;
const SPAN_NAME = /^[^\s:][^:]*$/;
const SPEC_HINT = 'give BINARY_OR_LIB:SYMBOL[:SPAN_NAME], e.g. /usr/bin/app:handle_request or libssl:SSL_read:ssl.read';

/** `BINARY_OR_LIB:SYMBOL[:SPAN_NAME]`; the span is named after the symbol when no name is given. */
export function parseUprobeSpec(raw: string): UprobeSpec {
  const parts = raw.trim().split(':');
  if (parts.length < 2 || parts.length > 3) throw new UprobeSpecError('not BINARY_OR_LIB:SYMBOL[:SPAN_NAME]', SPEC_HINT);
  const [binary, symbol, spanName] = parts.map((p) => p.trim());
  if (!binary) throw new UprobeSpecError('no binary or library before the first ":"', SPEC_HINT);
  if (!SYMBOL.test(symbol)) throw new UprobeSpecError(`"${symbol}" is not a symbol name`, SPEC_HINT);
  if (spanName !== undefined && !SPAN_NAME.test(spanName)) throw new UprobeSpecError(`"${spanName}" is not a span name`, SPEC_HINT);
  return { binary, symbol, spanName: spanName || symbol, kind: 'call' };
}

/** The canonical text of a spec (logs, errors). */
export function formatUprobeSpec(s: UprobeSpec): string {
  return `${s.binary}:${s.symbol}:${s.spanName}`;
}

/**
 * Whether the mapped file at `path` is the one `binary` names: the same
 * absolute path; or the same file name; or a stem of it (`libssl` matches
 * `libssl.so.3`, `libc` matches `libc.so.6` and `libc-2.31.so`, never
 * `libcrypto.so.3`).
 */
export function binaryMatches(binary: string, path: string): boolean {
  if (binary.startsWith('/')) return binary === path;
  const base = path.slice(path.lastIndexOf('/') + 1);
  if (base === binary) return true;
  return base.startsWith(`${binary}.so`) || base.startsWith(`${binary}-`);
}
