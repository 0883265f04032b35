/**
 * kspan's configuration, in one table (SETTINGS): for every setting its default,
 * its command-line flag, the environment variables that set it, the key it will
 * have in a policy file, and the check its value must pass. Values resolve in
 * layers, each overriding the one before:
 *
 *   default ← environment ← policy file ← command line
 *
 * and each resolved value keeps where it came from (`origins`), so an error names
 * it: `--duration -5: …`, `OTEL_EXPORTER_OTLP_ENDPOINT=garbage: not a URL`.
 * Every value is checked here, before a command touches the kernel.
 *
 * This is the one module of the agent that reads process.env (the OTLP exporter
 * library reads its own OTEL_EXPORTER_OTLP_HEADERS / _TIMEOUT / _COMPRESSION / TLS
 * variables; the demo passes the environment on to its services).
 * A command gets one typed object from loadConfig(); help texts are generated
 * from the same tables (src/cli/options.ts), so they cannot drift.
 *
 * Internal tunables that no user sets yet are in TUNING, also here.
 */
import { parseArgs } from 'node:util';
import { KSPAN_SOCK_SIZE, KspanLimit } from '../records/abi.generated.ts';
import { KspanError } from './errors.ts';
import { parseUprobeSpec, PRESETS, UprobeSpecError, type Preset, type UprobeSpec } from '../uprobes/uprobe-spec.ts';

export type Source = 'default' | 'env' | 'file' | 'flag';

/** Where a value came from: `{ source: 'flag', name: '--duration' }`, `{ source: 'env', name: 'KSPAN_LOG_LEVEL' }`. */
export interface Origin {
  source: Source;
  /** The flag (`--pid`), the variable, `FILE: key` for the policy file, or `default`. */
  name: string;
}

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
export const LOG_LEVELS: readonly LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
export type OtlpProtocol = 'grpc' | 'http/protobuf';
export type IoHooks = 'auto' | 'sock_length' | 'syscalls';
/** How the kernel holds the socket table (TcpTracerOptions.socketTable); auto: on use where the kernel can (6.1+). */
export type SocketTableSetting = 'auto' | 'on-use' | 'preallocated';

/** A value that fails its check: what is wrong, and what to give instead. */
class Invalid extends Error {
  readonly hint: string | undefined;
  constructor(problem: string, hint?: string) {
    super(problem);
    this.hint = hint;
  }
}

interface SettingSpec<V, E = V> {
  /** Long option without the dashes; absent: not settable on the command line. */
  flag?: string;
  short?: string;
  /** Placeholder for the value in help (`SECONDS`); absent for a switch. */
  arg?: string;
  /** Repeatable flag; the value is the list of every occurrence. */
  repeat?: boolean;
  /** The command's positional argument rather than a flag. */
  positional?: boolean;
  /** Environment variables, in priority order: the first one set (non-blank) is used. */
  env?: readonly string[];
  /** Dotted key in the policy file, once kspan reads one. */
  fileKey?: string;
  default: V;
  /** How help shows the default, when not simply the value. */
  defaultText?: string;
  help: string;
  /** The message when a command requires the setting and it has no value. */
  missing?: string;
  /** Checks and converts one raw value; throws Invalid. */
  parse: (raw: string) => E;
}

const value = <V>(s: Omit<SettingSpec<V>, 'repeat'>): SettingSpec<V> => s;
const list = <E>(s: Omit<SettingSpec<E[], E>, 'repeat' | 'default'>): SettingSpec<E[], E> => ({ ...s, repeat: true, default: [] });
const toggle = (s: Omit<SettingSpec<boolean>, 'parse' | 'default'>): SettingSpec<boolean> => ({ ...s, default: false, parse: parseBoolean });

function parseBoolean(raw: string): boolean {
  const s = raw.trim().toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(s)) return true;
  if (['false', '0', 'no', 'off'].includes(s)) return false;
  throw new Invalid('not a boolean', 'use true or false');
}

