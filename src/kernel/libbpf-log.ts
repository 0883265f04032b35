/**
 * libbpf's messages, captured through its print callback. The callback gets a
 * printf format and a va_list; on x86_64 a va_list parameter is a pointer, so
 * vsnprintf formats it directly. Lines go to the logger (debug, warnings as warn)
 * and to whoever is capturing (to attach them to an error).
 */
import { c, koffi, LibbpfPrintFn, libbpf } from './native.ts';

export type LibbpfLogSink = (level: 'warn' | 'info' | 'debug', line: string) => void;

const LEVELS = ['warn', 'info', 'debug'] as const;
const buf = Buffer.alloc(8192);
let sink: LibbpfLogSink = () => {};
let installed = false;
const captures = new Set<string[]>();

function onPrint(level: number, fmt: bigint, args: bigint): number {
  const n = c.vsnprintf(buf, buf.length, fmt, args);
  const text = buf.toString('utf8', 0, Math.max(0, Math.min(n, buf.length - 1))).trimEnd();
  const lvl = LEVELS[level] ?? 'debug';
  // libbpf prints its own copy of the verifier log line by line at warn; errors
  // carry that log already, so it is logged at debug here.
  sink(lvl, text);
  for (const lines of captures) lines.push(text);
  return n;
}

function install(): void {
  if (installed) return;
  installed = true;
  const fn = koffi.register(onPrint, koffi.pointer(LibbpfPrintFn));
  libbpf().setPrint(fn);
}

/** Where libbpf's lines go (the agent's logger). */
export function setLibbpfLogSink(s: LibbpfLogSink): void {
  install();
  sink = s;
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
