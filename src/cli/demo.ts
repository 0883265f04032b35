/**
 * `kspan demo`: the main job on an embedded default. It starts two example
 * services and a load driver, with a lossy network path between the services,
 * traces both services with the agent of `kspan run` (in this process), and
 * shows whole traces with the kernel's spans under the application's:
 *
 *   client netns                                           server netns (INPUT: 5 % dropped)
 *   driver ──HTTP, traceparent──► frontend (native C, ──veth──► backend (Node 24, NodeSDK +
 *                                 otel_thread_ctx_v1)            kspan/publisher)
 *
 * With no endpoint, the agent exports to an in-process exporter,
 * and the trees are printed at the end. With --otlp-endpoint, the agent exports
 * there, and the demo sends the services' own spans there too (they cannot reach
 * it from their namespaces), so Jaeger shows the whole traces.
 *
 * Everything it starts (processes, namespaces with their veth and iptables
 * rule, BPF programs) is removed on every way out: the end of --duration or
 * --requests, SIGINT/SIGTERM/SIGHUP (first: stop driving and report; second:
 * clean up and exit now), and errors.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { CommandConfig } from '../core/config.ts';
import { KspanError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { exportSpansLost, exportTarget, type ExportTarget } from '../export/export-pipeline.ts';
import { createOtlpExporter } from '../export/otlp-exporter.ts';
import { buildFrontend } from '../demo/frontend-build.ts';
import { createLossyLink, removeStaleNamespaces, type LossyLink } from '../demo/lossy-link.ts';
import { AppReadableSpan, CollectingExporter, parseAppSpan, ServiceResources, type DemoSpan } from '../demo/demo-spans.ts';
import { killAllSync, ServiceProcess, type JsonLine } from '../demo/service-process.ts';
import { groupTraces, pickTraces, renderTrace } from '../demo/trace-tree.ts';
import { labelled } from '../export/columns.ts';
import { summaryLines } from '../demo/summary.ts';
import { startAgent, type AgentHandle } from './run.ts';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DEMO_DIR = `${REPO_ROOT}demo/`;
// The package entry, as a service loads it: it takes the compiled publisher while dist/ is current.
const PUBLISHER_REGISTER = `${REPO_ROOT}src/publisher/register.mjs`;
const START_TIMEOUT_MS = 30_000;
/** After the driver stops: the last responses land and the kernel closes idle aggregates (500 ms). */
const SETTLE_MS = 1500;

/** `kspan demo`'s configuration (src/core/config.ts: its defaults, 20 s and log level warn, are there). */
export type DemoConfig = CommandConfig<'demo'>;

export async function demoCommand(config: DemoConfig, log: Logger): Promise<number> {
  if (process.getuid?.() !== 0) {
    throw new KspanError('KSPAN_ERR_PRIVILEGE', 'kspan demo creates network namespaces and loads BPF programs', {
      hint: 'run it as root (sudo make demo)',
    });
  }
  for (const f of ['frontend.c', 'backend.cjs', 'driver.mjs']) {
    if (!existsSync(DEMO_DIR + f)) throw new KspanError('KSPAN_ERR_USAGE', `demo file missing: ${DEMO_DIR}${f}`);
  }
  return new Demo(config, log).run();
}

const out = (text = '') => void process.stdout.write(`${text}\n`);

/** A signal arrived while the demo was still starting: nothing to report, clean up and exit 130. */
class Interrupted extends Error {}

class Demo {
  readonly #opts: DemoConfig;
  /** Where every span goes: OTLP when an endpoint is configured, else this terminal. */
  readonly #target: ExportTarget;
  readonly #log: Logger;
  readonly #appSpans: DemoSpan[] = [];
  readonly #badLines = { count: 0 };
  #link: LossyLink | null = null;
  #sink: CollectingExporter | null = null;
  #agent: AgentHandle | null = null;
  #agentStopped = false;
  readonly #procs: ServiceProcess[] = [];
  #driver: ServiceProcess | null = null;
  #signals = 0;
  #abort: ((why: string) => void) | null = null;

  constructor(opts: DemoConfig, log: Logger) {
    this.#opts = opts;
    this.#target = exportTarget({ ...opts, console: false });
    this.#log = log;
  }