/** A number from text that is only a number (Number('') is 0, Number('0x10') is 16: refused). */
function decimal(raw: string): number {
  return /^\s*[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?\s*$/i.test(raw) ? Number(raw) : NaN;
}

function wholeNumber(raw: string, min: number, max: number, what: string): number {
  const n = decimal(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Invalid(`not ${what}`, `give a whole number from ${min} to ${max}`);
  return n;
}

/** The kernel's largest pid_max (PID_MAX_LIMIT on 64-bit). */
const PID_MAX_LIMIT = 4_194_304;

function parsePid(raw: string): number {
  const n = decimal(raw);
  if (!/^\s*\d+\s*$/.test(raw) || n < 1 || n > PID_MAX_LIMIT) {
    throw new Invalid('not a process id', `give the pid of a running process, from 1 to ${PID_MAX_LIMIT}`);
  }
  return n;
}

function parseSeconds(raw: string): number {
  const n = decimal(raw);
  // Any finite length: the stop timer is chained past setTimeout's 24.8-day limit.
  if (!(n > 0) || !Number.isFinite(n * 1000)) throw new Invalid('not a duration', 'give seconds > 0, e.g. 30 or 0.5');
  return n;
}

function oneOf<T extends string>(choices: readonly T[], what: string): (raw: string) => T {
  return (raw) => {
    const s = raw.trim() as T;
    if (choices.includes(s)) return s;
    throw new Invalid(`not ${what}`, `use ${choices.slice(0, -1).join(', ')} or ${choices[choices.length - 1]}`);
  };
}

const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;
const HOST_PORT = /^(\[[0-9a-f:.]+\]|[a-z0-9._-]+):\d{1,5}(\/\S*)?$/i;

/**
 * An OTLP endpoint: `http(s)://host[:port][/path]`, or `host:port` (plaintext http).
 * Returned with its scheme.
 */
export function parseEndpoint(raw: string): string {
  const hint = 'give http://host:port or https://host:port; a bare host:port means http';
  const s = raw.trim();
  const url = SCHEME.test(s) ? s : HOST_PORT.test(s) ? `http://${s}` : undefined;
  let u: URL | undefined;
  try {
    if (url) u = new URL(url);
  } catch {
    // reported below
  }
  if (!u || !url) throw new Invalid('not a URL', hint);
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Invalid(`not an http or https URL`, hint);
  if (!u.hostname) throw new Invalid('not a URL (no host)', hint);
  return url;
}

function parseFraction(raw: string): number {
  const n = decimal(raw);
  if (!(n >= 0 && n < 1)) throw new Invalid('not a fraction', 'give a number from 0 up to (not including) 1, e.g. 0.05');
  return n;
}

function parseUprobe(raw: string): UprobeSpec {
  try {
    return parseUprobeSpec(raw);
  } catch (err) {
    if (err instanceof UprobeSpecError) throw new Invalid(err.message, err.hint);
    throw err;
  }
}

function parsePresets(raw: string): Preset[] {
  const s = raw.trim();
  if (s === 'none') return [];
  const out: Preset[] = [];
  for (const p of s.split(',').map((x) => x.trim())) {
    if (!PRESETS.includes(p as Preset)) throw new Invalid(`"${p}" is not a preset`, `give a comma-separated list of ${PRESETS.join(', ')}, or none`);
    if (!out.includes(p as Preset)) out.push(p as Preset);
  }
  return out;
}

function parsePath(raw: string): string {
  if (!raw) throw new Invalid('empty path', 'give a file name');
  return raw;
}

function parseGlob(raw: string): string {
  if (!raw.trim()) throw new Invalid('empty pattern', 'give a path glob, e.g. /usr/sbin/* or **/httpd');
  return raw.trim();
}

function parseComm(raw: string): string {
  if (!raw || raw.length > 15) throw new Invalid('not a command name', 'give the name as ps -o comm shows it (at most 15 characters)');
  return raw;
}

function parseRegex(raw: string): string {
  try {
    new RegExp(raw);
  } catch (err) {
    throw new Invalid(`not a regular expression (${(err as Error).message})`, 'give a JavaScript regular expression, e.g. "--port[= ]8080"');
  }
  return raw;
}

function parseContainerId(raw: string): string {
  const s = raw.trim().toLowerCase();
  if (!/^[0-9a-f]{1,64}$/.test(s)) throw new Invalid('not a container id', 'give the id (or its first characters) as docker ps or crictl ps shows it');
  return s;
}

function parseCgroupPath(raw: string): string {
  if (!raw.startsWith('/')) throw new Invalid('not a cgroup path', 'give the path as the cgroup file of the process shows it, e.g. /system.slice/nginx.service');
  return raw;
}

function parsePodUid(raw: string): string {
  const s = raw.trim().toLowerCase().replaceAll('_', '-');
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(s)) {
    throw new Invalid('not a pod uid', 'give the uid as kubectl get pod -o jsonpath={.metadata.uid} shows it');
  }
  return s;
}

const parsePort = (raw: string) => wholeNumber(raw, 1, 65535, 'a port');

/** The selectors, included (`--exe`) and excluded (`--exclude-exe`), with their policy file keys (`select.exe`, `exclude.exe`). */
function selectors(prefix: 'select' | 'exclude') {
  const flag = (name: string) => (prefix === 'select' ? name : `exclude-${name}`);
  const verb = prefix === 'select' ? 'trace' : 'never trace';
  return {
    exe: list<string>({ flag: flag('exe'), arg: 'GLOB', fileKey: `${prefix}.exe`, parse: parseGlob, help: `${verb} processes whose executable path matches this glob (repeatable)` }),
    comm: list<string>({ flag: flag('comm'), arg: 'NAME', fileKey: `${prefix}.comm`, parse: parseComm, help: `${verb} processes with this command name (as ps -o comm shows it)` }),
    cmdline: list<string>({ flag: flag('cmdline'), arg: 'REGEX', fileKey: `${prefix}.cmdline`, parse: parseRegex, help: `${verb} processes whose arguments (joined by spaces) match this regular expression` }),
    container: list<string>({ flag: flag('container'), arg: 'ID', fileKey: `${prefix}.container`, parse: parseContainerId, help: `${verb} the processes of this container (its id or a prefix, from the cgroup path)` }),
    cgroup: list<string>({ flag: flag('cgroup'), arg: 'PATH', fileKey: `${prefix}.cgroup`, parse: parseCgroupPath, help: `${verb} the processes in this cgroup or below it` }),
    k8sPodUid: list<string>({ flag: flag('k8s-pod-uid'), arg: 'UID', fileKey: `${prefix}.k8s_pod_uid`, parse: parsePodUid, help: `${verb} the processes of this Kubernetes pod (from the cgroup path)` }),
    port: list<number>({ flag: flag('port'), arg: 'N', fileKey: `${prefix}.port`, parse: parsePort, help: `${verb} processes with a TCP connection on this local or peer port` }),
  };
}

const INCLUDE = selectors('select');
const EXCLUDE = selectors('exclude');
/** Where --spool keeps spans when no --spool-dir is given. */
export const DEFAULT_SPOOL_DIR = '/var/lib/kspan/spool';

/** OTLP's registered ports: gRPC and HTTP (what the deployment files use; test/unit/deploy-config.test.ts). */
export const OTLP_GRPC_PORT = 4317;
export const OTLP_HTTP_PORT = 4318;

/** The self-metrics port (Prometheus' registered default for OpenTelemetry exporters). */
export const METRICS_DEFAULT_PORT = 9464;

/** Where the metrics endpoint listens: `PORT` (on 127.0.0.1), `HOST:PORT` or `[IPv6]:PORT`; port 0 picks a free one. */
export interface ListenAddress {
  host: string;
  port: number;
}

export function parseListen(raw: string): ListenAddress {
  const hint = `give PORT (on 127.0.0.1), HOST:PORT or [IPv6]:PORT, e.g. ${METRICS_DEFAULT_PORT} or 0.0.0.0:${METRICS_DEFAULT_PORT}`;
  const s = raw.trim();
  const m = /^(?:(\[[0-9a-f:.]+\]|[a-z0-9._-]+):)?(\d{1,5})$/i.exec(s);
  if (!m) throw new Invalid('not a listen address', hint);
  const port = Number(m[2]);
  if (port > 65535) throw new Invalid('not a port', hint);
  const host = m[1] ? m[1].replace(/^\[|\]$/g, '') : '127.0.0.1';
  return { host, port };
}

export const SETTINGS = {
  pids: list<number>({
    flag: 'pid', arg: 'PID', fileKey: 'select.pid', parse: parsePid,
    help: 'a process to trace (repeatable); it must be running when kspan starts',
    missing: 'no target: give --pid PID (repeatable)',
  }),
  all: toggle({
    flag: 'all', fileKey: 'select.all',
    help: 'node-agent mode: trace every process that publishes trace context (OTEP 4947, OTEL_CTX, the Node.js scheme), as processes start, fork and exit; the selectors narrow it',
  }),
  exe: INCLUDE.exe,
  comm: INCLUDE.comm,
  cmdline: INCLUDE.cmdline,
  container: INCLUDE.container,
  cgroup: INCLUDE.cgroup,
  k8sPodUid: INCLUDE.k8sPodUid,
  port: INCLUDE.port,
  excludePid: list<number>({ flag: 'exclude-pid', arg: 'PID', fileKey: 'exclude.pid', parse: parsePid, help: 'never trace this process' }),
  excludeExe: EXCLUDE.exe,
  excludeComm: EXCLUDE.comm,
  excludeCmdline: EXCLUDE.cmdline,
  excludeContainer: EXCLUDE.container,
  excludeCgroup: EXCLUDE.cgroup,
  excludeK8sPodUid: EXCLUDE.k8sPodUid,
  excludePort: EXCLUDE.port,
  config: value<string | undefined>({
    flag: 'config', arg: 'FILE', default: undefined, parse: parsePath,
    help: 'a policy file (YAML): selection, orphans, sampling, export; on SIGHUP or when the file changes, the selection and sampling are swapped in without reloading a program (an invalid file keeps the policy in force)',
  }),
  waitForTargets: value<boolean>({
    default: false, parse: parseBoolean,
    help: 'keep running when every target has exited, for targets added later (no such mode yet: always off)',
  }),
  duration: value<number | undefined>({
    flag: 'duration', arg: 'SECONDS', fileKey: 'duration', default: undefined, defaultText: 'until SIGINT/SIGTERM',
    parse: parseSeconds, help: 'stop after this long (any length)',
  }),
  otlpEndpoint: value<string | undefined>({
    flag: 'otlp-endpoint', arg: 'URL', env: ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'OTEL_EXPORTER_OTLP_ENDPOINT'],
    fileKey: 'export.endpoint', default: undefined, defaultText: 'none: trees on the terminal', parse: parseEndpoint,
    help: `where spans go over OTLP (http://host:${OTLP_GRPC_PORT} for gRPC)`,
  }),
  otlpProtocol: value<OtlpProtocol>({
    flag: 'otlp-protocol', arg: 'grpc|http/protobuf', env: ['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_PROTOCOL'],
    fileKey: 'export.protocol', default: 'grpc', parse: oneOf<OtlpProtocol>(['grpc', 'http/protobuf'], 'a supported OTLP protocol'),
    help: 'OTLP transport',
  }),
  console: toggle({ flag: 'console', fileKey: 'export.console', help: 'print span trees on the terminal even when an endpoint is configured' }),
  orphans: toggle({
    flag: 'orphans', fileKey: 'spans.orphans',
    help: 'export kernel activity with no thread context as root spans (always counted)',
  }),
  orphansRatio: value<number>({
    flag: 'orphans-ratio', arg: 'FRACTION', fileKey: 'kernel.orphans_ratio', default: 1, parse: parseFraction,
    help: 'of connections with no trace context, the share whose records leave the kernel, chosen whole per connection from its cookie; the rest are counted (KSPAN_C_ORPHAN_SKIPPED)',
  }),
  unsampled: toggle({
    flag: 'unsampled', fileKey: 'kernel.unsampled',
    help: 'also print records whose context is not sampled (by default they stay in the kernel, counted in KSPAN_C_UNSAMPLED, as kspan run needs none of them)',
  }),
  noSched: toggle({
    flag: 'no-sched', fileKey: 'kernel.no_sched',
    help: 'leave out the scheduler programs (thread.sched spans: on-CPU, blocked and run-queue time per span); sched_switch then costs nothing',
  }),
  offCpuEventMs: value<number>({
    flag: 'off-cpu-event-ms', arg: 'MS', fileKey: 'kernel.off_cpu_event_ms', default: 1,
    parse: (raw) => wholeNumber(raw, 0, 3_600_000, 'a time in milliseconds'),
    help: 'an off-CPU interval (blocked, or waiting to run) at least this long becomes a thread.off_cpu event on its thread.sched span, a blocked one with its wait channel and kernel stack (at most 32 per span, the rest counted); 0: none',
  }),
  ioHooks: value<IoHooks>({
    flag: 'io-hooks', arg: 'auto|sock_length|syscalls', fileKey: 'kernel.io_hooks', default: 'auto',
    parse: oneOf<IoHooks>(['auto', 'sock_length', 'syscalls'], 'an I/O hook set'),
    help: 'force the send/recv hooks (syscalls: the fallback for kernels < 6.3)',
  }),
  maxSockets: value<number>({
    flag: 'max-sockets', arg: 'N', fileKey: 'kernel.max_sockets', default: KspanLimit.KSPAN_MAX_SOCKETS as number,
    parse: (raw) => wholeNumber(raw, 1, 1 << 24, 'a socket count'),
    help: `sockets whose state is kept at once, in the kernel (${KSPAN_SOCK_SIZE} B each) and in run's correlator; beyond it, records are lost and counted`,
  }),
  socketTable: value<SocketTableSetting>({
    flag: 'socket-table', arg: 'auto|on-use|preallocated', fileKey: 'kernel.socket_table', default: 'auto',
    parse: oneOf<SocketTableSetting>(['auto', 'on-use', 'preallocated'], 'a socket table allocation'),
    help: 'how the kernel holds the socket table: on-use allocates a slot per traced socket and frees it at close (kernel memory follows the sockets traced; about 0.8 µs more BPF time per new connection), preallocated takes every slot at start; auto: on-use on 6.1+, where the kernel allows it in tracing programs',
  }),
  idleFlushMs: value<number>({
    flag: 'idle-flush-ms', arg: 'MS', fileKey: 'kernel.idle_flush_ms', default: 500,
    parse: (raw) => wholeNumber(raw, 1, 3_600_000, 'a time in milliseconds'),
    help: 'close the send/recv aggregates of quiet keep-alive sockets after this long (the kernel is asked every half of it, at most every 250 ms and at least every 10 ms)',
  }),
  spool: toggle({
    flag: 'spool', env: ['KSPAN_SPOOL'], fileKey: 'export.spool.enabled',
    help: `keep spans that cannot be sent yet (Collector away, export queue full) on disk, in --spool-dir, and send them oldest first when it returns or kspan restarts`,
  }),
  spoolDir: value<string | undefined>({
    flag: 'spool-dir', arg: 'DIR', env: ['KSPAN_SPOOL_DIR'], fileKey: 'export.spool.dir', default: undefined,
    defaultText: `off; with --spool, ${DEFAULT_SPOOL_DIR}`, parse: parsePath,
    help: 'the spool directory (giving it turns the spool on); one kspan per directory',
  }),
  spoolMaxMb: value<number>({
    flag: 'spool-max-mb', arg: 'MB', env: ['KSPAN_SPOOL_MAX_MB'], fileKey: 'export.spool.max_mb', default: 256,
    parse: (raw) => wholeNumber(raw, 1, 1 << 20, 'a size in MiB'),
    help: 'the spool stays under this size; the oldest spans are dropped first, counted',
  }),
  uprobes: list<UprobeSpec>({
    flag: 'uprobe', arg: 'BINARY_OR_LIB:SYMBOL[:SPAN_NAME]', fileKey: 'uprobes.functions', parse: parseUprobe,
    help: 'a span for every call of this function in the targets (repeatable): a path, file name or stem (libssl) of the executable or a library, the symbol, and the span name (default: the symbol)',
  }),
  uprobePresets: value<Preset[]>({
    flag: 'uprobe-presets', arg: 'dns,tls|none', fileKey: 'uprobes.presets', default: ['dns', 'tls'], defaultText: 'dns,tls',
    parse: parsePresets,
    help: 'built-in function spans: dns (getaddrinfo → dns.lookup), tls (SSL_do_handshake, SSL_connect, SSL_accept → tls.handshake); none for neither',
  }),
  output: value<string | undefined>({
    flag: 'output', short: 'o', arg: 'FILE', default: undefined, parse: parsePath,
    help: 'the recording to write; an existing file is refused unless --force',
    missing: 'no output file: give -o FILE',
  }),
  force: toggle({ flag: 'force', help: 'overwrite the output file if it exists' }),
  input: value<string | undefined>({
    positional: true, arg: 'FILE', default: undefined, parse: parsePath,
    help: 'a recording written by kspan record',
    missing: 'no recording: give kspan replay FILE',
  }),
  json: toggle({ flag: 'json', help: 'print the checks as one JSON object' }),
  requests: value<number | undefined>({
    flag: 'requests', arg: 'N', default: undefined, defaultText: 'no limit',
    parse: (raw) => wholeNumber(raw, 1, Number.MAX_SAFE_INTEGER, 'a request count'),
    help: 'stop after N requests (or --duration, whichever comes first)',
  }),
  loss: value<number>({
    flag: 'loss', arg: 'FRACTION', default: 0.05, parse: parseFraction,
    help: "share of packets dropped on the backend's side",
  }),
  traces: value<number>({
    flag: 'traces', arg: 'N', default: 4, parse: (raw) => wholeNumber(raw, 0, 1000, 'a trace count'),
    help: 'how many traces to print',
  }),
  spansOut: value<string | undefined>({
    flag: 'spans-out', arg: 'FILE', default: undefined, parse: parsePath,
    help: 'also write every span as JSON lines to FILE',
  }),
  metricsListen: value<ListenAddress | undefined>({
    flag: 'metrics-listen', arg: 'ADDR', env: ['KSPAN_METRICS_LISTEN'], fileKey: 'metrics.listen', default: undefined,
    defaultText: `off; PORT alone means 127.0.0.1:PORT (e.g. ${METRICS_DEFAULT_PORT})`, parse: parseListen,
    help: "serve kspan's own metrics (docs/METRICS.md) for Prometheus at http://ADDR/metrics",
  }),
  metricsOtlpEndpoint: value<string | undefined>({
    flag: 'metrics-otlp-endpoint', arg: 'URL', env: ['OTEL_EXPORTER_OTLP_METRICS_ENDPOINT'], fileKey: 'metrics.otlp_endpoint',
    default: undefined, defaultText: 'off', parse: parseEndpoint,
    help: `also push kspan's own metrics over OTLP gRPC to this endpoint (http://host:${OTLP_GRPC_PORT})`,
  }),
  metricsOtlpIntervalMs: value<number>({
    flag: 'metrics-otlp-interval-ms', arg: 'MS', env: ['OTEL_METRIC_EXPORT_INTERVAL'], fileKey: 'metrics.otlp_interval_ms', default: 60_000,
    parse: (raw) => wholeNumber(raw, 100, 3_600_000, 'a time in milliseconds'),
    help: 'how often metrics are pushed over OTLP',
  }),
  logLevel: value<LogLevel>({
    flag: 'log-level', arg: 'LEVEL', env: ['KSPAN_LOG_LEVEL'], fileKey: 'log.level', default: 'info',
    parse: oneOf(LOG_LEVELS, 'a log level'), help: 'log threshold; logs are JSON lines on stderr',
  }),
};

