// The example Node service: GET /data?bytes=N answers N bytes (default 50 000,
// at most 4 MB). Started with
//   node --import ./telemetry.mjs --import kspan/publisher/register app.mjs
// so kspan/publisher mirrors its active span where kspan's BPF reads it.
import http from 'node:http';

const MAX = 4 * 1024 * 1024;
const port = Number(process.env.PORT ?? 8081);

http
  .createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const n = Math.min(MAX, Math.max(0, Number(url.searchParams.get('bytes') ?? 50_000) || 0));
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': n });
    res.end(Buffer.alloc(n, 0x61));
  })
  .listen(port, '0.0.0.0');
