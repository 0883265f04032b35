/**
 * Says once when the publisher has nothing to publish although the service is
 * serving: no OpenTelemetry span ever became active, so kspan can hang nothing
 * under the service's spans. The usual causes, told apart by what the publisher
 * saw: no SDK started (no context manager registered), the context manager
 * disabled afterwards, or an SDK whose instrumentation patched nothing (an ES
 * module app without OpenTelemetry's loader hook).
 *
 * Traffic is counted through Node's built-in diagnostics channels (HTTP
 * requests, accepted TCP connections); once a span has been seen, or the warning
 * given, the channels are unsubscribed and the timer stopped: no cost after. An
 * accepted connection counts only once it has carried a byte: a TCP health check
 * (a load balancer's, Kubernetes' tcpSocket probe) connects and closes, and no
 * instrumentation makes a span for it.
 */
import diagnostics_channel from 'node:diagnostics_channel';

export const NO_SPAN_WARNING_CODE = 'KSPAN_PUBLISHER_NO_SPANS';

export interface NoSpanState {
  /** Context managers the publisher wrapped. */
  managers: number;
  /** Spans that became active (ThreadContexts created). */
  contexts: number;
  /** A context manager is registered in the OpenTelemetry API right now. */
  managerRegistered: boolean;
  /** Incoming HTTP requests seen. */
  requests: number;
  /** Accepted TCP connections that carried data. */
  connections: number;
}

/** An accepted connection as the watch sees it (a net.Socket). */
export interface SeenConnection {
  readonly bytesRead: number;
  readonly destroyed: boolean;
}

/** Connections followed at once until they carry data or close (the rest are not needed to decide). */
const MAX_FOLLOWED = 64;

const plural = (n: number, one: string) => `${n} ${one}${n === 1 ? '' : 's'}`;

/** The warning for this state, or null when there is nothing to say (yet). */
export function noSpanWarning(s: NoSpanState): string | null {
  if (s.contexts > 0 || s.requests + s.connections === 0) return null;
  const seen = s.requests ? `served ${plural(s.requests, 'HTTP request')}` : `accepted ${plural(s.connections, 'connection')} that carried data`;
  const head = `kspan/publisher: this process ${seen} but no OpenTelemetry span became active, so there is no trace context to publish`;
  if (s.managers === 0) {
    return `${head}: no OpenTelemetry SDK is running (no context manager was registered). Start one before the service ` +
      'serves requests (NodeSDK.start(), or a TracerProvider registered with the AsyncLocalStorage context manager).';
  }
  if (!s.managerRegistered) {
    return `${head}: the OpenTelemetry context manager was disabled (context.disable()). Register one again and pass it ` +
      'to startPublisher({ contextManager }).';
  }
  return `${head}: the SDK runs, but its instrumentation made no span. An ES module app needs OpenTelemetry's loader ` +
    "hook: register('@opentelemetry/instrumentation/hook.mjs', import.meta.url) (from node:module) in a file loaded with " +
    '--import before the app, which starts the SDK there; see the kspan README. Spans started without ' +
    'context.with() or startActiveSpan() never become active either.';
}

export interface NoSpanWatchOptions {
  /** The publisher's side of the state. */
  state: () => Pick<NoSpanState, 'managers' | 'contexts' | 'managerRegistered'>;
  warn: (message: string) => void;
  /** First look after this long, then as often until there is traffic or a span. Default 10 s. */
  afterMs?: number;
  /** Reports traffic until the returned function is called (default: Node's diagnostics channels). */
  watchTraffic?: (on: (traffic: Traffic) => void) => () => void;
  /** Calls `fn` every `ms` until the returned function is called (default: an unref'd setInterval). */
  every?: (fn: () => void, ms: number) => () => void;
}

export type Traffic = { kind: 'request' } | { kind: 'connection'; socket: SeenConnection };

function watchChannels(on: (traffic: Traffic) => void): () => void {
  const request = () => on({ kind: 'request' });
  const connection = (message: unknown) => on({ kind: 'connection', socket: (message as { socket: SeenConnection }).socket });
  diagnostics_channel.subscribe('http.server.request.start', request);
  diagnostics_channel.subscribe('net.server.socket', connection);
  return () => {
    diagnostics_channel.unsubscribe('http.server.request.start', request);
    diagnostics_channel.unsubscribe('net.server.socket', connection);
  };
}

function unrefInterval(fn: () => void, ms: number): () => void {
  const t = setInterval(fn, ms);
  t.unref();
  return () => clearInterval(t);
}

export class NoSpanWatch {
  readonly #opts: NoSpanWatchOptions;
  #requests = 0;
  /** Accepted connections that carried data. */
  #connections = 0;
  /** Accepted connections that have not carried data yet and are open. */
  readonly #followed = new Set<SeenConnection>();
  #stopTraffic: () => void;
  #stopTimer: () => void;
  #done = false;

  constructor(opts: NoSpanWatchOptions) {
    this.#opts = opts;
    this.#stopTraffic = (opts.watchTraffic ?? watchChannels)((t) => {
      if (t.kind === 'request') this.#requests++;
      else if (this.#followed.size < MAX_FOLLOWED) this.#followed.add(t.socket);
    });
    this.#stopTimer = (opts.every ?? unrefInterval)(() => this.check(), opts.afterMs ?? 10_000);
  }

  /** Looks once: warns if it should, and stops watching once decided. */
  check(): void {
    if (this.#done) return;
    for (const socket of this.#followed) {
      if (socket.bytesRead > 0) this.#connections++;
      if (socket.bytesRead > 0 || socket.destroyed) this.#followed.delete(socket);
    }
    const s = { ...this.#opts.state(), requests: this.#requests, connections: this.#connections };
    if (s.contexts > 0) return this.stop();
    const message = noSpanWarning(s);
    if (message === null) return;
    this.stop();
    this.#opts.warn(message);
  }

  stop(): void {
    if (this.#done) return;
    this.#done = true;
    this.#stopTraffic();
    this.#stopTimer();
    this.#followed.clear();
  }
}
