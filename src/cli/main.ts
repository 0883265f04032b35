/**
 * kspan command line: run, events, record, replay, doctor, demo. Each command's
 * arguments and environment become one checked configuration
 * (src/core/config.ts) before anything touches the kernel. Every failure the
 * user can act on prints `kspan: KSPAN_ERR_…: message (hint)`; exit statuses
 * are in options.ts EXIT (usage 2, other errors 1, data lost 3).
 */
import { COMMANDS, loadConfig, wantsHelp, type Command } from '../core/config.ts';
import { loadCommandConfig } from '../policy/policy-config.ts';
import { KspanError, type ErrorCode } from '../core/errors.ts';
import { createLogger } from '../core/logger.ts';
import { KSPAN_VERSION } from '../core/version.ts';
import { EXIT, helpText, usageText } from './usage.ts';

// bin/kspan's malloc settings are for this process only (they are read at its start).
for (const name of (process.env.KSPAN_LAUNCHER_ENV ?? '').split(' ')) if (name) delete process.env[name];
delete process.env.KSPAN_LAUNCHER_ENV;

const isCommand = (s: string | undefined): s is Command => !!s && Object.hasOwn(COMMANDS, s);

/** What to do, for errors raised without a hint of their own (docs/ERRORS.md). */
const DEFAULT_HINTS: Partial<Record<ErrorCode, string>> = {
  KSPAN_ERR_USAGE: 'kspan --help lists the commands',
  KSPAN_ERR_PRIVILEGE: 'run as root, or grant CAP_BPF and CAP_PERFMON',
  KSPAN_ERR_NO_BTF: 'use a kernel built with CONFIG_DEBUG_INFO_BTF=y',
  KSPAN_ERR_TRACEFS: 'mount -t tracefs tracefs /sys/kernel/tracing',
  KSPAN_ERR_LIBBPF: 'install libbpf 1.x (apt-get install libbpf1)',
  KSPAN_ERR_BPF_OBJECT: 'build it: make -C bpf',
  KSPAN_ERR_VERIFIER: 'a kspan bug or an unsupported kernel: report it with the verifier log',
  KSPAN_ERR_BPF_INTERRUPTED: 'try again',
  KSPAN_ERR_ATTACH: 'kspan doctor says which hooks this kernel has',
  KSPAN_ERR_MAP: 'the cause below carries the errno',
  KSPAN_ERR_RINGBUF: 'the cause below carries the errno',
  KSPAN_ERR_TARGET: 'check the pid; CAP_SYS_PTRACE for other users\' processes',
  KSPAN_ERR_RECORD_FILE: 'give a file written by kspan record -o FILE',
  KSPAN_ERR_EXPORT: 'check --otlp-endpoint and the OTEL_EXPORTER_OTLP_* variables',
  KSPAN_ERR_POLICY: 'fix the policy file at the line named',
};

/** `kspan: CODE: message (hint)`: the hint the error carries, else its code's. */
function errorLine(err: KspanError): string {
  const hint = err.hint ?? DEFAULT_HINTS[err.code] ?? 'docs/ERRORS.md says what to do';
  return `kspan: ${err.code}: ${err.hint ? err.message : `${err.message} (${hint})`}`;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === '--version' || cmd === '-V' || cmd === 'version') {
    process.stdout.write(`kspan ${KSPAN_VERSION}\n`);
    return EXIT.ok;
  }
  if (cmd === undefined || cmd === '-h' || cmd === '--help' || cmd === 'help') {
    const topic = cmd === 'help' ? rest[0] : undefined;
    process.stdout.write(`${isCommand(topic) ? helpText(topic) : usageText()}\n`);
    return cmd === undefined ? EXIT.usage : EXIT.ok;
  }
  if (!isCommand(cmd)) {
    throw new KspanError('KSPAN_ERR_USAGE', `unknown command "${cmd}"`, { hint: 'kspan --help lists the commands' });
  }
  if (wantsHelp(rest)) {
    process.stdout.write(`${helpText(cmd)}\n`);
    return EXIT.ok;
  }
  switch (cmd) {
    case 'doctor': {
      const config = loadConfig('doctor', { argv: rest });
      const { runDoctor, formatChecks, doctorExitCode } = await import('./doctor.ts');
      const checks = runDoctor();
      process.stdout.write(config.json ? `${JSON.stringify({ ok: doctorExitCode(checks) === 0, checks }, null, 2)}\n` : `${formatChecks(checks)}\n`);
      return doctorExitCode(checks);
    }
    case 'events': {
      const config = loadCommandConfig('events', rest);
      const { eventsCommand } = await import('./events.ts');
      return eventsCommand(config, createLogger(config.logLevel));
    }
    case 'run': {
      const config = loadCommandConfig('run', rest);
      const { runCommand } = await import('./run.ts');
      return runCommand(config, createLogger(config.logLevel));
    }
    case 'record': {
      const config = loadCommandConfig('record', rest);
      const { recordCommand } = await import('./record.ts');
      return recordCommand(config, createLogger(config.logLevel));
    }
    case 'replay': {
      const config = loadConfig('replay', { argv: rest });
      const { replayCommand } = await import('./replay.ts');
      return replayCommand(config, createLogger(config.logLevel));
    }
    case 'demo': {
      const config = loadConfig('demo', { argv: rest });
      const { demoCommand } = await import('./demo.ts');
      return demoCommand(config, createLogger(config.logLevel));
    }
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof KspanError) {
      process.stderr.write(`${errorLine(err)}\n`);
      if (err.cause instanceof Error) process.stderr.write(`  cause: ${err.cause.message}\n`);
      if ('log' in err && typeof err.log === 'string') process.stderr.write(`  verifier log:\n${err.log}\n`);
      process.exitCode = err.code === 'KSPAN_ERR_USAGE' || err.code === 'KSPAN_ERR_POLICY' ? EXIT.usage : EXIT.error;
    } else {
      process.stderr.write(`kspan: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exitCode = EXIT.error;
    }
  },
);