export type SettingKey = keyof typeof SETTINGS;
type ValueOf<K extends SettingKey> = (typeof SETTINGS)[K] extends SettingSpec<infer V, infer _E> ? V : never;

interface CommandSpec {
  summary: string;
  usage: string;
  settings: readonly SettingKey[];
  required?: readonly SettingKey[];
  /** This command's own default (and help line) for a setting. */
  overrides?: Partial<Record<SettingKey, { default?: unknown; defaultText?: string; help?: string }>>;
  /** At least one of these must have a value (a switch: be on). */
  requireOne?: { keys: readonly SettingKey[]; missing: string };
  /** Exit statuses, for help. */
  exit: string;
}

/** Every selector: any one of them (or --all, or --pid) names targets. */
export const SELECTION = [
  'pids', 'all', 'exe', 'comm', 'cmdline', 'container', 'cgroup', 'k8sPodUid', 'port',
  'excludePid', 'excludeExe', 'excludeComm', 'excludeCmdline', 'excludeContainer', 'excludeCgroup', 'excludeK8sPodUid', 'excludePort',
] as const;
const INCLUDES = ['pids', 'all', 'exe', 'comm', 'cmdline', 'container', 'cgroup', 'k8sPodUid', 'port'] as const;
const NO_TARGET = 'no target: give --pid PID, --all, or a selector (--exe, --comm, --cmdline, --container, --cgroup, --k8s-pod-uid, --port)';

