/**
 * DrainBackoff (src/kernel/drain-backoff.ts): the rings' timer interval doubles
 * after quiet drains, up to its cap, and any delivered record brings it back.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DrainBackoff } from '../../src/kernel/drain-backoff.ts';

test('the interval doubles after every 5 quiet timer drains, up to 8 × the base', () => {
  const b = new DrainBackoff({ baseMs: 20 });
  const seen = Array.from({ length: 20 }, () => b.timerDrained(0));
  assert.deepEqual(seen, [20, 20, 20, 20, 40, 40, 40, 40, 40, 80, 80, 80, 80, 80, 160, 160, 160, 160, 160, 160]);
  assert.equal(b.maxMs, 160);
});

test('a record delivered by the timer or by another drain sets the interval back to the base and restarts the count', () => {
  const b = new DrainBackoff({ baseMs: 10, maxMs: 40, quietDrains: 2 });
  assert.deepEqual([0, 0, 0, 0].map((n) => b.timerDrained(n)), [10, 20, 20, 40]);
  assert.equal(b.timerDrained(3), 10, 'the timer found records');
  assert.equal(b.timerDrained(0), 10, 'one quiet drain is not yet two');
  assert.equal(b.timerDrained(0), 20);
  assert.equal(b.delivered(0), 20, 'an empty wake-up drain changes nothing');
  assert.equal(b.delivered(1), 10, 'a wake-up delivered a record');
  assert.equal(b.intervalMs, 10);
  assert.equal(b.timerDrained(0), 10, 'the quiet count started again');
});

test('bounds: the cap is never below the base, a non-positive base is refused', () => {
  const b = new DrainBackoff({ baseMs: 50, maxMs: 10, quietDrains: 1 });
  assert.equal(b.maxMs, 50);
  assert.equal(b.timerDrained(0), 50);
  assert.throws(() => new DrainBackoff({ baseMs: 0 }), RangeError);
});
