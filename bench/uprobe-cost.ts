/**
 * Cost of function spans per call, against the anchors' figures for a probe
 * (uprobe ≈ 1.3 µs, uretprobe ≈ 1.9 µs): a fixture calls a probed function in a
 * loop under a span, run untraced, with the floor (a trivial uprobe and
 * uretprobe on the same function, bpf/bench.bpf.c: pid check and a counter) and
 * traced by kspan (thread context resolved, one record per call), in turn:
 *
 *   function  an empty function (test/fixtures/uprobes/calls.c), --uprobe
 *   dns       getaddrinfo("localhost") from /etc/hosts, the dns preset
 *   tls       TLS handshakes over loopback (SSL_connect, SSL_accept and the
 *             SSL_do_handshake inside each), the tls preset; no floor
 *
 * Prints, per case and configuration, the wall time per call (the fixture's own
 * CLOCK_MONOTONIC) and the BPF run time per call from the kernel's statistics
 * (both probes together), medians over the rounds.
 *
 *   node bench/uprobe-cost.ts [calls=200000] [rounds=3] [cases=function,dns,tls]
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TracingSession } from '../src/kernel/tracing-session.ts';
import { openElfFile } from '../src/elf/elf-file.ts';
import { symbolFileOffset } from '../src/elf/symbol-offset.ts';
import { presetSpecs, parseUprobeSpec, type UprobeSpec } from '../src/uprobes/uprobe-spec.ts';
import { ProcessGroup } from '../test/helpers/processes.ts';
import { callsFixturePath, tlsFixturePath } from '../test/helpers/uprobe-fixtures.ts';
import { enableBpfStats, Floor, median, progNames, progStats, statsDelta } from './harness.ts';

const calls = Number(process.argv[2] ?? 200_000);
const rounds = Number(process.argv[3] ?? 3);
const dnsCalls = Math.max(1000, Math.round(calls / 20));
const handshakes = Math.max(50, Math.round(calls / 1000));
const LIBC = '/usr/lib/x86_64-linux-gnu/libc.so.6';

type Config = 'untraced' | 'floor' | 'kspan';
interface Sample {
  wallNsPerCall: number;
  bpfNsPerCall: number;
  records: number;
}

const exe = callsFixturePath();
const tlsExe = tlsFixturePath();
const certDir = mkdtempSync(join(tmpdir(), 'kspan-bench-tls-'));
execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
  '-keyout', join(certDir, 'key.pem'), '-out', join(certDir, 'cert.pem'), '-days', '1', '-subj', '/CN=localhost'], { stdio: 'ignore' });

interface Case {
  name: string;
  /** Probed calls per unit the fixture counts. */
  per: number;
  units: number;
  args: string[];
  exe: string;
  specs: UprobeSpec[];
  floor?: { path: string; symbol: string };
}

const only = (process.argv[4] ?? 'function,dns,tls').split(',');
const cases: Case[] = ([
  { name: 'function', per: 1, units: calls, exe, args: ['loop', String(calls)], specs: [parseUprobeSpec('calls:kspan_fixture_work')], floor: { path: exe, symbol: 'kspan_fixture_work' } },
  { name: 'dns', per: 1, units: dnsCalls, exe, args: ['loop', String(dnsCalls), 'localhost'], specs: presetSpecs('dns'), floor: { path: LIBC, symbol: 'getaddrinfo' } },
  // Per handshake: SSL_connect and SSL_accept, each with SSL_do_handshake inside.
  { name: 'tls', per: 4, units: handshakes, exe: tlsExe, args: [join(certDir, 'cert.pem'), join(certDir, 'key.pem'), String(handshakes)], specs: presetSpecs('tls') },
] satisfies Case[]).filter((c) => only.includes(c.name));

/** One run of a case's fixture; resolves with its wall ns (its own clock, or go → done for tls). */
async function runFixture(c: Case, onPid: (pid: number) => void): Promise<number> {
  const group = new ProcessGroup();
  try {
    const p = group.start(c.exe, c.args);
    const pid = Number((await p.waitLine(/^ready pid (\d+)$/))[1]);
    onPid(pid);
    const t0 = process.hrtime.bigint();
    p.send('go');
    if (c.name === 'tls') {
      await p.waitLine(/^done$/, 300_000);
      return Number(process.hrtime.bigint() - t0);
    }
    return Number((await p.waitLine(/^loop (\d+)$/, 300_000))[1]);
  } finally {
    await group.killAll();
  }
}