const TRACING = [...SELECTION, 'config', 'duration', 'ioHooks', 'maxSockets', 'socketTable', 'waitForTargets', 'orphansRatio', 'noSched', 'offCpuEventMs'] as const;
const EXPORT = ['otlpEndpoint', 'otlpProtocol', 'console', 'orphans'] as const;
const METRICS = ['metricsListen', 'metricsOtlpEndpoint', 'metricsOtlpIntervalMs'] as const;
const EXIT_TRACING = '0 stopped (signal, --duration, or every target exited), 1 error, 2 usage error, 3 stopped but data was lost';

export const COMMANDS = {
  run: {
    summary: "the agent: kernel spans under the targets' own spans, exported over OTLP, or printed as trees when no endpoint is configured",
    usage: 'kspan run (--pid PID | --all | SELECTOR ...) [--exclude-... ...] [--config FILE] [options]',
    settings: [...TRACING, ...EXPORT, 'idleFlushMs', 'spool', 'spoolDir', 'spoolMaxMb', 'uprobes', 'uprobePresets', ...METRICS, 'logLevel'],
    requireOne: { keys: INCLUDES, missing: NO_TARGET },
    exit: EXIT_TRACING,
  },
  events: {
    summary: 'every kernel record of the targets as one JSON object per line on stdout',
    usage: 'kspan events (--pid PID | --all | SELECTOR ...) [options]',
    settings: [...TRACING, 'unsampled', 'logLevel'],
    requireOne: { keys: INCLUDES, missing: NO_TARGET },
    exit: EXIT_TRACING,
  },
  record: {
    summary: 'the kernel records of the targets to a file, for kspan replay',
    usage: 'kspan record (--pid PID | --all | SELECTOR ...) -o FILE [options]',
    settings: [...TRACING, 'unsampled', 'output', 'force', 'logLevel'],
    required: ['output'],
    requireOne: { keys: INCLUDES, missing: NO_TARGET },
    exit: EXIT_TRACING,
  },
  replay: {
    summary: 'a recording through the same correlator and exporter as kspan run',
    usage: 'kspan replay FILE [options]',
    settings: ['input', ...EXPORT, 'logLevel'],
    required: ['input'],
    exit: '0 replayed, 1 error, 2 usage error, 3 replayed but data was lost (a recording cut short, spans not exported)',
  },
  doctor: {
    summary: 'checks kernel, BTF, privileges, tracefs/bpffs, libbpf, and loads a tiny program per hook type',
    usage: 'kspan doctor [--json]',
    settings: ['json'],
    exit: '0 kspan can run here, 1 it cannot, 2 usage error',
  },
  demo: {
    summary: 'example services (native C and Node), traced, over a lossy link; whole traces on the terminal',
    usage: 'kspan demo [options]',
    settings: ['duration', 'requests', 'otlpEndpoint', 'otlpProtocol', 'loss', 'traces', 'spansOut', 'logLevel'],
    overrides: {
      duration: { default: 20, defaultText: '20', help: 'how long to drive traffic' },
      otlpEndpoint: { help: "send every span there (kernel and the services' own)" },
      logLevel: { default: 'warn' },
    },
    exit: '0 done, 1 error, 2 usage error, 130 interrupted while starting',
  },
} as const satisfies Record<string, CommandSpec>;

