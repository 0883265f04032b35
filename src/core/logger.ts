/** The agent's structured log: pino, to stderr (stdout carries data). */
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(level = process.env.KSPAN_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name: 'kspan', level }, pino.destination({ fd: 2, sync: true }));
}
