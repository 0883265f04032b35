/**
 * The agent's structured log: pino, JSON lines to stderr (stdout carries data).
 * pino's own `pid` is the agent's; fields about a traced process are named
 * `target_pid` / `target_pids`, so a line never carries two pids.
 */
import pino, { type Logger } from 'pino';
import type { LogLevel } from './config.ts';

export type { Logger };

/** `level`: checked by the configuration (src/core/config.ts: --log-level, KSPAN_LOG_LEVEL). */
export function createLogger(level: LogLevel): Logger {
  return pino({ name: 'kspan', level }, pino.destination({ fd: 2, sync: true }));
}
