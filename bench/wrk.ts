/**
 * Shared by the HTTP benchmarks: one wrk run, parsed, and a process's CPU time.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

const CLK_TCK = 100;

/** utime + stime of a process, in seconds (/proc/PID/stat). */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

export interface WrkResult {
  requests: number;
  rps: number;
  meanMs: number;
  p50ms: number;
  p99ms: number;
}

function toMs(value: string, unit: string): number {
  const v = Number(value);
  return unit === 'us' ? v / 1000 : unit === 's' ? v * 1000 : v;
}

function latencyMs(out: string, pct: string): number {
  const m = new RegExp(`^\\s+${pct}%\\s+([\\d.]+)(us|ms|s)\\s*$`, 'm').exec(out);
  if (!m) throw new Error(`no ${pct}% latency in wrk output:\n${out}`);
  return toMs(m[1], m[2]);
}

/** Runs wrk (`args` before the URL; --latency is added) and fails on errors or non-2xx answers. */
export function runWrk(args: string[], url: string): WrkResult {
  return parseWrk(execFileSync('wrk', [...args, '--latency', url], { encoding: 'utf8' }));
}

/** wrk's report (run with --latency), parsed; throws on socket errors or non-2xx answers. */
export function parseWrk(out: string): WrkResult {
  const requests = Number(/(\d+) requests in/.exec(out)?.[1]);
  if (!requests || / Non-2xx| Socket errors/.test(out)) throw new Error(`wrk failed:\n${out}`);
  const mean = /^\s+Latency\s+([\d.]+)(us|ms|s)\s/m.exec(out);
  if (!mean) throw new Error(`no mean latency in wrk output:\n${out}`);
  return {
    requests,
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]),
    meanMs: toMs(mean[1], mean[2]),
    p50ms: latencyMs(out, '50'),
    p99ms: latencyMs(out, '99'),
  };
}