export type Command = keyof typeof COMMANDS;
type KeysOf<C extends Command> = (typeof COMMANDS)[C]['settings'][number];
type RequiredOf<C extends Command> = (typeof COMMANDS)[C] extends { required: readonly (infer R)[] } ? R : never;

/** One command's configuration: every setting it uses, checked, with where each came from. */
export type CommandConfig<C extends Command> = {
  readonly [K in KeysOf<C>]: K extends RequiredOf<C> ? NonNullable<ValueOf<K>> : ValueOf<K>;
} & {
  readonly command: C;
  readonly origins: { readonly [K in KeysOf<C>]: Origin };
};

export type RunConfig = CommandConfig<'run'>;
export type EventsConfig = CommandConfig<'events'>;
export type RecordConfig = CommandConfig<'record'>;
export type ReplayConfig = CommandConfig<'replay'>;

/** Raw values by setting, as the command line gives them (a switch is true, a repeatable flag a list). */
export type RawValues = Partial<Record<SettingKey, string | readonly string[] | boolean>>;

export interface ConfigSources {
  /** The command's arguments (after the command name). */
  argv?: readonly string[];
  /** Values given by a caller rather than typed (e.g. the demo's agent); checked as flags. */
  flags?: RawValues;
  /** Default: process.env. */
  env?: Readonly<Record<string, string | undefined>>;
  /** The policy file, parsed: its values by dotted key. */
  file?: { path: string; values: Readonly<Record<string, unknown>>; lineOf?: (key: string) => number | undefined };
}

