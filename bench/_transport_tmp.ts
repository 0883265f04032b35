import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { createEncodedOtlpExporter } from '/work/main/src/export/export-pipeline.ts';
import { KernelSpanEncoder, type EncodedSpan } from '/work/main/src/export/span-encoder.ts';
import { SocketCorrelator } from '/work/main/src/spans/socket-correlator.ts';
import { ctx, FakeSocket } from '/work/main/test/helpers/kernel-records.ts';
const child = spawn(process.execPath, ['/work/main/test/helpers/otlp-receiver.ts', '--no-decode'], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
const [line] = (await once(child.stdout!, 'data')) as [Buffer];
const { port } = JSON.parse(line.toString());
const resource = resourceFromAttributes({ 'service.name': 'bench-server', 'process.pid': 4242 });
const encoder = new KernelSpanEncoder({ clockOffsetNs: 1_767_225_600_000_000_000n, resourceFor: () => resource });
const N = Number(process.env.BATCH ?? 2048);
const batch: EncodedSpan[] = [];
const corr = new SocketCorrelator({ emit: (k) => { if (batch.length < N) batch.push(encoder.encode(k)); }, clock: 'records' });
const socks = Array.from({ length: 64 }, (_, i) => new FakeSocket({ cookie: 100n + BigInt(i), role: 'server', pid: 4242, tid: 4243 }));
let t = 1_000_000_000n;
for (let i = 0; i < N * 2; i++) { const s = socks[i % 64]; const c = ctx(i + 1); corr.push(s.recv(null, 300, 1, t, t + 2000n)); corr.push(s.send(c, 2000, 2, t + 20000n, t + 30000n)); t += 10000n; }
corr.flush();
const exporter = createEncodedOtlpExporter({ kind: 'otlp', protocol: 'grpc', endpoint: `http://127.0.0.1:${port}` });
const send = () => new Promise<void>((res, rej) => exporter.export(batch, (r) => (r.code === 0 ? res() : rej(r.error))));
await send();
const times = Math.round(600_000 / batch.length);
for (let round = 0; round < 3; round++) {
  const c0 = process.cpuUsage();
  for (let i = 0; i < times; i++) await send();
  const d = process.cpuUsage(c0);
  console.log(`batch ${batch.length}: ${Math.round(times * batch.length / ((d.user + d.system) / 1e6))} spans/cpu-s user ${(d.user / 1e3).toFixed(0)} ms sys ${(d.system / 1e3).toFixed(0)} ms`);
}
await exporter.shutdown();
child.kill();
