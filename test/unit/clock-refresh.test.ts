/** refreshClock(): the kernel clock's offset re-measured every second, a move of a millisecond or more logged. */
import assert from 'node:assert/strict';
import { mock, test } from 'node:test';
import { refreshClock } from '../../src/cli/options.ts';
import type { Logger } from '../../src/core/logger.ts';
import type { KernelClock } from '../../src/kernel/clock.ts';

test('refreshClock: re-measures every second; logs a move of 1 ms or more either way, not less', () => {
  mock.timers.enable({ apis: ['setInterval'] });
  try {
    const moves = [0n, 999_999n, 1_000_000n, -1_500_000n, -999_999n];
    let refreshed = 0;
    const clock = { refresh: () => moves[refreshed++] } as unknown as KernelClock;
    const logged: unknown[] = [];
    const log = { info: (o: unknown, msg: string) => logged.push([o, msg]) } as unknown as Logger;
    const timer = refreshClock(clock, log);
    mock.timers.tick(999);
    assert.equal(refreshed, 0);
    mock.timers.tick(1 + 4 * 1000);
    assert.equal(refreshed, 5);
    const msg = 'the realtime clock moved against the monotonic one: kernel times follow it';
    assert.deepEqual(logged, [
      [{ movedNs: 1_000_000 }, msg],
      [{ movedNs: -1_500_000 }, msg],
    ]);
    clearInterval(timer);
  } finally {
    mock.timers.reset();
  }
});