/** A setting as one command has it. */
interface Entry {
  key: SettingKey;
  spec: SettingSpec<unknown>;
  required: boolean;
}

function specFor(command: Command, key: SettingKey): SettingSpec<unknown> {
  const base = SETTINGS[key] as SettingSpec<unknown>;
  const o = (COMMANDS[command] as CommandSpec).overrides?.[key];
  return o ? { ...base, ...o } as SettingSpec<unknown> : base;
}

/** The command's settings, with this command's defaults and help lines. */
export function commandSettings(command: Command): Entry[] {
  const c = COMMANDS[command] as CommandSpec;
  return c.settings.map((key) => ({ key, spec: specFor(command, key), required: !!c.required?.includes(key) }));
}

/** How an error names a raw value: `--duration -5`, `KSPAN_LOG_LEVEL=bogus`, `kspan.yaml: log.level: bogus`. */
function describe(origin: Origin, raw: string): string {
  switch (origin.source) {
    case 'flag':
      return origin.name.startsWith('-') ? `${origin.name} ${raw}` : `${origin.name} ${JSON.stringify(raw)}`;
    case 'env':
      return `${origin.name}=${raw}`;
    case 'file':
      return `${origin.name}: ${raw}`;
    default:
      return `default ${raw}`;
  }
}

function usageError(command: Command, message: string): KspanError {
  return new KspanError('KSPAN_ERR_USAGE', message, { hint: `kspan ${command} --help lists the options` });
}

function flagName(s: SettingSpec<unknown>): string {
  return s.positional ? (s.arg ?? 'ARG') : `--${s.flag}`;
}

/**
 * The command line as raw values by setting. Unknown options, a missing value, a
 * value given to a switch and stray arguments are usage errors; a value that
 * starts with a dash (`--duration -5`) is taken as the value, and checked later.
 */
