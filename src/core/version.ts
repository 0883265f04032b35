/**
 * kspan's version, from package.json: what `kspan --version` prints and the
 * instrumentation scope every kernel span carries.
 */
import pkg from '../../package.json' with { type: 'json' };

export const KSPAN_VERSION: string = pkg.version;
