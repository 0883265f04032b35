// Which copy of kspan/publisher's modules a service loads: the compiled one in
// dist/publisher/ (scripts/build-js.sh, run by set-up) while it is current, else
// the .ts sources beside this file. Loading the sources makes Node load its type
// stripper, a WebAssembly module with its own memory, into the service for its
// whole life (about 15 MB of RSS). The rule is bin/kspan's: dist/ is current while
// no file under src/ is newer than dist/.built. KSPAN_FROM_SOURCE=1 loads the
// sources always. Plain JavaScript, synchronous: ./index.mjs is require()-able.
import { readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const SRC = fileURLToPath(new URL('../', import.meta.url));
const DIST = fileURLToPath(new URL('../../dist/', import.meta.url));

let compiled;

function distIsCurrent() {
  if (process.env.KSPAN_FROM_SOURCE) return false;
  let built;
  try {
    built = statSync(`${DIST}.built`).mtimeMs;
  } catch {
    return false;
  }
  for (const e of readdirSync(SRC, { recursive: true, withFileTypes: true })) {
    if (statSync(`${e.parentPath}/${e.name}`).mtimeMs > built) return false;
  }
  return statSync(SRC).mtimeMs <= built;
}

/** The file to load for the publisher's module `name` ('index', 'register'). */
export function publisherModule(name) {
  compiled ??= distIsCurrent();
  return compiled ? `${DIST}publisher/${name}.js` : `${SRC}publisher/${name}.ts`;
}
