/**
 * Where kspan's own metrics go: a Prometheus endpoint (--metrics-listen,
 * http://ADDR/metrics, exposition by @opentelemetry/exporter-prometheus's
 * serializer) and, optionally, OTLP gRPC pushes (--metrics-otlp-endpoint), both
 * fed by one OpenTelemetry MeterProvider. The listening socket is bound before
 * the kernel is touched, so a port in use fails the start (KSPAN_ERR_METRICS).
 */
import { createServer, type Server } from 'node:http';
import { hostname } from 'node:os';
import type { AddressInfo } from 'node:net';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-grpc';
import { PrometheusExporter, PrometheusSerializer } from '@opentelemetry/exporter-prometheus';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { MeterProvider, PeriodicExportingMetricReader, type IMetricReader } from '@opentelemetry/sdk-metrics';
import type { ListenAddress } from '../core/config.ts';
import { KspanError } from '../core/errors.ts';
import type { Logger } from '../core/logger.ts';
import { KSPAN_VERSION } from '../core/version.ts';
import { registerMetrics, type AgentSnapshot } from './agent-metrics.ts';
import { addUnitSuffixes } from './prometheus-names.ts';

export interface MetricsOptions {
  listen?: ListenAddress;
  /** OTLP gRPC endpoint for pushes (http://host:4317). */
  otlpEndpoint?: string;
  otlpIntervalMs?: number;
  log: Logger;
}

const SCOPE = 'kspan';
export const METRICS_PATH = '/metrics';

export class AgentMetrics {
  readonly #provider: MeterProvider;
  readonly #pull: PrometheusExporter | undefined;
  #server: Server | undefined;
  readonly #serializer = new PrometheusSerializer();
  #unobserve: (() => void) | undefined;
  #closed = false;

  private constructor(provider: MeterProvider, pull: PrometheusExporter | undefined) {
    this.#provider = provider;
    this.#pull = pull;
  }

  /** Binds the endpoint and sets up the pushes; nothing is observed until observe(). */
  static async start(opts: MetricsOptions): Promise<AgentMetrics> {
    const readers: IMetricReader[] = [];
    // Used only as a pull reader: the HTTP server is ours, so that a listen
    // failure is an error of kspan's and the names get their unit suffixes.
    const pull = opts.listen ? new PrometheusExporter({ preventServerStart: true }) : undefined;
    if (pull) readers.push(pull);
    if (opts.otlpEndpoint) {
      const interval = opts.otlpIntervalMs ?? 60_000;
      readers.push(
        new PeriodicExportingMetricReader({
          exporter: new OTLPMetricExporter({ url: opts.otlpEndpoint }),
          exportIntervalMillis: interval,
          exportTimeoutMillis: Math.min(interval, 30_000),
        }),
      );
    }
    const provider = new MeterProvider({
      resource: resourceFromAttributes({
        'service.name': 'kspan',
        'service.version': KSPAN_VERSION,
        'host.name': hostname(),
        'process.pid': process.pid,
      }),
      readers,
    });
    const m = new AgentMetrics(provider, pull);
    if (opts.listen) {
      try {
        m.#server = await listen(opts.listen, (res) => m.#serve(res));
      } catch (err) {
        await provider.shutdown().catch(() => {});
        throw err;
      }
      opts.log.info({ metrics: m.url }, 'metrics');
    }
    return m;
  }

  /** The endpoint's URL, with the port the kernel chose for port 0. */
  get url(): string | undefined {
    const a = this.#server?.address() as AddressInfo | null | undefined;
    return a ? `http://${formatAddress(a)}${METRICS_PATH}` : undefined;
  }

  /** Reports what `snapshot` reads, at each scrape or push. */
  observe(snapshot: () => AgentSnapshot): void {
    this.#unobserve?.();
    this.#unobserve = registerMetrics(this.#provider.getMeter(SCOPE, KSPAN_VERSION), snapshot);
  }

  /** The exposition now (what GET /metrics answers). */
  async scrape(): Promise<string> {
    if (!this.#pull) return '';
    const { resourceMetrics } = await this.#pull.collect();
    return this.#serializer.serialize(addUnitSuffixes(resourceMetrics));
  }

  #serve(res: Response): void {
    this.scrape().then(
      (body) => res.ok(body),
      (err) => res.fail(err),
    );
  }

  /** Pushes once more over OTLP (final values), closes the endpoint. Idempotent. */
  async shutdown(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#provider.forceFlush().catch(() => {});
    await this.#provider.shutdown().catch(() => {});
    this.#unobserve?.();
    const server = this.#server;
    if (server) {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  }
}

interface Response {
  ok(body: string): void;
  fail(err: unknown): void;
}

function formatAddress(a: AddressInfo): string {
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

/** Starts the HTTP server on `addr`; GET /metrics calls `onScrape`. */
function listen(addr: ListenAddress, onScrape: (res: Response) => void): Promise<Server> {
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path !== METRICS_PATH) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: kspan serves ${METRICS_PATH}\n`);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    onScrape({
      ok: (body) => res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(body),
      fail: (err) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`# collecting metrics failed: ${String(err)}\n`),
    });
  });
  server.unref();
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const where = `${addr.host.includes(':') ? `[${addr.host}]` : addr.host}:${addr.port}`;
      reject(
        new KspanError('KSPAN_ERR_METRICS', `cannot serve metrics on ${where}: ${err.code ?? err.message}`, {
          hint:
            err.code === 'EADDRINUSE'
              ? 'another process listens there: give another --metrics-listen port (0 picks a free one)'
              : 'give an address of this host to --metrics-listen, e.g. 127.0.0.1:9464',
          cause: err,
        }),
      );
    });
    server.listen({ host: addr.host, port: addr.port }, () => resolve(server));
  });
}