  async run(): Promise<number> {
    const onSignal = (sig: NodeJS.Signals) => this.#onSignal(sig);
    const onExit = () => this.#cleanupSync();
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
    process.on('exit', onExit);
    try {
      return await this.#main();
    } catch (err) {
      if (err instanceof Interrupted) {
        out(`${err.message}; cleaning up`);
        return 130;
      }
      throw err;
    } finally {
      await this.#cleanup();
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, onSignal);
      process.off('exit', onExit);
    }
  }

  #onSignal(sig: NodeJS.Signals): void {
    this.#signals++;
    if (this.#signals === 1) {
      if (this.#driver) {
        out(`\n${sig}: stopping the traffic; the results so far follow (${sig} again to quit at once)`);
        if (this.#driver.alive) this.#driver.child.kill('SIGTERM');
      } else this.#abort?.(sig);
      return;
    }
    this.#cleanupSync();
    process.exit(130);
  }

  /** Rejects when a signal arrives first (during set-up, which has nothing to report yet). */
  #interruptible<T>(p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const interrupted = (why: string) => reject(new Interrupted(`demo interrupted (${why}) while starting`));
      if (this.#signals) return interrupted('signal');
      this.#abort = interrupted;
      p.then(resolve, reject).finally(() => (this.#abort = null));
    });
  }

  #start(name: string, ns: string, argv: string[], env: NodeJS.ProcessEnv): ServiceProcess {
    const p = new ServiceProcess(name, this.#link!.execPrefix(ns), argv, (l) => this.#onLine(p, l), env);
    this.#procs.push(p);
    return p;
  }

  #onLine(p: ServiceProcess, line: JsonLine): void {
    if (!('span' in line)) return;
    const s = parseAppSpan(line, p.name === 'driver' ? null : p.pid);
    if (s) this.#appSpans.push(s);
    else this.#badLines.count++;
  }

  async #main(): Promise<number> {
    const o = this.#opts;
    const durationS = o.duration!; // the demo has a default (20 s)
    const stale = removeStaleNamespaces();
    if (stale.length) this.#log.warn({ namespaces: stale }, 'removed namespaces left by a killed demo');
    const frontendExe = buildFrontend(`${DEMO_DIR}frontend.c`);
    this.#link = createLossyLink(o.loss);
    const link = this.#link;
    const env = (service: string) => ({ ...process.env, OTEL_SERVICE_NAME: service });
    const node = [process.execPath, '--disable-warning=ExperimentalWarning'];

    const backend = this.#start('backend', link.server, [...node, '--import', PUBLISHER_REGISTER, `${DEMO_DIR}backend.cjs`], env('demo-backend'));
    const beReady = await this.#interruptible(backend.waitFor((l) => l.ready === true, START_TIMEOUT_MS));
    const frontend = this.#start('frontend', link.client, [frontendExe, '--backend', `${link.serverAddr}:${Number(beReady.port)}`], env('demo-frontend'));
    const feReady = await this.#interruptible(frontend.waitFor((l) => l.ready === true, START_TIMEOUT_MS));

    if (this.#target.kind === 'console') this.#sink = new CollectingExporter();
    // The agent reads the OTEL_EXPORTER_OTLP_* variables as `kspan run` does; only flags are passed on.
    const flag = (key: 'otlpEndpoint' | 'otlpProtocol') => (o.origins[key].source === 'flag' ? o[key] : undefined);
    this.#agent = startAgent(
      {
        pids: [frontend.pid, backend.pid],
        exporter: this.#sink ?? undefined,
        otlpEndpoint: flag('otlpEndpoint'),
        otlpProtocol: flag('otlpProtocol'),
      },
      this.#log,
    );
    const exportedTo = this.#target.kind === 'otlp' ? (this.#target.endpoint ?? 'the OTLP exporter\'s default endpoint') : 'this terminal';
    const reader = this.#agent.session.reader;
    const context = (pid: number) => {
      const t = reader.target(pid);
      return t?.scheme ? `${t.scheme}${t.model ? ` (${t.model})` : ''}` : `no thread context yet${t?.reason ? `: ${t.reason}` : ''}`;
    };
    out(`kspan demo: driver → frontend → backend, ${(o.loss * 100).toFixed(1)} % of packets dropped on the backend's side`);
    const line = (label: string, text: string) => labelled(`  ${label}`, 12, text).forEach((l) => out(l));
    line('frontend', `native C, pid ${frontend.pid}, netns ${link.client}: ${context(frontend.pid)}`);
    line('backend', `Node ${process.versions.node} + OpenTelemetry SDK + kspan/publisher, pid ${backend.pid}, netns ${link.server} (${link.serverAddr}): ${context(backend.pid)}`);
    line('agent', `${this.#agent.session.ioPath} hooks; spans to ${exportedTo}`);

    const startedAt = Date.now();
    const driverArgs = [...node, `${DEMO_DIR}driver.mjs`, '--url', `http://127.0.0.1:${Number(feReady.port)}`, '--duration', String(durationS)];
    if (o.requests) driverArgs.push('--requests', String(o.requests));
    this.#driver = this.#start('driver', link.client, driverArgs, process.env);
    line('driver', `pid ${this.#driver.pid}, netns ${link.client}`);
    out(`driving traffic for ${durationS} s${o.requests ? ` or ${o.requests} requests` : ''} …`);
    let done: JsonLine | null = null;
    if (this.#signals === 0) {
      done = await this.#driver
        .waitFor((l) => l.done === true, (durationS + 60) * 1000)
        .catch((err: unknown) => {
          if (this.#signals === 0) throw err;
          return null;
        });
    } else this.#driver.child.kill('SIGTERM');
    await this.#driver.exited;
    const drivenS = (Date.now() - startedAt) / 1000;
    await new Promise((r) => setTimeout(r, SETTLE_MS));

    // The agent first: it flushes the kernel's open aggregates while the targets still run.
    await this.#stopAgent();
    const stats = this.#agent.pipeline.stats();
    const kernelCounters = this.#agent.session.counters();
    const loss = {
      dropped: link.droppedPackets(),
      retransClient: link.retransSegs(link.client),
      retransServer: link.retransSegs(link.server),
    };
    const backendContext = context(backend.pid);
    await Promise.all(this.#procs.map((p) => p.stop()));

    const kernelSpans = this.#sink?.spans ?? [];
    const all = [...this.#appSpans, ...kernelSpans];
    if (o.spansOut) writeFileSync(o.spansOut, all.map(spanJson).join(''));
    if (this.#sink) {
      const traces = groupTraces(all);
      for (const { trace, why } of pickTraces(traces, o.traces)) out(`\n${renderTrace(trace, why).trimEnd()}`);
    } else {
      await this.#exportAppSpans();
    }

    const requests = Number(done?.requests ?? this.#appSpans.filter((s) => s.service === 'demo-driver').length);
    const summary = summaryLines({
      requests,
      drivenS,
      failed: this.#appSpans.filter((s) => s.service === 'demo-driver' && s.error).length,
      stoppedEarly: this.#signals > 0,
      appSpans: this.#appSpans,
      kernelSpans: this.#sink ? kernelSpans : null,
      exported: { spans: stats.export.exported, to: exportedTo },
      records: { accept: stats.correlator.recordsByType.accept, retransmit: stats.correlator.recordsByType.retransmit },
      backendContext,
      dropped: loss.dropped,
      retransSegs: { frontend: loss.retransClient, backend: loss.retransServer },
      lost: {
        ringBufferFull: kernelCounters.KSPAN_C_RINGBUF_FULL,
        socketTableFull: kernelCounters.KSPAN_C_SOCK_TABLE_FULL,
        decodeErrors: kernelCounters.decode_errors,
        exportDropped: exportSpansLost(stats.export),
        badSpanLines: this.#badLines.count,
      },
    });
    out();
    for (const l of summary) out(l);
    if (!this.#sink) {
      // No kernel spans here to choose by: pick among the application's traces.
      const picks = pickTraces(groupTraces(this.#appSpans).map((t) => ({ ...t, kernelSpans: 1 })), o.traces);
      for (const [i, { trace, why }] of picks.entries()) {
        out(`  ${i ? ' '.repeat(19) : 'traces to look up  '}${trace.traceId}  ${(Number(trace.durationNs) / 1e6).toFixed(1)} ms, ${why}`);
      }
    }
    if (stats.export.exported === 0 && (this.#sink ? kernelSpans.length === 0 : true)) {
      out('no kernel spans were produced: run `kspan doctor`');
      return 1;
    }
    return 0;
  }

  /** With an OTLP endpoint: the services' own spans go there too, one Resource per service. */
  async #exportAppSpans(): Promise<void> {
    const target = this.#target;
    if (target.kind !== 'otlp') return;
    const exporter = createOtlpExporter(target);
    const resources = new ServiceResources();
    const spans = this.#appSpans.map((s) => new AppReadableSpan(s, resources.for(s.service, s.pid)));
    for (let i = 0; i < spans.length; i += 512) {
      const result = await new Promise<{ code: number; error?: Error }>((resolve) => exporter.export(spans.slice(i, i + 512), resolve));
      if (result.code !== 0) {
        out(`  could not export the application's spans: ${result.error?.message ?? 'failed'}`);
        break;
      }
    }
    await exporter.shutdown();
  }

  async #stopAgent(): Promise<void> {
    if (!this.#agent || this.#agentStopped) return;
    this.#agentStopped = true;
    await this.#agent.stop();
  }

  async #cleanup(): Promise<void> {
    try {
      await this.#stopAgent();
    } catch (err) {
      this.#log.error({ err }, 'demo: stopping the agent failed');
    }
    await Promise.all(this.#procs.map((p) => p.stop()));
    this.#link?.remove();
    this.#link = null;
    this.#sink = null;
  }

  /** From 'exit' or a second signal: no awaiting. The kernel drops the BPF programs with our fds. */
  #cleanupSync(): void {
    killAllSync();
    this.#link?.remove();
    this.#link = null;
  }
}

function spanJson(s: DemoSpan): string {
  return `${JSON.stringify({
    trace_id: s.traceId,
    span_id: s.spanId,
    parent_span_id: s.parentSpanId,
    name: s.name,
    kind: s.kind,
    service: s.service,
    pid: s.pid,
    kernel: s.kernel,
    start_ns: s.startNs.toString(),
    end_ns: s.endNs.toString(),
    error: s.error,
    events: s.events.map((e) => ({ name: e.name, time_ns: e.timeNs.toString(), attrs: e.attrs })),
    attrs: s.attrs,
  })}\n`;
}
