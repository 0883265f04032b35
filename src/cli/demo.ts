/** `kspan demo` (being built): exits with a usage message until it lands. */
import { KspanError } from '../errors.ts';
import type { Logger } from '../logger.ts';

export async function demoCommand(_args: string[], _log: Logger): Promise<number> {
  throw new KspanError('KSPAN_ERR_USAGE', 'kspan demo is not built yet');
}
