/**
 * The parsing `make bench` rests on: wrk's report, and the counters of
 * `kspan run`'s exit log line.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { agentCounters, agentErrors, agentNodeRuntime, type AgentExitLog } from '../../bench/harness.ts';
import { socketProgramsNsPerReq } from '../../bench/native.ts';
import { parseWrk } from '../../bench/wrk.ts';

const WRK = `Running 3s test @ http://127.0.0.1:36893/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   317.22us    1.41ms  20.34ms   97.68%
    Req/Sec    73.75k     9.37k   93.04k    63.33%
  Latency Distribution
     50%  115.00us
     75%  186.00us
     90%  271.00us
     99%    7.43ms
  220022 requests in 3.00s, 121.28MB read
Requests/sec:  73237.13
Transfer/sec:     40.37MB
`;

test('parseWrk: requests, rate, mean and percentile latencies in ms', () => {
  assert.deepEqual(parseWrk(WRK), { requests: 220022, rps: 73237.13, meanMs: 0.31722, p50ms: 0.115, p99ms: 7.43 });
});

test('parseWrk: a latency in whole seconds, which wrk prints with a trailing space', () => {
  const slow = WRK.replace('     99%    7.43ms\n', '     99%    1.13s \n');
  assert.equal(parseWrk(slow).p99ms, 1130);
});

test('parseWrk: a run with socket errors or non-2xx answers is refused', () => {
  const errors = WRK.replace('Requests/sec', '  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec');
  assert.throws(() => parseWrk(errors), /^Error: wrk failed:/);
  const non2xx = WRK.replace('Requests/sec', '  Non-2xx or 3xx responses: 12\nRequests/sec');
  assert.throws(() => parseWrk(non2xx), /^Error: wrk failed:/);
});

test('agentCounters: made, exported, dropped, lost by cause, from the exit log', () => {
  const line = {
    kernel: { decode_errors: 2, ring_handler_errors: 0, KSPAN_C_RINGBUF_FULL: 87, KSPAN_C_SOCK_TABLE_FULL: 5, KSPAN_C_CTX_TORN: 9, KSPAN_C_UNSAMPLED: 470292, context: { resolved: 1 } },
    spans: {
      correlator: { records: 235176, spans: 137240, unsampledSpans: 211629 },
      export: { exported: 48128, droppedQueueFull: 89100, droppedFailed: 10, droppedShutdown: 2 },
    },
    msg: 'stopped; data was lost',
  } as unknown as AgentExitLog;
  const c = agentCounters(line, 3);
  assert.deepEqual({ ...c, kernel: undefined }, {
    records: 235176,
    spansMade: 137240,
    unsampledSpans: 211629,
    unsampledInKernel: 470292,
    spansExported: 48128,
    spansDropped: 89112,
    recordsLost: 94,
    lostBy: { ringbufFull: 87, sockTableFull: 5, decodeErrors: 2 },
    exitCode: 3,
    kernel: undefined,
    errors: [],
  });
  assert.equal(c.kernel, line.kernel);
});

test('agentErrors: the error-level lines of the log, as msg and cause, each once, at most five', () => {
  const lines = [
    'kspan: a plain line',
    '{"level":30,"msg":"tracing"}',
    '{"level":50,"msg":"record dropped: decode failed","err":{"type":"Error","message":"unknown record type 9"}}',
    '{"level":40,"msg":"export queue full: spans dropped"}',
    '{"level":50,"msg":"record dropped: decode failed","err":{"type":"Error","message":"unknown record type 9"}}',
    '{"level":60,"msg":"fatal"}',
    '{"level":50,"msg":"torn',
  ];
  assert.deepEqual(agentErrors(lines), ['record dropped: decode failed: unknown record type 9', 'fatal']);
  const many = Array.from({ length: 8 }, (_, i) => `{"level":50,"msg":"e${i}"}`);
  assert.deepEqual(agentErrors(many), ['e0', 'e1', 'e2', 'e3', 'e4']);
});

test("agentNodeRuntime: the pipeline bench runs under bin/kspan's own V8 flags and malloc variables", () => {
  assert.deepEqual(agentNodeRuntime(), {
    flags: [
      '--max-semi-space-size=8',
      '--heap-growing-percent=50',
      '--no-allocation-site-pretenuring',
      '--incremental-marking-soft-trigger=70',
      '--incremental-marking-hard-trigger=90',
    ],
    env: { MALLOC_ARENA_MAX: '2', MALLOC_MMAP_THRESHOLD_: '131072', MALLOC_TRIM_THRESHOLD_: '131072' },
  });
  assert.throws(() => agentNodeRuntime('#!/bin/bash\nexec node x.ts\n'), /no exec line or malloc variables/);
});

test('socketProgramsNsPerReq: every program but the scheduler\'s, per request, kspan\'s or the floor\'s', () => {
  const progs = [
    { name: 'on_recv_length', nsPerRun: 125, runsPerReq: 2, nsPerReq: 250 },
    { name: 'on_sched_switch', nsPerRun: 134, runsPerReq: 1.4, nsPerReq: 187.6 },
    { name: 'on_send_length', nsPerRun: 98, runsPerReq: 2, nsPerReq: 196 },
    { name: 'on_sched_wakeup', nsPerRun: 55, runsPerReq: 1, nsPerReq: 55 },
    { name: 'flush_idle', nsPerRun: 800, runsPerReq: 0.001, nsPerReq: 0.8 },
  ];
  assert.equal(socketProgramsNsPerReq(progs), 250 + 196 + 0.8);
  assert.equal(socketProgramsNsPerReq([]), 0);
  const floor = [
    { name: 'floor_recv', nsPerRun: 60, runsPerReq: 2, nsPerReq: 120 },
    { name: 'floor_switch', nsPerRun: 40, runsPerReq: 1.4, nsPerReq: 56 },
    { name: 'floor_send', nsPerRun: 55, runsPerReq: 2, nsPerReq: 110 },
    { name: 'floor_wakeup', nsPerRun: 30, runsPerReq: 1, nsPerReq: 30 },
  ];
  assert.equal(socketProgramsNsPerReq(floor), 120 + 110);
});
