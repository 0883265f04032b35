/**
 * Reloads the policy file on SIGHUP, or when the file changes (the directory
 * is watched, so an editor's write-then-rename is seen too; a change event
 * whose text is the same as the last one read is ignored). A file that fails
 * its checks leaves the policy in force, logged with the line and key that are
 * wrong, and counted (`invalid`).
 */
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import type { Logger } from '../core/logger.ts';

export interface PolicyWatcherOptions<C> {
  path: string;
  /** Reads and checks the file as at start; throws KSPAN_ERR_POLICY. */
  reload: () => C;
  /** Puts the checked policy in force. */
  apply: (config: C, why: string) => void;
  log: Pick<Logger, 'info' | 'error'>;
  /** A burst of change events becomes one reload after this long (default 100 ms). */
  debounceMs?: number;
}

export interface PolicyWatcherStats {
  applied: number;
  invalid: number;
}

export class PolicyWatcher<C> {
  readonly stats: PolicyWatcherStats = { applied: 0, invalid: 0 };
  readonly #opts: PolicyWatcherOptions<C>;
  #watcher: FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;
  #lastText: string | undefined;
  readonly #onHup = () => this.reload('SIGHUP');

  constructor(opts: PolicyWatcherOptions<C>) {
    this.#opts = opts;
    this.#lastText = this.#read();
  }

  #read(): string | undefined {
    try {
      return readFileSync(this.#opts.path, 'utf8');
    } catch {
      return undefined;
    }
  }

  start(): void {
    process.on('SIGHUP', this.#onHup);
    const name = basename(this.#opts.path);
    this.#watcher = watch(dirname(this.#opts.path), { persistent: false }, (_event, file) => {
      if (file !== null && file !== name) return;
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => {
        const text = this.#read();
        if (text === undefined || text === this.#lastText) return;
        this.reload('file changed');
      }, this.#opts.debounceMs ?? 100);
    });
  }

  /** Reads the file now and puts it in force, or keeps the policy in force when it is invalid. */
  reload(why: string): boolean {
    this.#lastText = this.#read();
    let config: C;
    try {
      config = this.#opts.reload();
    } catch (err) {
      this.stats.invalid++;
      this.#opts.log.error({ err, why, file: this.#opts.path }, 'policy file invalid; the policy in force stays');
      return false;
    }
    this.#opts.apply(config, why);
    this.stats.applied++;
    return true;
  }

  close(): void {
    process.off('SIGHUP', this.#onHup);
    clearTimeout(this.#timer);
    this.#watcher?.close();
  }
}
