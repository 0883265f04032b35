/**
 * Runs a fixture program that prints "ready pid P" when it is set up and then
 * waits for its stdin to close. Every started process is stopped by stop().
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { stopChild } from './processes.ts';
import { scaled } from './timeouts.ts';

export interface FixtureProcess {
  child: ChildProcess;
  pid: number;
  /** Lines printed before "ready". */
  lines: string[];
  /** Closes stdin and waits for exit (SIGKILL after 2 s). */
  stop(): Promise<void>;
}

export function startFixtureProcess(
  exe: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<FixtureProcess> {
  const child = spawn(exe, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
  const stop = () => stopChild(child);
  return new Promise((resolve, reject) => {
    const lines: string[] = [];
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    child.once('error', reject);
    const onExit = (code: number | null, signal: string | null) => {
      clearTimeout(timer);
      reject(Object.assign(new Error(`${exe} exited (${code ?? signal}) before ready: ${stderr}`), { exitCode: code }));
    };
    child.once('exit', onExit);
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${exe} did not get ready in time: ${stderr}`));
    }, scaled(opts.timeoutMs ?? 10_000));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const m = /^ready pid (\d+)$/.exec(line);
      if (!m) return void lines.push(line);
      clearTimeout(timer);
      child.off('exit', onExit);
      resolve({ child, pid: Number(m[1]), lines, stop });
    });
  });
}
