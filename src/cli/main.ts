/**
 * kspan command line. Subcommands: doctor, events (and, as they land, run, demo,
 * record, replay). Usage errors exit 2, runtime failures 1.
 */
import { parseArgs } from 'node:util';
import { KspanError } from '../errors.ts';
import { createLogger } from '../logger.ts';

const USAGE = `usage: kspan <command> [options]

commands:
  doctor [--json]                         check that kspan can run here; exit 0 when it can
  events --pid PID [--pid PID ...]        print kernel TCP records as JSON lines
         [--duration SECONDS] [--io-hooks auto|sock_length|syscalls]

run 'kspan <command> --help' for a command's options; see README.md`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'doctor': {
      const { values } = parseArgs({ args: rest, options: { json: { type: 'boolean' } } });
      const { runDoctor, formatChecks, doctorExitCode } = await import('./doctor.ts');
      const checks = runDoctor();
      process.stdout.write(values.json ? `${JSON.stringify({ ok: doctorExitCode(checks) === 0, checks }, null, 2)}\n` : `${formatChecks(checks)}\n`);
      return doctorExitCode(checks);
    }
    case 'events': {
      const { eventsCommand } = await import('./events.ts');
      return eventsCommand(rest, createLogger());
    }
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(`${USAGE}\n`);
      return cmd ? 0 : 2;
    default:
      process.stderr.write(`kspan: unknown command "${cmd}"\n${USAGE}\n`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof KspanError) {
      process.stderr.write(`kspan: ${err.code}: ${err.message}\n`);
      if (err.cause instanceof Error) process.stderr.write(`  cause: ${err.cause.message}\n`);
      if ('log' in err && typeof err.log === 'string') process.stderr.write(`  verifier log:\n${err.log}\n`);
      process.exitCode = err.code === 'KSPAN_ERR_USAGE' ? 2 : 1;
    } else if (err instanceof Error && String((err as { code?: unknown }).code).startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`kspan: ${err.message}\n${USAGE}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`kspan: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exitCode = 1;
    }
  },
);
