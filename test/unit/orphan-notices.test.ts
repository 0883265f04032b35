import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { OrphanNotices, stopNotice, targetNotice, type NoticeTarget } from '../../src/spans/orphan-notices.ts';

const python: NoticeTarget = {
  pid: 1234,
  scheme: null,
  loc: null,
  reason: 'not-publishing',
  process: { resource: { 'process.executable.name': 'python3', 'service.name': 'python3' } },
};
const node: NoticeTarget = { pid: 77, scheme: 'nodejs_v1_dev', loc: { kind: 1 }, process: { resource: { 'service.name': 'shop' } } };

describe('orphan notices', () => {
  test('a target that publishes no context: warned at start, and at the end with the count', () => {
    assert.deepEqual(targetNotice(python, false), {
      level: 'warn',
      msg: 'pid 1234 (python3) publishes no trace context: its kernel spans have no parent and are dropped; ' +
        'use --orphans to export them as root spans, or kspan events to see the records',
    });
    assert.deepEqual(stopNotice(python, 9, false), {
      level: 'warn',
      msg: 'pid 1234 (python3) publishes no trace context: 9 kernel spans had no parent and were dropped; ' +
        'use --orphans to export them as root spans, or kspan events to see the records',
    });
    assert.equal(stopNotice(python, 1, false)?.msg.includes(': 1 kernel span had no parent and was dropped;'), true);
    assert.equal(stopNotice(python, 0, false), null);
  });

  test('with --orphans the same is said at info, as what happens to the spans', () => {
    assert.deepEqual(targetNotice(python, true), {
      level: 'info',
      msg: 'pid 1234 (python3) publishes no trace context: its kernel spans are exported as root spans, one trace per request/response exchange (--orphans)',
    });
    assert.deepEqual(stopNotice(python, 9, true), {
      level: 'info',
      msg: 'pid 1234 (python3) publishes no trace context: 9 kernel spans exported, one trace per request/response exchange (--orphans)',
    });
  });

  test('a target whose context kspan reads: no start notice; parentless spans at the end are info', () => {
    assert.equal(targetNotice(node, false), null);
    assert.deepEqual(stopNotice(node, 3, false), {
      level: 'info',
      msg: 'pid 77 (shop): 3 kernel spans ran while no span of it was active and were dropped (--orphans exports them)',
    });
    const unreadable: NoticeTarget = { ...node, loc: null, reason: 'not-ready: struct not filled' };
    assert.equal(targetNotice(unreadable, false), null, 'not ready yet: it may become readable');
    assert.deepEqual(stopNotice(unreadable, 2, false), {
      level: 'warn',
      msg: 'pid 77 (shop) publishes nodejs_v1_dev trace context that kspan cannot read (not-ready: struct not filled): ' +
        '2 kernel spans had no parent and were dropped; use --orphans to export them as root spans, or kspan events to see the records',
    });
  });

  test('said once per target at start; at the end from its last description, per pid', () => {
    const n = new OrphanNotices(false);
    assert.equal(n.target(python)?.level, 'warn');
    assert.equal(n.target({ ...python }), null, 'described again: not repeated');
    assert.equal(n.target(node), null);
    // pid 77 started publishing nothing readable, pid 5 was never described.
    n.target({ ...node, loc: null, reason: 'gone wrong' });
    assert.deepEqual(n.atStop(new Map([[1234, 9], [77, 0], [5, 2]])).map((x) => x.msg), [
      'pid 1234 (python3) publishes no trace context: 9 kernel spans had no parent and were dropped; ' +
        'use --orphans to export them as root spans, or kspan events to see the records',
      'pid 5 could not be examined for a trace context: 2 kernel spans had no parent and were dropped; ' +
        'use --orphans to export them as root spans, or kspan events to see the records',
    ]);
  });
});
