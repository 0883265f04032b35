/**
 * kspan's version, read from package.json once: what `kspan --version` prints and
 * the instrumentation scope every kernel span carries.
 */
import { readFileSync } from 'node:fs';

export const KSPAN_VERSION: string = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;
