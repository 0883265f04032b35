/**
 * bin/kspan's entry point: turns on Node's on-disk compile cache before any of
 * the CLI's modules is read, then runs the CLI (main.ts). With the cache, a start
 * skips stripping the types from and compiling kspan's ~200 modules again: half
 * the agent's start-up CPU on a host, seconds on a small or emulated VM.
 *
 * The cache lives next to kspan's own Node copy (.node/compile-cache, written by
 * whoever runs kspan, usually root), never in a shared /tmp: a root process must
 * not run bytecode another user could have put there. KSPAN_COMPILE_CACHE=DIR
 * puts it elsewhere; NODE_DISABLE_COMPILE_CACHE=1 turns it off. A directory that
 * cannot be written only costs the speed-up.
 */
import { enableCompileCache } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(dirname(fileURLToPath(import.meta.url))));
enableCompileCache?.(process.env.KSPAN_COMPILE_CACHE || join(root, '.node', 'compile-cache'));
await import('./main.ts');
