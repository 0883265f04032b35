/**
 * A real OTLP trace receiver for tests and benchmarks: gRPC
 * (opentelemetry.proto.collector.trace.v1.TraceService/Export on @grpc/grpc-js) or
 * HTTP/protobuf (POST /v1/traces), decoding with our own proto subset
 * (src/proto/otlp.ts). It can be stopped and restarted on the same port (collector
 * outage) and can answer UNAVAILABLE (or any status) on demand.
 *
 * Run as a script (`node test/helpers/otlp-receiver.ts [--http] [--no-decode]
 * [--fixed-window]`) it serves in a child process: prints `{"port":N}` on stdout,
 * answers `count` IPC messages with `{spans, requests, bytes}`.
 *
 * Its HTTP/2 flow-control windows grow as the OpenTelemetry Collector's do. The
 * Collector serves gRPC with grpc-go, whose BDP estimator sets a connection's
 * windows to twice what arrived in one ping round trip (at most 16 MiB): with
 * 1 MiB export requests on loopback, about 1.9 MB within the first few requests.
 * grpc-js's server keeps HTTP/2's 64 KiB, so a sender would stop for a
 * WINDOW_UPDATE every 64 KiB, a cost no Collector makes it pay. Here, a request of
 * N bytes grows the windows of the server's sessions to 2 N (16 MiB at most);
 * `growWindows: false` (`--fixed-window`) keeps 64 KiB.
 */
import http from 'node:http';
import type http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { rawUnaryMethod } from '../../src/export/grpc-transport.ts';
import {
  attributesToObject,
  ExportTraceServiceRequestType,
  ExportTraceServiceResponseType,
  TO_OBJECT,
  type AttrValue,
  type PlainKeyValue,
} from '../../src/proto/otlp.ts';
import { scaled } from './timeouts.ts';

export const TRACE_EXPORT_PATH = '/opentelemetry.proto.collector.trace.v1.TraceService/Export';

export interface ReceivedEvent {
  name: string;
  timeUnixNano: bigint;
  attributes: Record<string, AttrValue>;
}

export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** '' for a root span. */
  parentSpanId: string;
  traceState: string;
  flags: number;
  name: string;
  kind: number;
  startTimeUnixNano: bigint;
  endTimeUnixNano: bigint;
  attributes: Record<string, AttrValue>;
  events: ReceivedEvent[];
  status: { code: number; message: string };
  resource: Record<string, AttrValue>;
  scope: { name: string; version: string };
}

export interface OtlpReceiverOptions {
  protocol?: 'grpc' | 'http';
  /** false: count spans without keeping them (benchmarks). Default true. */
  keep?: boolean;
  /** gRPC: grow the HTTP/2 windows with the requests, as grpc-go does (the module comment). Default true. */
  growWindows?: boolean;
}

/** HTTP/2's initial flow-control window (RFC 9113, 6.9.2), what grpc-js's server keeps. */
const HTTP2_DEFAULT_WINDOW = 65_535;
/** The largest window grpc-go's BDP estimator sets (bdpLimit). */
const BDP_LIMIT = 16 << 20;

/** Sets a session's connection window and its streams' initial window (new and open streams) to `bytes`. */
function setWindow(session: http2.ServerHttp2Session, bytes: number): void {
  if (session.destroyed || session.closed) return;
  session.setLocalWindowSize(bytes);
  session.settings({ initialWindowSize: bytes });
}

interface PlainSpan {
  traceId?: Uint8Array;
  spanId?: Uint8Array;
  parentSpanId?: Uint8Array;
  traceState?: string;
  flags?: number;
  name?: string;
  kind?: number;
  startTimeUnixNano?: string;
  endTimeUnixNano?: string;
  attributes?: PlainKeyValue[];
  events?: { name?: string; timeUnixNano?: string; attributes?: PlainKeyValue[] }[];
  status?: { code?: number; message?: string };
}
interface PlainRequest {
  resourceSpans?: {
    resource?: { attributes?: PlainKeyValue[] };
    scopeSpans?: { scope?: { name?: string; version?: string }; spans?: PlainSpan[] }[];
  }[];
}

