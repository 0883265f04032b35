/**
 * What the commands share: exit statuses, help texts (generated from the
 * configuration's tables, src/core/config.ts), the stop signal, and the tracing
 * session with its logging.
 */
import { dirname } from 'node:path';
import { getSystemErrorMessage } from 'node:util';
import { COMMANDS, commandSettings, loadSettings, LOG_LEVELS, type Command, type RunConfig } from '../core/config.ts';
import type { Logger } from '../core/logger.ts';
import { setLibbpfLogSink } from '../kernel/libbpf-log.ts';
import type { TracerCounters } from '../kernel/tcp-tracer.ts';
import { TracingSession, type TracingSessionOptions } from '../kernel/tracing-session.ts';
import { warnFeatureOff } from './kernel-warnings.ts';

/** Exit statuses (README "Requirements", docs/ERRORS.md). */
export const EXIT = {
  ok: 0,
  /** A KspanError other than a usage error, or a bug. */
  error: 1,
  usage: 2,
  /** The command stopped normally but records or spans were lost (counted in the last log line). */
  dataLost: 3,
} as const;

const WIDTH = 100;
const COLUMN = 30;

function wrap(text: string, indent: number): string {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line && indent + line.length + 1 + word.length > WIDTH) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines.join(`\n${' '.repeat(indent)}`);
}

function row(left: string, right: string): string {
  const pad = left.length + 2 > COLUMN ? `\n${' '.repeat(COLUMN)}` : ' '.repeat(COLUMN - left.length);
  return `${left}${pad}${wrap(right, COLUMN)}`;
}

/** `kspan COMMAND --help`: usage, every option with its default and variables, exit statuses. */
export function helpText(command: Command): string {
  const c = COMMANDS[command];
  const out = [`usage: ${c.usage}`, '', wrap(`${c.summary[0].toUpperCase()}${c.summary.slice(1)}.`, 0), ''];
  const settings = commandSettings(command);
  const positional = settings.filter((s) => s.spec.positional);
  if (positional.length) {
    out.push('arguments:');
    for (const { spec } of positional) out.push(row(`  ${spec.arg}`, spec.help));
    out.push('');
  }
  out.push('options:');
  for (const { key, spec, required } of settings) {
    if (!spec.flag) continue;
    const left = `  ${spec.short ? `-${spec.short}, ` : ''}--${spec.flag}${spec.arg ? ` ${spec.arg}` : ''}`;
    const notes = [spec.help];
    if (required) notes.push('(required)');
    else if (spec.arg && !spec.repeat) notes.push(`(default: ${spec.defaultText ?? String(spec.default)})`);
    if (key === 'logLevel') notes.push(`— ${LOG_LEVELS.join(', ')}`);
    if (spec.env?.length) notes.push(`[env: ${spec.env.join(', then ')}]`);
    out.push(row(left, notes.join(' ')));
  }
  out.push(row('  -h, --help', 'print this help'));
  out.push('', wrap('A flag overrides the environment, which overrides the default.', 0));
  out.push('', wrap(`exit status: ${c.exit}`, 2));
  return out.join('\n');
}

/** `kspan --help`: the commands. */
export function usageText(): string {
  const out = ['usage: kspan <command> [options]', '', 'commands:'];
  for (const [name, c] of Object.entries(COMMANDS)) out.push(row(`  ${name}`, c.summary));
  out.push(
    '',
    row('  kspan <command> --help', "the command's options, their defaults and environment variables"),
    row('  kspan --version', "kspan's version"),
    '',
    'README.md documents every option and the output formats; docs/ERRORS.md the error codes.',
  );
  return out.join('\n');
}

