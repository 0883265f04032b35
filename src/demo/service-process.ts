/**
 * A process the demo started (a service or the load driver): its stdout read as
 * JSON lines, the head and tail of its stderr kept for error messages. Every one is
 * registered so that the demo can stop them all, asynchronously on a normal end
 * and synchronously from an 'exit' handler as a last resort. Where setpriv is
 * there, children also get a parent-death signal, so not even a SIGKILLed demo
 * leaves them running.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { KspanError } from '../core/errors.ts';

export type JsonLine = Record<string, unknown>;

const running = new Set<ServiceProcess>();

let setprivPath: string | null | undefined;
function setpriv(): string | null {
  if (setprivPath === undefined) {
    try {
      setprivPath = execFileSync('sh', ['-c', 'command -v setpriv'], { encoding: 'utf8' }).trim() || null;
    } catch {
      setprivPath = null;
    }
  }
  return setprivPath;
}

export class ServiceProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly stderrHead: string[] = [];
  readonly stderrTail: string[] = [];
  #stderrDropped = 0;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  readonly #waiters = new Set<(l: JsonLine) => void>();

  /** `prefix`: e.g. `ip netns exec NS`; `onLine` gets every JSON object printed on stdout. */
  constructor(name: string, prefix: string[], argv: string[], onLine: (l: JsonLine) => void, env?: NodeJS.ProcessEnv) {
    this.name = name;
    const sp = setpriv();
    const cmd = [...prefix, ...(sp ? [sp, '--pdeathsig', 'KILL', '--'] : []), ...argv];
    this.child = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env, detached: true });
    running.add(this);
    this.exited = new Promise((resolve) => {
      const ended = (code: number | null, signal: NodeJS.Signals | null) => {
        if (this.#exit) return;
        this.#exit = { code, signal };
        running.delete(this);
        resolve(this.#exit);
      };
      this.child.on('exit', ended);
      // e.g. ENOENT: there is no 'exit' then
      this.child.on('error', (err) => {
        this.stderrHead.push(String(err));
        ended(-1, null);
      });
    });
    createInterface({ input: this.child.stdout! }).on('line', (l) => {
      if (!l.startsWith('{')) return;
      let obj: JsonLine;
      try {
        obj = JSON.parse(l) as JsonLine;
      } catch {
        return;
      }
      onLine(obj);
      for (const w of [...this.#waiters]) w(obj);
    });
    createInterface({ input: this.child.stderr! }).on('line', (l) => {
      // The head says what went wrong (a stack's first lines), the tail how it ended.
      if (this.stderrHead.length < 8) this.stderrHead.push(l);
      else {
        this.stderrTail.push(l);
        this.#stderrDropped += this.stderrTail.length > 8 ? 1 : 0;
        if (this.stderrTail.length > 8) this.stderrTail.shift();
      }
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get alive(): boolean {
    return this.#exit === null && this.child.pid !== undefined;
  }

  /** The first JSON line that matches, or an error when the process exits or time runs out first. */
  waitFor(match: (l: JsonLine) => boolean, timeoutMs: number): Promise<JsonLine> {
    return new Promise((resolve, reject) => {
      const fail = (why: string) => {
        cleanup();
        const lines = [...this.stderrHead, ...(this.#stderrDropped ? ['…'] : []), ...this.stderrTail];
        const tail = lines.length ? `:\n  ${lines.join('\n  ')}` : '';
        reject(new KspanError('KSPAN_ERR_TARGET', `demo ${this.name} ${why}${tail}`));
      };
      const timer = setTimeout(() => fail(`did not start within ${timeoutMs / 1000} s`), timeoutMs);
      const onLine = (l: JsonLine) => {
        if (!match(l)) return;
        cleanup();
        resolve(l);
      };
      const onExit = ({ code, signal }: { code: number | null; signal: NodeJS.Signals | null }) => {
        // stderr may still be draining: give it a moment for the message.
        setTimeout(() => fail(`exited (${signal ?? `code ${code}`})`), 50);
      };
      const cleanup = () => {
        clearTimeout(timer);
        this.#waiters.delete(onLine);
        done = true;
      };
      let done = false;
      if (this.#exit) return fail(`exited (${this.#exit.signal ?? `code ${this.#exit.code}`})`);
      this.#waiters.add(onLine);
      void this.exited.then((e) => {
        if (!done) onExit(e);
      });
    });
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.alive) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Last resort, from a process 'exit' handler: SIGKILL whatever is still running. */
export function killAllSync(): void {
  for (const p of running) {
    try {
      if (p.child.pid) process.kill(p.child.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
}
