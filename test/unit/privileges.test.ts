/**
 * What kspan says when kernel.perf_event_paranoid keeps the classic tracepoints
 * from a process without CAP_SYS_ADMIN (Debian's default of 3), from the
 * capabilities and the sysctl's value given: no root, no kernel.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CAPABILITY, Capabilities, HINT_PERF_PARANOID, perfEventsRestricted } from '../../src/kernel/privileges.ts';

const caps = (...names: (keyof typeof CAPABILITY)[]) => new Capabilities(names.reduce((m, n) => m | (1n << BigInt(CAPABILITY[n])), 0n), 65534);

test('perf_event_paranoid 3 without CAP_SYS_ADMIN: refused, the value and the fix named; otherwise nothing to say', () => {
  const documented = caps('CAP_BPF', 'CAP_PERFMON', 'CAP_DAC_READ_SEARCH', 'CAP_SYS_PTRACE');
  assert.equal(
    perfEventsRestricted(documented, 3),
    `kernel.perf_event_paranoid is 3, which on this kernel lets only CAP_SYS_ADMIN open the perf events classic tracepoints attach through: ${HINT_PERF_PARANOID}`,
  );
  assert.equal(HINT_PERF_PARANOID, 'set sysctl kernel.perf_event_paranoid=2, or grant CAP_SYS_ADMIN');
  assert.equal(perfEventsRestricted(caps('CAP_SYS_ADMIN'), 3), undefined);
  for (const paranoid of [-1, 0, 1, 2, undefined]) assert.equal(perfEventsRestricted(documented, paranoid), undefined, String(paranoid));
});