async function sample(c: Case, config: Config): Promise<Sample> {
  let records = 0;
  let session: TracingSession | undefined;
  let floor: Floor | undefined;
  let ids: number[] = [];
  if (config === 'kspan') {
    session = TracingSession.open({ pids: [], onRecord: () => {}, uprobes: { specs: c.specs, onCall: () => records++ } });
    session.start();
  } else if (config === 'floor') {
    floor = Floor.open();
    floor.attachUprobes(c.floor!.path, symbolFileOffset(openElfFile(c.floor!.path), c.floor!.symbol));
    ids = floor.ids;
  }
  let before = progStats('self');
  try {
    const wall = await runFixture(c, (pid) => {
      if (session) {
        session.addPid(pid);
        const names = progNames([...progStats('self').keys()]);
        ids = [...names].filter(([, n]) => n.startsWith('uprobe_')).map(([id]) => id);
      }
      floor?.addPid(pid);
      before = progStats('self');
    });
    const bpf = statsDelta(before, progStats('self')).filter((s) => ids.includes(s.id)).reduce((n, s) => n + s.runNs, 0);
    await new Promise((r) => setTimeout(r, 100)); // the last records
    const probed = c.units * c.per;
      const lost = session?.counters().KSPAN_C_RINGBUF_FULL ?? 0;
    if (lost) console.error(`${c.name} ${config}: ${lost} records lost (ring buffer full)`);
    return { wallNsPerCall: wall / c.units, bpfNsPerCall: bpf / probed, records };
  } finally {
    await session?.stop();
    floor?.close();
  }
}

const stats = enableBpfStats();
const out: Record<string, Record<string, { wallNsPerCall: number; bpfNsPerCall: number; records: number }>> = {};
try {
  for (const c of cases) {
    const configs: Config[] = c.floor ? ['untraced', 'floor', 'kspan'] : ['untraced', 'kspan'];
    const samples = new Map<Config, Sample[]>(configs.map((k) => [k, []]));
    for (let r = 0; r < rounds; r++) {
      for (const k of configs) {
        const s = await sample(c, k);
        samples.get(k)!.push(s);
        console.error(`${c.name} ${k} round ${r + 1}: ${s.wallNsPerCall.toFixed(0)} ns/call wall, ${s.bpfNsPerCall.toFixed(0)} BPF ns/probed call, ${s.records} records`);
      }
    }
    out[c.name] = Object.fromEntries(configs.map((k) => {
      const xs = samples.get(k)!;
      return [k, { wallNsPerCall: median(xs.map((x) => x.wallNsPerCall)), bpfNsPerCall: median(xs.map((x) => x.bpfNsPerCall)), records: median(xs.map((x) => x.records)) }];
    }));
  }
} finally {
  stats.close();
  rmSync(certDir, { recursive: true, force: true });
}

console.log(`| case | unit | untraced wall/unit | floor wall/unit (added) | kspan wall/unit (added) | BPF ns per probed call: floor, kspan | records per unit |`);
console.log('|---|---|---|---|---|---|---|');
for (const c of cases) {
  const o = out[c.name];
  const unit = c.name === 'tls' ? `handshake (${c.per} probed calls)` : 'call';
  const u = o.untraced.wallNsPerCall;
  const f = o.floor;
  const k = o.kspan;
  const ns = (x: number) => `${(x / 1000).toFixed(2)} µs`;
  console.log(`| ${c.name} | ${unit} | ${ns(u)} | ${f ? `${ns(f.wallNsPerCall)} (+${ns(f.wallNsPerCall - u)})` : '—'} | ${ns(k.wallNsPerCall)} (+${ns(k.wallNsPerCall - u)}) | ${f ? f.bpfNsPerCall.toFixed(0) : '—'}, ${k.bpfNsPerCall.toFixed(0)} | ${(k.records / c.units).toFixed(3)} |`);
}
