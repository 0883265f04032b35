/**
 * Builds C fixtures at test time into test/.build/, cached by a hash of the
 * sources, the commands and the compiler version. Safe when several test
 * processes build the same fixture at once: each builds in its own temporary
 * directory and renames it into place; the loser of the race throws its copy
 * away and uses the winner's.
 *
 *   const dir = buildFixture({
 *     name: 'tls',
 *     sources: ['test/fixtures/tls/writer.c', 'test/fixtures/tls/main.c'],
 *     steps: [
 *       { out: 'libw.so', cmd: ['gcc', '-shared', '-fPIC', '{writer.c}', '-o', 'libw.so'] },
 *       { out: 'main', cmd: ['gcc', '{main.c}', '-L.', '-lw', '-Wl,-rpath,$ORIGIN', '-o', 'main'] },
 *     ],
 *   });
 *   // dir + '/main'
 *
 * In a command, `{file.c}` stands for the absolute path of the source whose base
 * name is file.c; commands run with the output directory as cwd.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BUILD_ROOT = join(REPO_ROOT, 'test', '.build');
/** The OTEP 4947 record (include/otel_thread_ctx.h), shared with the demo: a source to hash, and the -I to find it. */
export const THREAD_CTX_HEADER = 'include/otel_thread_ctx.h';
export const INCLUDE_FLAG = `-I${join(REPO_ROOT, 'include')}`;

export interface BuildStep {
  /** The file this step produces (relative to the output directory). */
  out: string;
  /** argv: the first element is the program (gcc, musl-gcc, clang, ...). */
  cmd: string[];
  /** Extra environment for the step. */
  env?: Record<string, string>;
}

export interface FixtureSpec {
  /** Directory name prefix under test/.build/. */
  name: string;
  /** Source files (absolute or relative to the repo root); all are hashed. */
  sources: string[];
  steps: BuildStep[];
}

const toolVersions = new Map<string, string>();
function toolVersion(tool: string): string {
  let v = toolVersions.get(tool);
  if (v === undefined) {
    try {
      v = execFileSync(tool, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).split('\n')[0];
    } catch {
      v = 'unknown';
    }
    toolVersions.set(tool, v);
  }
  return v;
}

/** Is the program on PATH? (musl-gcc builds the musl fixtures.) */
export function hasTool(tool: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${JSON.stringify(tool)}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Tests must run in CI: KSPAN_REQUIRE_BPF=1 turns every would-be skip into a failure. */
export const REQUIRE_ALL = process.env.KSPAN_REQUIRE_BPF === '1';

/**
 * Options for a test that needs an optional tool (musl-gcc): a skip where it
 * is missing locally, a thrown error under KSPAN_REQUIRE_BPF=1, where
 * scripts/setup.sh installed it and a missing tool means a broken set-up.
 */
export function toolOptions(tool: string, pkg: string): { skip?: string } {
  if (hasTool(tool)) return {};
  if (REQUIRE_ALL) throw new Error(`${tool} is required here (KSPAN_REQUIRE_BPF=1): install ${pkg} (scripts/setup.sh does)`);
  return { skip: `${tool} not installed (apt-get install ${pkg})` };
}

/** Builds (or reuses) the fixture and returns its output directory. */
export function buildFixture(spec: FixtureSpec): string {
  const sources = spec.sources.map((s) => resolve(REPO_ROOT, s));
  const byBase = new Map(sources.map((s) => [basename(s), s]));
  const hash = createHash('sha256');
  for (const src of sources) hash.update(src).update('\0').update(readFileSync(src)).update('\0');
  for (const step of spec.steps) {
    hash.update(JSON.stringify(step)).update(toolVersion(step.cmd[0])).update('\0');
  }
  const dir = join(BUILD_ROOT, `${spec.name}-${hash.digest('hex').slice(0, 16)}`);
  if (existsSync(join(dir, '.complete'))) return dir;

  mkdirSync(BUILD_ROOT, { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  mkdirSync(tmp);
  try {
    for (const step of spec.steps) {
      const argv = step.cmd.map((a) =>
        a.replace(/\{([^{}]+)\}/g, (whole, base: string) => {
          const path = byBase.get(base);
          if (!path) throw new Error(`fixture ${spec.name}: ${whole} names no source`);
          return path;
        }),
      );
      try {
        execFileSync(argv[0], argv.slice(1), {
          cwd: tmp,
          env: { ...process.env, ...step.env },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
      } catch (err) {
        const e = err as { stderr?: Buffer };
        throw new Error(`fixture ${spec.name}: ${argv.join(' ')} failed:\n${e.stderr?.toString() ?? err}`);
      }
      if (!existsSync(join(tmp, step.out))) throw new Error(`fixture ${spec.name}: ${step.out} was not produced`);
    }
    writeFileSync(join(tmp, '.complete'), '');
    try {
      renameSync(tmp, dir);
    } catch (err) {
      // Another process won the race (ENOTEMPTY/EEXIST): use its build.
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== 'ENOTEMPTY' && code !== 'EEXIST') || !existsSync(join(dir, '.complete'))) throw err;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return dir;
}
