/**
 * A tracing command's configuration with its policy file: the command line
 * parsed first for --config, the file read and checked (src/policy/policy-file.ts),
 * then every setting resolved through the layers (src/core/config.ts). The
 * same steps run again on every reload, so a reloaded file is checked exactly
 * as at start; reloadPolicy(config) gives that function for a loaded config.
 */
import { type Command, type CommandConfig, loadConfig, parseCommandLine } from '../core/config.ts';
import { KspanError } from '../core/errors.ts';
import { createRequire } from 'node:module';
import type * as PolicyFile from './policy-file.ts';

// The YAML parser and the schema library load only when a policy file is given
// (they are a large part of the agent's code memory otherwise; BENCHMARKS.md).
// require() names a file, which tsc does not rewrite as it does import
// specifiers: this module's own extension is the sibling's (.js in dist/).
const requireHere = createRequire(import.meta.url);
const POLICY_FILE_MODULE = `./policy-file${import.meta.url.endsWith('.js') ? '.js' : '.ts'}`;
const readPolicyFile = (path: string) => (requireHere(POLICY_FILE_MODULE) as typeof PolicyFile).readPolicyFile(path);

const reloaders = new WeakMap<object, () => CommandConfig<Command>>();

/** Loads `command`'s configuration from `argv`, the environment and the --config file. */
export function loadCommandConfig<C extends Command>(command: C, argv: readonly string[]): CommandConfig<C> {
  const path = parseCommandLine(command, argv).config;
  if (typeof path !== 'string') return loadConfig(command, { argv });
  const file = readPolicyFile(path);
  let config: CommandConfig<C>;
  try {
    config = loadConfig(command, { argv, file });
  } catch (err) {
    // A value of the file that fails its setting's check: a policy error, like the schema's.
    if (err instanceof KspanError && err.code === 'KSPAN_ERR_USAGE' && err.message.startsWith(`${path}`)) {
      throw new KspanError('KSPAN_ERR_POLICY', err.message.slice(0, err.hint ? err.message.length - err.hint.length - 3 : undefined), { hint: err.hint });
    }
    throw err;
  }
  reloaders.set(config, () => loadCommandConfig(command, argv) as unknown as CommandConfig<Command>);
  return config;
}

/** Reads the policy again, as at start (throws KSPAN_ERR_POLICY); undefined when the config has no file. */
export function reloadPolicy<C extends Command>(config: CommandConfig<C>): (() => CommandConfig<C>) | undefined {
  return reloaders.get(config) as (() => CommandConfig<C>) | undefined;
}
