/**
 * kspan command line. Subcommands: doctor, events (and, as they land, run, demo,
 * record, replay). Usage errors exit 2, runtime failures 1.
 */
import { parseArgs } from 'node:util';
import { KspanError } from '../core/errors.ts';
import { createLogger } from '../core/logger.ts';

const USAGE = `usage: kspan <command> [options]

commands:
  doctor [--json]                         check that kspan can run here; exit 0 when it can
  events --pid PID [--pid PID ...]        print kernel TCP records as JSON lines
         [--duration SECONDS] [--io-hooks auto|sock_length|syscalls] [--max-sockets N]
  run --pid PID [--pid PID ...]           the agent: kernel spans under the targets' spans, over OTLP
      [--duration SECONDS] [--otlp-endpoint URL] [--otlp-protocol grpc|http/protobuf]
      [--console] [--orphans] [--idle-flush-ms MS] [--max-sockets N] [--io-hooks ...]
  record --pid PID [...] -o FILE          write the kernel records to FILE (msgpack)
         [--duration SECONDS] [--io-hooks ...]
  replay FILE [--otlp-endpoint URL | --console] [--orphans]
                                          feed a recording through the correlator and exporter
  demo [--duration SECONDS] [--requests N] [--loss FRACTION] [--traces N]
       [--spans-out FILE] [--otlp-endpoint URL] [--otlp-protocol ...]
                                          example services, traced, with a lossy path; trees on the terminal
every command: --log-level trace|debug|info|warn|error (logs are JSON on stderr)

README.md documents every option and the output formats`;

/** --log-level LEVEL (any command): pino's levels; default KSPAN_LOG_LEVEL or info. */
function logLevel(args: string[]): string | undefined {
  const i = args.indexOf('--log-level');
  return i >= 0 ? args[i + 1] : args.find((a) => a.startsWith('--log-level='))?.slice('--log-level='.length);
}

function withoutLogLevel(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--log-level') i++;
    else if (!args[i].startsWith('--log-level=')) out.push(args[i]);
  }
  return out;
}

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
      return eventsCommand(withoutLogLevel(rest), createLogger(logLevel(rest)));
    }
    case 'run': {
      const { runCommand } = await import('./run.ts');
      return runCommand(withoutLogLevel(rest), createLogger(logLevel(rest)));
    }
    case 'record': {
      const { recordCommand } = await import('./record.ts');
      return recordCommand(withoutLogLevel(rest), createLogger(logLevel(rest)));
    }
    case 'replay': {
      const { replayCommand } = await import('./replay.ts');
      return replayCommand(withoutLogLevel(rest), createLogger(logLevel(rest)));
    }
    case 'demo': {
      const { demoCommand } = await import('./demo.ts');
      return demoCommand(withoutLogLevel(rest), createLogger(logLevel(rest) ?? 'warn'));
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
