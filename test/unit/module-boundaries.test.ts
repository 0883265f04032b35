/**
 * Dependencies go one way: the pure modules (parsers, decoders, correlator, span
 * building, export) import nothing that touches the kernel or /proc, so they run
 * in tests without root. This walks the import graph of every pure module and
 * fails on an import of src/kernel/, of a module not listed as pure, of koffi or
 * of node:fs / node:child_process, and on a "/proc" path in a pure module's code.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import ts from 'typescript';

const ROOT = resolve(import.meta.dirname, '../..');

/** Pure: whole folders (ending in /) and single files. Everything else in src/ is not. */
const PURE = [
  'src/core/',
  'src/records/',
  'src/spans/',
  'src/elf/',
  'src/proto/',
  'src/context/record-attributes.ts',
  'src/context/process-context-format.ts',
  'src/context/tls-access.ts',
  'src/context/nodejs/',
  'src/export/columns.ts',
  'src/export/console-tree.ts',
  'src/export/export-pipeline.ts',
  'src/export/export-request.ts',
  'src/export/grpc-transport.ts',
  'src/export/proto-writer.ts',
  'src/export/span-encoder.ts',
  'src/kernel/programs.ts',
  'src/discovery/cgroup-path.ts',
  'src/discovery/selectors.ts',
  'src/uprobes/uprobe-spec.ts',
  'src/uprobes/call-record.ts',
] as const;

/** Packages that reach the kernel, the file system or other processes. */
const FORBIDDEN_PACKAGES = new Set(['koffi', 'node:fs', 'node:fs/promises', 'fs', 'fs/promises', 'node:child_process', 'child_process']);

/** Pure modules allowed one of the packages above, and why. */
const ALLOWED: Record<string, { pkg: string; why: string }[]> = {
  'src/elf/elf-file.ts': [{ pkg: 'node:fs', why: 'reads the ELF file its caller names (no /proc path of its own)' }],
};

function isPure(file: string): boolean {
  return PURE.some((p) => (p.endsWith('/') ? file.startsWith(p) : file === p));
}

interface Source {
  imports: string[];
  /** String and template literals of the code (comments excluded). */
  strings: string[];
}

function parse(file: string, text: string): Source {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, false, ts.ScriptKind.TS);
  const imports: string[] = [];
  const strings: string[] = [];
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      imports.push(node.moduleSpecifier.text);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword && ts.isStringLiteral(node.arguments[0])) {
      imports.push(node.arguments[0].text);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      imports.push(node.argument.literal.text);
    } else if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node) || ts.isTemplateHead(node) || ts.isTemplateMiddle(node) || ts.isTemplateTail(node)) {
      strings.push(node.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return { imports, strings };
}

/** Why `file` (repo-relative) breaks the rule, given its text; [] when it does not. */
function violations(file: string, text: string): string[] {
  const out: string[] = [];
  const { imports, strings } = parse(file, text);
  for (const spec of imports) {
    if (spec.startsWith('.')) {
      const target = relative(ROOT, resolve(ROOT, dirname(file), spec));
      if (target.startsWith('src/kernel/') && !isPure(target)) out.push(`${file} imports ${target}: the kernel side`);
      else if (target.startsWith('src/') && !isPure(target)) out.push(`${file} imports ${target}, which is not pure`);
    } else if (FORBIDDEN_PACKAGES.has(spec) && !ALLOWED[file]?.some((a) => a.pkg === spec)) {
      out.push(`${file} imports ${spec}`);
    }
  }
  for (const s of strings) if (s.includes('/proc/') || s === '/proc') out.push(`${file} names a /proc path (${JSON.stringify(s)})`);
  return out;
}

function tsFiles(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => join(dir, f));
}

test('pure modules import nothing that touches the kernel or /proc', () => {
  const pure = tsFiles('src').filter(isPure).sort();
  // Every listed entry still names something: a rename must update the list.
  for (const p of PURE) assert.ok(pure.some((f) => (p.endsWith('/') ? f.startsWith(p) : f === p)), `${p} matches no file`);
  const found = pure.flatMap((f) => violations(f, readFileSync(join(ROOT, f), 'utf8')));
  assert.deepEqual(found, []);
});

test('the check catches what it is meant to catch', () => {
  const bad = [
    "import { decodeRecordAttributes } from '../context/process-context.ts';",
    "import { pidKey } from '../kernel/map-keys.ts';",
    "import type { ProcessMemory } from '../context/proc-mem.ts';",
    "import koffi from 'koffi';",
    "import { readFileSync } from 'node:fs';",
    "export { x } from '../kernel/native.ts';",
    "const m = await import('../context/tls-resolver.ts');",
    'const p = `/proc/${pid}/maps`;',
    '// a comment naming /proc/PID/mem is fine',
    "import { eventLine } from './event-json.ts';",
  ].join('\n');
  assert.deepEqual(violations('src/records/x.ts', bad), [
    'src/records/x.ts imports src/context/process-context.ts, which is not pure',
    'src/records/x.ts imports src/kernel/map-keys.ts: the kernel side',
    'src/records/x.ts imports src/context/proc-mem.ts, which is not pure',
    'src/records/x.ts imports koffi',
    'src/records/x.ts imports node:fs',
    'src/records/x.ts imports src/kernel/native.ts: the kernel side',
    'src/records/x.ts imports src/context/tls-resolver.ts, which is not pure',
    'src/records/x.ts names a /proc path ("/proc/")',
  ]);
  assert.deepEqual(violations('src/elf/elf-file.ts', "import { openSync } from 'node:fs';"), []);
  assert.deepEqual(violations('src/elf/symbol-offset.ts', "import { openSync } from 'node:fs';"), ['src/elf/symbol-offset.ts imports node:fs']);
});
