import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseLossCounters } from '../../src/demo/lossy-link.ts';

test('the drop chain\'s counters, by kind, in rule order', () => {
  const listing = [
    'Chain kspan-loss (1 references)',
    '    pkts      bytes target     prot opt in     out     source               destination',
    '      24     1440 DROP       6    --  *      *       0.0.0.0/0            0.0.0.0/0            tcp flags:0x17/0x02',
    '      20     1040 DROP       6    --  *      *       0.0.0.0/0            0.0.0.0/0            tcp flags:0x01/0x01',
    '     195    10140 DROP       6    --  *      *       0.0.0.0/0            0.0.0.0/0            length 0:80',
    '      24     5496 DROP       0    --  *      *       0.0.0.0/0            0.0.0.0/0',
    '',
  ].join('\n');
  assert.deepEqual(parseLossCounters(listing), { total: 263, syn: 24, fin: 20, ack: 195, data: 24 });
  assert.deepEqual(parseLossCounters(''), { total: 0, syn: 0, fin: 0, ack: 0, data: 0 });
});
