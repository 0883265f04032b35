/**
 * The command line's words to the user: exit statuses, and the help texts,
 * generated from the configuration's tables (src/core/config.ts) so they cannot
 * drift from what is parsed. Light: `kspan --help` loads nothing else.
 */
import { COMMANDS, commandSettings, LOG_LEVELS, type Command } from '../core/config.ts';

/** Exit statuses (README "Commands", docs/ERRORS.md). */
export const EXIT = {
  ok: 0,
  /** A KspanError other than a usage error, or a bug. */
  error: 1,
  usage: 2,
  /** The command stopped normally but records or spans were lost (counted in the last log line). */
  dataLost: 3,
} as const;

const WIDTH = 100;
const COLUMN = 30;

function wrap(text: string, indent: number): string {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line && indent + line.length + 1 + word.length > WIDTH) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines.join(`\n${' '.repeat(indent)}`);
}

function row(left: string, right: string): string {
  const pad = left.length + 2 > COLUMN ? `\n${' '.repeat(COLUMN)}` : ' '.repeat(COLUMN - left.length);
  return `${left}${pad}${wrap(right, COLUMN)}`;
}

/** `kspan COMMAND --help`: usage, every option with its default and variables, exit statuses. */
export function helpText(command: Command): string {
  const c = COMMANDS[command];
  const out = [`usage: ${c.usage}`, '', wrap(`${c.summary[0].toUpperCase()}${c.summary.slice(1)}.`, 0), ''];
  const settings = commandSettings(command);
  const positional = settings.filter((s) => s.spec.positional);
  if (positional.length) {
    out.push('arguments:');
    for (const { spec } of positional) out.push(row(`  ${spec.arg}`, spec.help));
    out.push('');
  }
  out.push('options:');
  for (const { key, spec, required } of settings) {
    if (!spec.flag) continue;
    const left = `  ${spec.short ? `-${spec.short}, ` : ''}--${spec.flag}${spec.arg ? ` ${spec.arg}` : ''}`;
    const notes = [spec.help];
    if (required) notes.push('(required)');
    else if (spec.defaultText !== undefined || (spec.arg && spec.default !== undefined)) notes.push(`(default: ${spec.defaultText ?? String(spec.default)})`);
    if (key === 'logLevel') notes.push(`— ${LOG_LEVELS.join(', ')}`);
    if (spec.env?.length) notes.push(`[env: ${spec.env.join(', then ')}]`);
    out.push(row(left, notes.join(' ')));
  }
  out.push(row('  -h, --help', 'print this help'));
  if (settings.some((s) => s.spec.env?.length)) out.push('', wrap('A flag overrides the environment, which overrides the default.', 0));
  out.push('', wrap(`exit status: ${c.exit}`, 2));
  return out.join('\n');
}

/** `kspan --help`: the commands. */
export function usageText(): string {
  const out = ['usage: kspan <command> [options]', '', 'commands:'];
  for (const [name, c] of Object.entries(COMMANDS)) out.push(row(`  ${name}`, c.summary));
  out.push(
    '',
    row('  kspan <command> --help', "the command's options, their defaults and environment variables"),
    row('  kspan --version', "kspan's version"),
    '',
    'README.md documents every option and the output formats; docs/ERRORS.md the error codes.',
  );
  return out.join('\n');
}
