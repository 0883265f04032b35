/**
 * The OTLP/gRPC transport under kspan's exporters: what
 * @opentelemetry/otlp-grpc-exporter-base's transport does (one unary
 * TraceService/Export call per request, bytes in and out, the configuration's
 * credentials, metadata, compression and user agent), with the channel's
 * reconnect backoff bounded.
 *
 * Why: grpc-js backs off its reconnects exponentially up to 120 s, and while it
 * waits every call fails at once with UNAVAILABLE. After a long Collector outage
 * the export would resume up to two minutes after the Collector came back. With
 * the backoff capped at TUNING.export.grpcMaxReconnectBackoffMs, and the
 * pipeline's own retry capped at TUNING.export.retryMaxMs, export resumes within
 * a few seconds of the Collector's return however long it was gone
 * (test/unit/spool-outage.test.ts measures it). The library's transport fixes its
 * channel options, hence this one.
 */
import * as grpc from '@grpc/grpc-js';
import type { ExportResponse, IExporterTransport } from '@opentelemetry/otlp-exporter-base';
import type { convertLegacyOtlpGrpcOptions } from '@opentelemetry/otlp-grpc-exporter-base';
import { TUNING } from '../core/config.ts';
import type { RequestBuffers } from './export-request.ts';
import { KSPAN_VERSION as VERSION } from '../core/version.ts';

/** The gRPC exporter's configuration (OTEL_EXPORTER_OTLP_* applied). */
export type OtlpGrpcConfiguration = ReturnType<typeof convertLegacyOtlpGrpcOptions>;

const GRPC_COMPRESSION_NONE = 0;
const GRPC_COMPRESSION_GZIP = 2;

/** The channel options kspan's gRPC exporters use. */
export function grpcChannelOptions(config: Pick<OtlpGrpcConfiguration, 'compression' | 'userAgent'>): grpc.ChannelOptions {
  const e = TUNING.export;
  const agent = `kspan/${VERSION}`;
  return {
    'grpc.default_compression_algorithm': config.compression === 'gzip' ? GRPC_COMPRESSION_GZIP : GRPC_COMPRESSION_NONE,
    'grpc.primary_user_agent': config.userAgent ? `${config.userAgent} ${agent}` : agent,
    'grpc.initial_reconnect_backoff_ms': e.grpcInitialReconnectBackoffMs,
    'grpc.max_reconnect_backoff_ms': e.grpcMaxReconnectBackoffMs,
  };
}

/** A unary method whose request and response are bytes, serialized elsewhere (both ends of TraceService/Export). */
export function rawUnaryMethod(path: string): grpc.MethodDefinition<Buffer, Buffer> {
  const identity = (b: Buffer): Buffer => b;
  return {
    path,
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  };
}

type ExportClient = grpc.Client & {
  export(req: Buffer, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Buffer) => void): void;
};

export class GrpcExportTransport implements IExporterTransport {
  readonly #config: OtlpGrpcConfiguration;
  readonly #path: string;
  readonly #service: string;
  readonly #buffers: RequestBuffers | undefined;
  #client: ExportClient | null = null;
  #metadata: grpc.Metadata | null = null;

  /**
   * `buffers`: the pool the serializer writes requests into. A request in one of
   * its buffers is sent as it is and the buffer given back once the call is over
   * (grpc-js frames a copy of the message before it writes; after the call's
   * callback nothing of it is read again); any other bytes are copied first.
   */
  constructor(config: OtlpGrpcConfiguration, service: string, path: string, buffers?: RequestBuffers) {
    this.#config = config;
    this.#service = service;
    this.#path = path;
    this.#buffers = buffers;
  }

  send(data: Uint8Array, timeoutMillis: number): Promise<ExportResponse> {
    const pooled = this.#buffers?.owns(data) ?? false;
    const request = pooled ? Buffer.from(data.buffer, data.byteOffset, data.byteLength) : Buffer.from(data);
    const done = (r: ExportResponse): ExportResponse => {
      if (pooled) this.#buffers!.give(data);
      return r;
    };
    if (!this.#client) {
      try {
        this.#metadata = this.#config.metadata();
        const Client = grpc.makeGenericClientConstructor({ export: rawUnaryMethod(this.#path) }, this.#service);
        this.#client = new Client(this.#config.url, this.#config.credentials(), grpcChannelOptions(this.#config)) as unknown as ExportClient;
      } catch (error) {
        return Promise.resolve(done({ status: 'failure', error: error as Error }));
      }
    }
    const client = this.#client;
    const metadata = this.#metadata!;
    return new Promise((resolve) => {
      client.export(request, metadata, { deadline: Date.now() + timeoutMillis }, (err, response) => {
        resolve(done(err ? { status: 'failure', error: err } : { status: 'success', data: response }));
      });
    });
  }

  shutdown(): void {
    this.#client?.close();
    this.#client = null;
  }
}
