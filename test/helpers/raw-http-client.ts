/**
 * An HTTP/1.1 client that counts the bytes on the wire: it writes the request
 * bytes itself and counts every byte the socket delivers, so a test can compare
 * kernel byte counts with what really crossed the socket (status line, headers and
 * body), not with body lengths. Responses must carry Content-Length (Node's
 * `res.end(buffer)` does). One connection, requests one after another: keep-alive
 * reuses it, `Connection: close` reads to EOF.
 */
import net from 'node:net';

export interface RawExchange {
  /** Bytes of the request as written on the socket. */
  requestBytes: number;
  /** Bytes of the response as read from the socket: status line + headers + body. */
  responseBytes: number;
  status: number;
  headers: Record<string, string>;
  bodyBytes: number;
  /** The client's port: the server's kernel spans name it as network.peer.port. */
  localPort: number;
}

export interface RawRequestOptions {
  headers?: Record<string, string>;
  /** Stop reading for this long once the first byte arrives, so a big response backs up in the server. */
  pauseMs?: number;
}

export class RawHttpConnection {
  readonly keepAlive: boolean;
  readonly #port: number;
  #socket: net.Socket | null = null;
  #used = false;

  constructor(port: number, keepAlive: boolean) {
    this.#port = port;
    this.keepAlive = keepAlive;
  }

  get localPort(): number {
    return this.#socket?.localPort ?? 0;
  }

  async connect(): Promise<void> {
    this.#socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port: this.#port }, () => resolve(s));
      s.once('error', reject);
    });
  }

  /** Sends GET `path` and resolves when the whole response has been read. */
  request(path: string, opts: RawRequestOptions = {}): Promise<RawExchange> {
    const socket = this.#socket;
    if (!socket) throw new Error('not connected');
    if (this.#used && !this.keepAlive) throw new Error('Connection: close allows one request');
    this.#used = true;
    const lines = [`GET ${path} HTTP/1.1`, `Host: 127.0.0.1:${this.#port}`, `Connection: ${this.keepAlive ? 'keep-alive' : 'close'}`];
    for (const [k, v] of Object.entries(opts.headers ?? {})) lines.push(`${k}: ${v}`);
    const request = Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1');
    const localPort = socket.localPort!;

    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let received = 0;
      let head: { status: number; headers: Record<string, string>; headBytes: number; total: number } | undefined;
      let paused = false;
      const done = (ex: RawExchange | Error) => {
        socket.off('data', onData);
        socket.off('end', onEnd);
        socket.off('error', onError);
        if (ex instanceof Error) reject(ex);
        else resolve(ex);
      };
      const exchange = (): RawExchange => ({
        requestBytes: request.length,
        responseBytes: received,
        status: head!.status,
        headers: head!.headers,
        bodyBytes: received - head!.headBytes,
        localPort,
      });
      const onData = (c: Buffer) => {
        if (!paused && opts.pauseMs) {
          paused = true;
          socket.pause();
          setTimeout(() => socket.resume(), opts.pauseMs);
        }
        chunks.push(c);
        received += c.length;
        if (!head) {
          try {
            head = parseHead(Buffer.concat(chunks));
          } catch (err) {
            return done(err as Error);
          }
        }
        if (!head) return;
        if (received > head.total) done(new Error(`${received - head.total} bytes past the response (pipelining is not expected here)`));
        else if (received === head.total && this.keepAlive) done(exchange());
      };
      const onEnd = () => {
        if (!head || received !== head.total) done(new Error(`connection ended after ${received} bytes of the response`));
        else done(exchange());
      };
      const onError = (err: Error) => done(err);
      socket.on('data', onData);
      socket.on('end', onEnd);
      socket.on('error', onError);
      socket.write(request);
    });
  }

  close(): void {
    this.#socket?.destroy();
    this.#socket = null;
  }
}

/** Status, headers and the response's total size once the head is complete; undefined before. */
function parseHead(buf: Buffer): { status: number; headers: Record<string, string>; headBytes: number; total: number } | undefined {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return undefined;
  const [statusLine, ...fields] = buf.subarray(0, end).toString('latin1').split('\r\n');
  const headers: Record<string, string> = {};
  for (const f of fields) {
    const i = f.indexOf(':');
    headers[f.slice(0, i).trim().toLowerCase()] = f.slice(i + 1).trim();
  }
  const length = headers['content-length'];
  if (length === undefined) throw new Error(`response without Content-Length: ${statusLine}`);
  const headBytes = end + 4;
  return { status: Number(statusLine.split(' ')[1]), headers, headBytes, total: headBytes + Number(length) };
}
