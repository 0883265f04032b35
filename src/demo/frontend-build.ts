/**
 * Compiles demo/frontend.c with gcc at run time (with include/, where the OTEP
 * 4947 record is declared), into a cache directory keyed by a hash of the
 * sources, the flags and the compiler version:
 * $XDG_CACHE_HOME/kspan/demo-<hash>/ when XDG_CACHE_HOME is set, else
 * /tmp/kspan-demo-<hash>/. Concurrent demos each build under a temporary name
 * and rename it into place.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KspanError } from '../core/errors.ts';

const INCLUDE_DIR = fileURLToPath(new URL('../../include/', import.meta.url));
/** The headers frontend.c includes from include/: part of what the cache is keyed by. */
const HEADERS = [join(INCLUDE_DIR, 'otel_thread_ctx.h')];
/** Exporting the TLS symbol in .dynsym is what makes the executable discoverable (OTEP 4947). */
const FLAGS = ['-O2', '-g', '-Wall', '-pthread', `-I${INCLUDE_DIR}`, '-Wl,--export-dynamic-symbol=otel_thread_ctx_v1'];

function compilerVersion(cc: string): string {
  try {
    return execFileSync(cc, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).split('\n')[0];
  } catch (err) {
    throw new KspanError('KSPAN_ERR_TARGET', `the demo compiles its native service with ${cc}, which is not there`, {
      hint: 'install it (apt-get install gcc) or run make setup',
      cause: err,
    });
  }
}

function ownedAndPrivate(path: string): boolean {
  const st = lstatSync(path);
  return !st.isSymbolicLink() && st.uid === process.getuid?.() && (st.mode & 0o022) === 0;
}

export function cacheDir(hash: string, env: NodeJS.ProcessEnv = process.env): string {
  return env.XDG_CACHE_HOME ? join(env.XDG_CACHE_HOME, 'kspan', `demo-${hash}`) : `/tmp/kspan-demo-${hash}`;
}

/** Returns the path of the built executable (building it when the cache has none). */
export function buildFrontend(source: string, cc = 'gcc'): string {
  const hash = createHash('sha256');
  for (const file of [source, ...HEADERS]) hash.update(readFileSync(file));
  const key = hash
    .update(FLAGS.join(' '))
    .update(compilerVersion(cc))
    .digest('hex')
    .slice(0, 12);
  let dir = cacheDir(key);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // We run what we find there as root: only from a directory nobody else could write.
  if (!ownedAndPrivate(dir)) dir = mkdtempSync(join(tmpdir(), 'kspan-demo-'));
  const exe = join(dir, 'frontend');
  if (existsSync(exe) && ownedAndPrivate(exe)) return exe;
  const tmp = join(dir, `frontend.tmp${process.pid}`);
  try {
    execFileSync(cc, [...FLAGS, source, '-o', tmp], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    renameSync(tmp, exe);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new KspanError('KSPAN_ERR_TARGET', `could not compile ${source}: ${(err as { stderr?: string }).stderr ?? String(err)}`, {
      cause: err,
    });
  }
  return exe;
}
