/**
 * A scratch Node.js app directory, as `npm install @opentelemetry/... /path/to/kspan`
 * leaves it: node_modules/@opentelemetry linked to this checkout's packages and
 * node_modules/kspan linked to the checkout, plus the app's own files.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from './build-fixture.ts';

export interface NodeApp {
  dir: string;
  cleanup(): void;
}

export function scratchNodeApp(files: Record<string, string>): NodeApp {
  const dir = mkdtempSync(join(tmpdir(), 'kspan-node-app-'));
  mkdirSync(join(dir, 'node_modules'));
  symlinkSync(join(REPO_ROOT, 'node_modules/@opentelemetry'), join(dir, 'node_modules/@opentelemetry'));
  symlinkSync(REPO_ROOT, join(dir, 'node_modules/kspan'));
  writeFileSync(join(dir, 'package.json'), '{"name":"app","private":true}\n');
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