export function parseCommandLine(command: Command, argv: readonly string[]): RawValues {
  const settings = commandSettings(command);
  const byFlag = new Map<string, (typeof settings)[number]>();
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {
    help: { type: 'boolean', short: 'h' },
  };
  for (const s of settings) {
    if (!s.spec.flag) continue;
    byFlag.set(s.spec.flag, s);
    options[s.spec.flag] = { type: s.spec.arg ? 'string' : 'boolean', ...(s.spec.short ? { short: s.spec.short } : {}) };
  }
  const { tokens } = parseArgs({ args: [...argv], options, strict: false, allowPositionals: true, tokens: true });
  const values: Record<string, string | string[] | boolean> = {};
  const positional = settings.find((s) => s.spec.positional);
  for (const t of tokens) {
    if (t.kind === 'option-terminator') continue;
    if (t.kind === 'positional') {
      if (!positional || values[positional.key] !== undefined) {
        throw usageError(command, `unexpected argument ${JSON.stringify(t.value)}`);
      }
      values[positional.key] = t.value;
      continue;
    }
    if (t.name === 'help') continue; // main.ts answers it first (wantsHelp)
    const s = byFlag.get(t.name);
    if (!s) throw usageError(command, `unknown option ${t.rawName}`);
    if (!s.spec.arg) {
      if (t.value !== undefined) throw usageError(command, `${t.rawName} takes no value`);
      values[s.key] = true;
      continue;
    }
    // parseArgs takes the next argument, whatever it is, as the value of a string
    // option; a following long option means the value was forgotten.
    if (t.value === undefined || (!t.inlineValue && t.value.startsWith('--'))) {
      throw usageError(command, `${t.rawName} needs a value (${s.spec.arg})`);
    }
    if (s.spec.repeat) ((values[s.key] ??= []) as string[]).push(t.value);
    else values[s.key] = t.value;
  }
  return values as RawValues;
}

/** True when the arguments ask for help (-h, --help before any `--`). */
export function wantsHelp(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false;
    if (a === '-h' || a === '--help') return true;
  }
  return false;
}

