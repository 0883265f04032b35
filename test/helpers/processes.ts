/**
 * Child processes for tests: spawned with pipes, their stdout read line by line,
 * and every one killed at the end of the test (track them with a ProcessGroup).
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { scaled } from './timeouts.ts';

export interface Proc {
  child: ChildProcess;
  pid: number;
  lines: string[];
  stderr: string[];
  /** Resolves with the first stdout line matching `re` (already seen or future). */
  waitLine(re: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  /** Resolves with the first stderr line matching `re`. */
  waitStderr(re: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  send(line: string): void;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

type Ended = { code: number | null; signal: NodeJS.Signals | null };

/** Waits for a line matching `re`; fails at the timeout, or as soon as the process has ended without one. */
function waiter(buf: string[], onLine: Set<(l: string) => void>, what: string, closed: Promise<Ended>) {
  return (re: RegExp, timeoutMs = 10_000) =>
    new Promise<RegExpExecArray>((resolve, reject) => {
      for (const l of buf) {
        const m = re.exec(l);
        if (m) return resolve(m);
      }
      const fail = (why: string) => {
        clearTimeout(t);
        onLine.delete(check);
        reject(new Error(`${why} waiting for ${re} on ${what}; saw:\n${buf.slice(-20).join('\n')}`));
      };
      const t = setTimeout(() => fail('timed out'), scaled(timeoutMs));
      const check = (l: string) => {
        const m = re.exec(l);
        if (m) {
          clearTimeout(t);
          onLine.delete(check);
          resolve(m);
        }
      };
      onLine.add(check);
      // Its output is complete once the streams closed: a line that never came will not.
      void closed.then(({ code, signal }) => {
        if (onLine.has(check)) fail(`the process ended (${signal ?? `exit ${code}`})`);
      });
    });
}

/** Closes the child's stdin (fixtures exit on EOF), SIGKILLs it after 2 s, resolves once it is gone. */
export function stopChild(child: ChildProcess): Promise<void> {
  return new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.stdin?.end();
  });
}

export class ProcessGroup {
  readonly #procs: Proc[] = [];

  start(cmd: string, args: string[], opts: SpawnOptions = {}): Proc {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], ...opts });
    if (!child.pid) throw new Error(`could not start ${cmd}`);
    const lines: string[] = [];
    const stderr: string[] = [];
    const outWaiters = new Set<(l: string) => void>();
    const errWaiters = new Set<(l: string) => void>();
    createInterface({ input: child.stdout! }).on('line', (l) => {
      lines.push(l);
      for (const w of [...outWaiters]) w(l);
    });
    createInterface({ input: child.stderr! }).on('line', (l) => {
      stderr.push(l);
      for (const w of [...errWaiters]) w(l);
    });
    const exited = new Promise<Ended>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    const closed = new Promise<Ended>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
    const p: Proc = {
      child,
      pid: child.pid,
      lines,
      stderr,
      waitLine: waiter(lines, outWaiters, `${cmd} stdout`, closed),
      waitStderr: waiter(stderr, errWaiters, `${cmd} stderr`, closed),
      send: (l) => child.stdin!.write(`${l}\n`),
      exited,
    };
    this.#procs.push(p);
    return p;
  }

  /** SIGKILLs whatever is still running and waits for it. */
  async killAll(): Promise<void> {
    await Promise.all(
      this.#procs.map(async (p) => {
        if (p.child.exitCode === null && p.child.signalCode === null) {
          p.child.kill('SIGKILL');
          await p.exited;
        }
      }),
    );
  }
}

/** The fdinfo text of each open file descriptor of a process (none once it is gone). */
export function* fdinfoTexts(pid: number | 'self'): Generator<string> {
  const dir = `/proc/${pid}/fdinfo`;
  let fds: string[] = [];
  try {
    fds = readdirSync(dir);
  } catch {
    return;
  }
  for (const fd of fds) {
    try {
      yield readFileSync(join(dir, fd), 'utf8');
    } catch {
      // closed meanwhile
    }
  }
}
