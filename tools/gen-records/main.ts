/**
 * Writes src/records/abi.generated.ts from the BTF of bpf/.output/kspan.bpf.o.
 * Usage: node tools/gen-records/main.ts [--check]   (--check: exit 1 when stale)
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { KspanError } from '../../src/core/errors.ts';
import { generatedRecordsSource } from './records-source.ts';

const target = fileURLToPath(new URL('../../src/records/abi.generated.ts', import.meta.url));
const objectPath = fileURLToPath(new URL('../../bpf/.output/kspan.bpf.o', import.meta.url));
let fresh: string;
try {
  fresh = generatedRecordsSource(objectPath);
} catch (err) {
  if (!(err instanceof KspanError)) throw err;
  console.error(`gen-records: ${err.code}: ${err.message}`);
  process.exit(1);
}
if (process.argv.includes('--check')) {
  const current = readFileSync(target, 'utf8');
  if (current !== fresh) {
    console.error('src/records/abi.generated.ts is stale: run `npm run gen` and commit it');
    process.exit(1);
  }
} else {
  writeFileSync(target, fresh);
  console.log(`wrote ${target}`);
}