const hex = (b: Uint8Array | undefined): string => (b ? Buffer.from(b).toString('hex') : '');

/** Decodes an ExportTraceServiceRequest into flat spans. */
export function decodeExportRequest(bytes: Uint8Array): ReceivedSpan[] {
  const req = ExportTraceServiceRequestType.toObject(
    ExportTraceServiceRequestType.decode(bytes),
    TO_OBJECT,
  ) as PlainRequest;
  const out: ReceivedSpan[] = [];
  for (const rs of req.resourceSpans ?? []) {
    const resource = attributesToObject(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      const scope = { name: ss.scope?.name ?? '', version: ss.scope?.version ?? '' };
      for (const s of ss.spans ?? []) {
        out.push({
          traceId: hex(s.traceId),
          spanId: hex(s.spanId),
          parentSpanId: hex(s.parentSpanId),
          traceState: s.traceState ?? '',
          flags: s.flags ?? 0,
          name: s.name ?? '',
          kind: s.kind ?? 0,
          startTimeUnixNano: BigInt(s.startTimeUnixNano ?? 0),
          endTimeUnixNano: BigInt(s.endTimeUnixNano ?? 0),
          attributes: attributesToObject(s.attributes),
          events: (s.events ?? []).map((e) => ({
            name: e.name ?? '',
            timeUnixNano: BigInt(e.timeUnixNano ?? 0),
            attributes: attributesToObject(e.attributes),
          })),
          status: { code: s.status?.code ?? 0, message: s.status?.message ?? '' },
          resource,
          scope,
        });
      }
    }
  }
  return out;
}

/**
 * Counts the spans of a request by walking the wire format (no objects built):
 * ExportTraceServiceRequest.resource_spans(1) → ResourceSpans.scope_spans(2) →
 * ScopeSpans.spans(2). Cheap enough for benchmarks.
 */
export function countSpans(buf: Uint8Array): number {
  let n = 0;
  forEachField(buf, 0, buf.length, (f1, s1, e1) => {
    if (f1 !== 1) return;
    forEachField(buf, s1, e1, (f2, s2, e2) => {
      if (f2 !== 2) return;
      forEachField(buf, s2, e2, (f3) => {
        if (f3 === 2) n++;
      });
    });
  });
  return n;
}

