/** What the running kernel has: the vmlinux BTF is parsed for a burst of questions, then freed. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { hasBtfTracepoint, vmlinuxBtfStats } from '../../src/kernel/kernel-features.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';

describe('kernel features', e2eOptions(), () => {
  test('one parse of the vmlinux BTF answers the questions of one turn, and is freed after it', async () => {
    const { loads, frees } = vmlinuxBtfStats;
    assert.equal(hasBtfTracepoint('inet_sock_set_state'), true);
    assert.equal(hasBtfTracepoint('tcp_retransmit_skb'), true);
    assert.equal(hasBtfTracepoint('kspan_no_such_tracepoint'), false);
    assert.deepEqual(vmlinuxBtfStats, { loads: loads + 1, frees });
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(vmlinuxBtfStats, { loads: loads + 1, frees: frees + 1 });
    assert.equal(hasBtfTracepoint('inet_sock_set_state'), true);
    assert.equal(vmlinuxBtfStats.loads, loads + 2);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(vmlinuxBtfStats, { loads: loads + 2, frees: frees + 2 });
  });
});