/** setTimeout's longest delay (2^31 − 1 ms, 24.8 days); a longer one fires at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export interface Timers<H> {
  setTimeout(fn: () => void, ms: number): H;
  clearTimeout(handle: H): void;
}

/** Calls `fn` once after `ms`, however long: delays past setTimeout's limit are chained. Returns a cancel. */
export function after<H = NodeJS.Timeout>(
  ms: number,
  fn: () => void,
  timers: Timers<H> = { setTimeout, clearTimeout } as unknown as Timers<H>,
): () => void {
  let handle: H;
  const arm = (left: number) => {
    const step = Math.min(left, MAX_TIMER_MS);
    handle = timers.setTimeout(() => (left > step ? arm(left - step) : fn()), step);
  };
  arm(ms);
  return () => timers.clearTimeout(handle);
}

export type StopSignal = Promise<string> & {
  /** Stops now, for `why` (every target exited, the output failed). */
  end(why: string): void;
  /** Removes the handlers and the timer (the command failed before it started). */
  cancel(): void;
};

/** Resolves after `seconds`, on SIGINT/SIGTERM, or on end(), whichever comes first, with the reason. */
export function waitForStop(seconds: number | undefined): StopSignal {
  let cancelTimer = () => {};
  let finish: (why: string) => void = () => {};
  const onInt = () => finish('SIGINT');
  const onTerm = () => finish('SIGTERM');
  const cleanup = () => {
    cancelTimer();
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  };
  const promise = new Promise<string>((resolve) => {
    finish = (why) => {
      cleanup();
      finish = () => {};
      resolve(why);
    };
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    if (seconds !== undefined) cancelTimer = after(seconds * 1000, () => finish('duration'));
  });
  return Object.assign(promise, { end: (why: string) => finish(why), cancel: cleanup });
}

export type TracingConfig = Pick<RunConfig, 'pids' | 'ioHooks' | 'maxSockets' | 'waitForTargets'>;

export type SessionHooks = Pick<TracingSessionOptions, 'onRecord' | 'onTarget' | 'onTargetExit' | 'onTargetsGone'>;

/**
 * The tracing session of run, events and record: the targets checked first
 * (KSPAN_ERR_TARGET), then the programs loaded and attached; libbpf's messages,
 * features the kernel cannot give, refused records, unreadable contexts and
 * exited targets logged.
 */
export function openSession(config: TracingConfig, log: Logger, hooks: SessionHooks): TracingSession {
  setLibbpfLogSink((level, line) => log[level === 'warn' ? 'warn' : 'debug']({ libbpf: line }));
  return TracingSession.open({
    pids: config.pids,
    ioPath: config.ioHooks === 'auto' ? undefined : config.ioHooks,
    maxSockets: config.maxSockets,
    waitForTargets: config.waitForTargets,
    onRecord: hooks.onRecord,
    onTarget: hooks.onTarget,
    onDecodeError: (err) => log.error({ err }, 'record dropped: decode failed'),
    onTargetError: (pid, err) => log.warn({ target_pid: pid, err }, "cannot read the target's trace context; tracing it without"),
    onTargetExit: (pid) => {
      log.warn({ target_pid: pid }, 'target exited; no longer traced');
      hooks.onTargetExit?.(pid);
    },
    onTargetsGone: hooks.onTargetsGone,
    onFeatureOff: warnFeatureOff(log),
  });
}

/** Records the kernel side lost: ring buffer full, socket table full, refused by the decoder. */
export function recordsLost(c: TracerCounters): number {
  return c.KSPAN_C_RINGBUF_FULL + c.KSPAN_C_SOCK_TABLE_FULL + c.decode_errors;
}

/** Why a command stopped, as its "stopping" line says. */
export const TARGETS_GONE = 'every target exited';

/** --duration's check, for callers that parse their own arguments (kspan demo). */
export function parseDuration(v: string | undefined): number | undefined {
  return v === undefined ? undefined : loadSettings(['duration'], { flags: { duration: v } }).duration;
}

/** A file system error as words: `no space left on device (ENOSPC)`. */
export function describeFsError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (typeof e?.errno === 'number' && e.code) return `${getSystemErrorMessage(e.errno)} (${e.code})`;
  return err instanceof Error ? err.message : String(err);
}