/** Calls fn(field, start, end) for each length-delimited field in buf[pos, end). */
function forEachField(buf: Uint8Array, pos: number, end: number, fn: (field: number, start: number, end: number) => void): void {
  const varint = (): number => {
    let v = 0, mul = 1, b: number;
    do {
      b = buf[pos++];
      v += (b & 0x7f) * mul;
      mul *= 128;
    } while (b & 0x80);
    return v;
  };
  while (pos < end) {
    const tag = varint();
    const field = Math.floor(tag / 8), wire = tag & 7;
    if (wire === 0) varint();
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      const len = varint();
      fn(field, pos, pos + len);
      pos += len;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
}

const GRPC_TO_HTTP: Record<number, number> = { 14: 503, 4: 504, 8: 429 };

/** A gRPC service of one unary `Export` method at `path` whose messages stay raw bytes (decoded by the handler). */
export function rawExportService(path: string): grpc.ServiceDefinition {
  return { Export: rawUnaryMethod(path) };
}

export class OtlpReceiver {
  readonly protocol: 'grpc' | 'http';
  readonly spans: ReceivedSpan[] = [];
  /** Export requests answered with success. */
  requests = 0;
  /** Export requests answered with the injected failure. */
  refused = 0;
  spanCount = 0;
  bytes = 0;
  readonly #keep: boolean;
  readonly #growWindows: boolean;
  /** The gRPC sessions' window now (grown by the largest request so far). */
  #window = HTTP2_DEFAULT_WINDOW;
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  #port = 0;
  #grpc: grpc.Server | null = null;
  #http: http.Server | null = null;
  #fail: { code: number; remaining: number } | null = null;
  #reject: { remaining: number; message: string } | null = null;
  /** Spans reported rejected in partial successes (rejectNext). */
  rejectedReported = 0;
  #waiters: { n: number; resolve: () => void }[] = [];

  constructor(options: OtlpReceiverOptions = {}) {
    this.protocol = options.protocol ?? 'grpc';
    this.#keep = options.keep ?? true;
    this.#growWindows = options.growWindows ?? true;
  }

  /** The gRPC sessions' HTTP/2 flow-control window, in bytes. */
  get window(): number {
    return this.#window;
  }

  get port(): number {
    return this.#port;
  }

  /** gRPC: http://127.0.0.1:PORT; HTTP: http://127.0.0.1:PORT/v1/traces. */
  get endpoint(): string {
    return this.protocol === 'grpc' ? `http://127.0.0.1:${this.#port}` : `http://127.0.0.1:${this.#port}/v1/traces`;
  }

  get running(): boolean {
    return this.#grpc !== null || this.#http !== null;
  }

  /** Listens on 127.0.0.1:port (0 = ephemeral, or the previous port on restart). */
  async start(port = this.#port): Promise<number> {
    if (this.running) throw new Error('receiver already running');
    this.#port = this.protocol === 'grpc' ? await this.#startGrpc(port) : await this.#startHttp(port);
    return this.#port;
  }

  /** Stops at once, dropping open connections (like a Collector that went away). */
  async stop(): Promise<void> {
    if (this.#grpc) {
      this.#grpc.forceShutdown();
      this.#grpc = null;
      this.#window = HTTP2_DEFAULT_WINDOW; // a new server starts from the default again
    }
    if (this.#http) {
      const s = this.#http;
      this.#http = null;
      s.closeAllConnections();
      await new Promise<void>((resolve) => s.close(() => resolve()));
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start(this.#port);
  }

  /** Answer the next `times` exports (default: until cleared) with a gRPC status code. */
  failWith(code: number | null, times = Infinity): void {
    this.#fail = code === null ? null : { code, remaining: times };
  }

  clear(): void {
    this.spans.length = 0;
    this.spanCount = 0;
    this.requests = 0;
    this.refused = 0;
    this.bytes = 0;
  }

  /** Resolves when at least n spans have arrived in total. */
  waitForSpans(n: number, timeoutMs = 10_000): Promise<ReceivedSpan[]> {
    if (this.spanCount >= n) return Promise.resolve(this.spans);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new Error(`timed out waiting for ${n} spans (got ${this.spanCount})`));
      }, scaled(timeoutMs));
      const waiter = {
        n,
        resolve: () => {
          clearTimeout(timer);
          resolve(this.spans);
        },
      };
      this.#waiters.push(waiter);
    });
  }

  /** The injected failure for this request, if any (counts it down). */
  #takeFailure(): number | null {
    const f = this.#fail;
    if (!f) return null;
    if (--f.remaining <= 0) this.#fail = null;
    this.refused++;
    return f.code;
  }

  /**
   * The next `requests` requests taken are answered with a partial success
   * that rejects all their spans (rejected_spans, error_message), as a
   * Collector over its quota does.
   */
  rejectNext(requests: number, message = 'rejected by the test receiver'): void {
    this.#reject = { remaining: requests, message };
  }

  /** The response to a request of `spans` spans that was taken. */
  #response(spans: number): Buffer {
    const r = this.#reject;
    if (!r) return Buffer.from(ExportTraceServiceResponseType.encode({}).finish());
    if (--r.remaining <= 0) this.#reject = null;
    this.rejectedReported += spans;
    return Buffer.from(ExportTraceServiceResponseType.encode({ partialSuccess: { rejectedSpans: spans, errorMessage: r.message } }).finish());
  }

  /** Takes a request; its span count. */
  #accept(body: Uint8Array): number {
    this.requests++;
    this.bytes += body.length;
    let n: number;
    if (this.#keep) {
      const spans = decodeExportRequest(body);
      for (const s of spans) this.spans.push(s);
      n = spans.length;
    } else {
      n = countSpans(body);
    }
    this.spanCount += n;
    const ready = this.#waiters.filter((w) => this.spanCount >= w.n);
    this.#waiters = this.#waiters.filter((w) => this.spanCount < w.n);
    for (const w of ready) w.resolve();
    return n;
  }

  #startGrpc(port: number): Promise<number> {
    const server = new grpc.Server();
    server.addService(
      rawExportService(TRACE_EXPORT_PATH),
      {
        Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
          const code = this.#takeFailure();
          if (code !== null) {
            callback({ code, details: 'injected failure' });
            return;
          }
          this.#grow(call.request.length);
          let spans: number;
          try {
            spans = this.#accept(call.request);
          } catch (err) {
            callback({ code: grpc.status.INVALID_ARGUMENT, details: String(err) });
            return;
          }
          callback(null, this.#response(spans));
        },
      },
    );
    return new Promise((resolve, reject) => {
      server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => {
        if (err) return reject(err);
        this.#grpc = server;
        try {
          this.#watchSessions(server);
        } catch (e) {
          server.forceShutdown();
          this.#grpc = null;
          return reject(e);
        }
        resolve(bound);
      });
    });
  }

  /** Follows the server's HTTP/2 sessions, to grow their windows (grpc-js does not expose them). */
  #watchSessions(server: grpc.Server): void {
    if (!this.#growWindows) return;
    const servers = (server as unknown as { http2Servers?: unknown }).http2Servers;
    if (!(servers instanceof Map)) throw new Error('otlp-receiver: grpc-js no longer keeps its HTTP/2 servers in `http2Servers`; the windows cannot grow');
    for (const h of servers.keys() as Iterable<http2.Http2Server>) {
      h.on('session', (session: http2.ServerHttp2Session) => {
        this.#sessions.add(session);
        session.once('close', () => this.#sessions.delete(session));
        if (this.#window > HTTP2_DEFAULT_WINDOW) setWindow(session, this.#window);
      });
    }
  }

  /** A request of `bytes` arrived: windows grow to twice that, as grpc-go's BDP estimator sets them. */
  #grow(bytes: number): void {
    const want = Math.min(BDP_LIMIT, 2 * bytes);
    if (!this.#growWindows || want <= this.#window) return;
    this.#window = want;
    for (const s of this.#sessions) setWindow(s, want);
  }

  #startHttp(port: number): Promise<number> {
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (req.method !== 'POST' || req.url !== '/v1/traces') {
          res.writeHead(404).end();
          return;
        }
        const code = this.#takeFailure();
        if (code !== null) {
          res.writeHead(GRPC_TO_HTTP[code] ?? 400).end();
          return;
        }
        let spans: number;
        try {
          spans = this.#accept(Buffer.concat(chunks));
        } catch {
          res.writeHead(400).end();
          return;
        }
        res.writeHead(200, { 'content-type': 'application/x-protobuf' });
        res.end(this.#response(spans));
      });
    });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        this.#http = server;
        resolve((server.address() as { port: number }).port);
      });
    });
  }
}

/** Spans of one trace indexed by name, for assertions. */
export function spansByName(spans: ReceivedSpan[], traceId?: string): Map<string, ReceivedSpan[]> {
  const m = new Map<string, ReceivedSpan[]>();
  for (const s of spans) {
    if (traceId && s.traceId !== traceId) continue;
    const list = m.get(s.name) ?? [];
    list.push(s);
    m.set(s.name, list);
  }
  return m;
}

if (import.meta.main) {
  const receiver = new OtlpReceiver({
    protocol: process.argv.includes('--http') ? 'http' : 'grpc',
    keep: !process.argv.includes('--no-decode'),
    growWindows: !process.argv.includes('--fixed-window'),
  });
  const port = await receiver.start(0);
  process.stdout.write(JSON.stringify({ port }) + '\n');
  process.on('message', (m: unknown) => {
    if (m === 'count') {
      process.send!({ spans: receiver.spanCount, requests: receiver.requests, bytes: receiver.bytes });
    } else if (m === 'stop') {
      void receiver.stop().then(() => process.exit(0));
    }
  });
  process.on('disconnect', () => void receiver.stop().then(() => process.exit(0)));
}