function fileValue(values: Readonly<Record<string, unknown>>, key: string): unknown {
  if (key in values) return values[key];
  let v: unknown = values;
  for (const part of key.split('.')) {
    if (!v || typeof v !== 'object') return undefined;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

/**
 * Resolves `entries` through the layers. Throws KSPAN_ERR_USAGE naming the
 * value's source on the first value that fails its check.
 */
function resolve(entries: readonly Entry[], sources: ConfigSources, flags: RawValues, helpHint: string): Record<string, unknown> {
  const env = sources.env ?? process.env;
  const out: Record<string, unknown> = {};
  const origins: Record<string, Origin> = {};
  const check = (s: SettingSpec<unknown>, origin: Origin, raws: readonly string[]): unknown => {
    const parsed = raws.map((raw) => {
      try {
        return s.parse(raw);
      } catch (err) {
        if (!(err instanceof Invalid)) throw err;
        throw new KspanError('KSPAN_ERR_USAGE', `${describe(origin, raw)}: ${err.message}`, {
          hint: err.hint ?? (origin.source === 'env' ? `fix or unset ${origin.name}` : helpHint),
        });
      }
    });
    return s.repeat ? [...new Set(parsed)] : parsed[0];
  };
  for (const { key, spec: s, required } of entries) {
    // The highest layer that sets the value wins; the ones below are not read,
    // so a valid flag hides a malformed variable.
    let v: unknown = s.default;
    let origin: Origin = { source: 'default', name: 'default' };
    const flag = flags[key];
    const fromFile = sources.file && s.fileKey ? fileValue(sources.file.values, s.fileKey) : undefined;
    const envName = s.env?.find((name) => env[name]?.trim());
    if (flag !== undefined) {
      origin = { source: 'flag', name: flagName(s) };
      v = typeof flag === 'boolean' ? flag : check(s, origin, typeof flag === 'string' ? [flag] : flag);
    } else if (fromFile !== undefined && fromFile !== null) {
      const line = sources.file!.lineOf?.(s.fileKey!);
      origin = { source: 'file', name: `${sources.file!.path}${line ? `:${line}` : ''}: ${s.fileKey}` };
      v = check(s, origin, (Array.isArray(fromFile) ? fromFile : [fromFile]).map(String));
    } else if (envName) {
      const raw = env[envName]!.trim();
      origin = { source: 'env', name: envName };
      v = check(s, origin, s.repeat ? raw.split(',').map((x) => x.trim()) : [raw]);
    }
    if (required && (v === undefined || (Array.isArray(v) && v.length === 0))) {
      throw new KspanError('KSPAN_ERR_USAGE', s.missing ?? `${flagName(s)} is required`, { hint: helpHint });
    }
    out[key] = v;
    origins[key] = origin;
  }
  return { ...out, origins };
}

/**
 * The configuration of `command`: defaults ← environment ← policy file ← command
 * line (argv, or `flags`), every value checked. Throws KSPAN_ERR_USAGE.
 */
export function loadConfig<C extends Command>(command: C, sources: ConfigSources = {}): CommandConfig<C> {
  const flags = sources.argv ? { ...sources.flags, ...parseCommandLine(command, sources.argv) } : (sources.flags ?? {});
  const c = resolve(commandSettings(command), sources, flags, `kspan ${command} --help lists the options`);
  const one = (COMMANDS[command] as CommandSpec).requireOne;
  if (one && !one.keys.some((k) => (Array.isArray(c[k]) ? (c[k] as unknown[]).length > 0 : !!c[k]))) {
    throw new KspanError('KSPAN_ERR_USAGE', one.missing, { hint: `kspan ${command} --help lists the options` });
  }
  return { ...c, command } as unknown as CommandConfig<C>;
}

/** Some settings outside any command (their generic defaults), e.g. the export settings of an embedding caller. */
export function loadSettings<K extends SettingKey>(
  keys: readonly K[],
  sources: Omit<ConfigSources, 'argv'> = {},
): { readonly [k in K]: ValueOf<k> } & { readonly origins: { readonly [k in K]: Origin } } {
  const entries = keys.map((key) => ({ key, spec: SETTINGS[key] as SettingSpec<unknown>, required: false }));
  return resolve(entries, sources, sources.flags ?? {}, 'kspan --help lists the commands') as never;
}

/**
 * Test-only fault injection, not a setting (not in --help): the programs named in
 * KSPAN_FAULT_REJECT_PROGRAMS (comma-separated) are made to fail verification
 * (src/kernel/tcp-tracer.ts), so tests prove that losing an optional hook leaves
 * kspan running.
 */
export function faultRejectedPrograms(env: Readonly<Record<string, string | undefined>> = process.env): ReadonlySet<string> {
  return new Set((env.KSPAN_FAULT_REJECT_PROGRAMS ?? '').split(',').map((s) => s.trim()).filter(Boolean));
}

/**
 * Test-only, not a setting (not in --help): the ring buffer's size in bytes from
 * KSPAN_TEST_RING_BYTES (a power of two, at least a page), so a test can
 * overflow a tiny ring and count exactly what was lost.
 */
export function testRingBytes(env: Readonly<Record<string, string | undefined>> = process.env): number | undefined {
  const raw = env.KSPAN_TEST_RING_BYTES?.trim();
  if (!raw) return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 4096 || (n & (n - 1)) !== 0) {
    throw new KspanError('KSPAN_ERR_USAGE', `KSPAN_TEST_RING_BYTES=${raw}: not a power of two of at least 4096`, { hint: 'unset KSPAN_TEST_RING_BYTES' });
  }
  return n;
}

/** Internal tunables: fixed today, one place each. */
export const TUNING = {
  /**
   * How often the kernel is asked to close idle send/recv aggregates: half the
   * idle time, within these bounds (src/kernel/tcp-tracer.ts, idleFlushTiming()).
   */
  idleFlushTickMs: 250,
  idleFlushTickMinMs: 10,
  /**
   * How often REALTIME − MONOTONIC is re-measured (21 clock reads): a step of
   * the realtime clock (NTP, a VM restored from a snapshot) misplaces kernel
   * times against the services' own for at most this long.
   */
  clockRefreshMs: 1000,
  /** A move of the offset at least this large is logged (info). */
  clockStepLogNs: 1_000_000n,
  /** How often targets are re-examined: context location, Resource, still running. */
  targetRefreshMs: 2000,
  /**
   * How often the agent gives glibc's free heap pages back (malloc_trim(0)):
   * freeing does so only at the heap's top, and under load the chunks freed in
   * its middle held 10–15 MB (BENCHMARKS.md, "malloc's free pages, and the
   * rings' wait on a timer").
   */
  mallocTrimMs: 1000,
  /**
   * After the last target exited: how long its sockets may take to close (FIN
   * retransmits, the kernel's close records) before the command stops anyway.
   */
  targetsGoneLingerMs: 5000,
  /** Meanwhile, how often the socket table is looked at. */
  targetsGoneCheckMs: 250,
  /** Live correlator: how often held spans and idle sockets are checked. */
  correlatorTickMs: 250,
  /**
   * The agent's rings (events, sched_events, calls) are drained at least this
   * often, on a timer, while they deliver records; the kernel wakes the reader
   * sooner when a ring is an eighth full. Each of the timer's wake-ups costs the
   * event loop some hundred microseconds of CPU here, most of an idle agent's
   * (BENCHMARKS.md, "malloc's free pages, and the rings' wait on a timer"), so
   * the interval backs off to 8 × this while the drains find nothing
   * (src/kernel/drain-backoff.ts; BENCHMARKS.md, "The agent's wake-ups while
   * idle"); under load a longer interval saves a tenth of the agent's CPU at
   * most. 100 ms is not the default: with it the scheduler e2e tests failed in
   * the emulated 6.12 guest in two full runs of two (intervals short of their
   * sleeps), though they pass with it on the host (BENCHMARKS.md, "The same code
   * on a slower machine"): the emulator's timing, not understood further.
   * Discovery's ring asks for 50 ms, and the shared timer takes the shortest.
   */
  ringIdleMs: 20,
  /** The span export queue (src/export/export-pipeline.ts). */
  export: {
    /** Spans held at most, queued and in flight. */
    maxQueueSize: 16384,
    /** Spans per export at most. */
    maxBatchSize: 2048,
    /** Encoded bytes per export at most: exact for OTLP, estimated for other exporters (the Collector's gRPC limit is 4 MiB). */
    maxBatchBytes: 2 * 1024 * 1024,
    /** A partial batch waits at most this long. */
    scheduledDelayMs: 500,
    /**
     * First retry delay; doubles up to retryMaxMs, ±20 % jitter. The cap is low so
     * that export resumes within seconds of the Collector's return, however long
     * the outage (a retry against a Collector that is away is one refused connection).
     */
    retryInitialMs: 250,
    retryMaxMs: 2_000,
    /** grpc-js's reconnect backoff (its own default grows to 120 s), src/export/grpc-transport.ts. */
    grpcInitialReconnectBackoffMs: 250,
    grpcMaxReconnectBackoffMs: 1_000,
    /** shutdown() waits this long for the queue to drain. */
    shutdownTimeoutMs: 10_000,
  },
} as const;
