/**
 * libbpf's messages, captured through its print callback. The callback gets a
 * printf format and a va_list; on x86_64 a va_list parameter is a pointer, so
 * vsnprintf formats it directly. Lines go to whoever is capturing (to attach them
 * to an error) and to the logger at libbpf's own level. The verifier's log is not
 * among them: kspan gives each program its own log buffer, and libbpf prints the
 * log only when the buffer is its own.
 *
 * libbpf's debug lines (some 3000 per start: every CO-RE relocation) are not
 * even formatted when the sink does not want them (`setLibbpfLogSink(s, { debug:
 * false })`): on a small or emulated machine that formatting was a noticeable
 * part of the agent's start-up. Failures are warn lines, kept always.
 *
 * The callback runs inside a libbpf call: an exception thrown there would
 * surface from that call instead of its result, so none leaves it. A sink that
 * throws is counted (`libbpfLogStats.sinkErrors`) and reported once as a process
 * warning.
 */
import { c, koffi, LibbpfPrintFn, libbpf } from './native.ts';

export type LibbpfLogSink = (level: 'warn' | 'info' | 'debug', line: string) => void;

const LEVELS = ['warn', 'info', 'debug'] as const;
const buf = Buffer.alloc(8192);
let sink: LibbpfLogSink = () => {};
let installed = false;
let wantDebug = true;
const captures = new Set<string[]>();

/** sinkErrors: sink calls that threw; debugSkipped: debug lines left unformatted (nobody wanted them). */
export const libbpfLogStats = { sinkErrors: 0, debugSkipped: 0 };

const LIBBPF_DEBUG = 2;

function onPrint(level: number, fmt: bigint, args: bigint): number {
  if (level === LIBBPF_DEBUG && !wantDebug) {
    libbpfLogStats.debugSkipped++;
    return 0;
  }
  try {
    const n = c.vsnprintf(buf, buf.length, fmt, args);
    const text = buf.toString('utf8', 0, Math.max(0, Math.min(n, buf.length - 1))).trimEnd();
    for (const lines of captures) lines.push(text);
    sink(LEVELS[level] ?? 'debug', text);
    return n;
  } catch (err) {
    if (libbpfLogStats.sinkErrors++ === 0) {
      process.emitWarning(`libbpf log: ${err instanceof Error ? err.message : String(err)} (further failures are only counted)`, {
        code: 'KSPAN_LIBBPF_LOG',
      });
    }
    return 0;
  }
}

function install(): void {
  if (installed) return;
  installed = true;
  const fn = koffi.register(onPrint, koffi.pointer(LibbpfPrintFn));
  libbpf().setPrint(fn);
}

/** Where libbpf's lines go (the agent's logger); `debug: false`: its debug lines are dropped unformatted, from the captures too. */
export function setLibbpfLogSink(s: LibbpfLogSink, opts: { debug?: boolean } = {}): void {
  install();
  sink = s;
  wantDebug = opts.debug ?? true;
}

export interface LibbpfLogCapture {
  stop(): string[];
}

/** Collects libbpf's lines until stop(). */
export function captureLibbpfLog(): LibbpfLogCapture {
  install();
  const lines: string[] = [];
  captures.add(lines);
  return {
    stop() {
      captures.delete(lines);
      return lines;
    },
  };
}
