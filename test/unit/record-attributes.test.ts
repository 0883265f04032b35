/** The one OTEP 4947 record-attribute decoder (src/context/record-attributes.ts). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeRecordAttributes, wholeEntriesLength } from '../../src/context/record-attributes.ts';

test('record attributes: key map, last repeated key wins, unknown keys counted, truncation flagged', () => {
  const rec = Buffer.from([0, 3, ...Buffer.from('GET'), 1, 2, ...Buffer.from('/a'), 0, 4, ...Buffer.from('POST'), 9, 1, 0x78]);
  assert.deepEqual(decodeRecordAttributes(rec, ['http.method', 'http.route']), {
    attributes: { 'http.method': 'POST', 'http.route': '/a' },
    unknownKeys: 1,
    truncated: false,
  });
  assert.deepEqual(decodeRecordAttributes(Buffer.from([1, 5, 0x61, 0x62]), ['k0', 'k1']), { attributes: {}, unknownKeys: 0, truncated: true });
  assert.deepEqual(decodeRecordAttributes(Buffer.from([0, 0, 1]), ['k0']), { attributes: { k0: '' }, unknownKeys: 0, truncated: true });
  assert.deepEqual(decodeRecordAttributes(new Uint8Array(0), []), { attributes: {}, unknownKeys: 0, truncated: false });
});

test('record attributes: without a key map every entry is counted as unknown, none dropped silently', () => {
  const rec = Uint8Array.from([3, 1, 0x61, 7, 0, 3, 2, 0x62, 0x63]);
  assert.deepEqual(decodeRecordAttributes(rec, []), { attributes: {}, unknownKeys: 3, truncated: false });
});

test('record attributes: a view into a larger buffer is decoded from its own offset', () => {
  const backing = Buffer.from([0xff, 0xff, 0, 2, 0x68, 0x69, 0xff]);
  assert.deepEqual(decodeRecordAttributes(backing.subarray(2, 6), ['greeting']), {
    attributes: { greeting: 'hi' },
    unknownKeys: 0,
    truncated: false,
  });
});

test('whole entries: a copy clamped mid-entry ends before that entry', () => {
  assert.equal(wholeEntriesLength(Uint8Array.from([0, 1, 0x61, 1, 4, 0x62])), 3);
  assert.equal(wholeEntriesLength(Uint8Array.from([0, 1, 0x61, 1])), 3);
  assert.equal(wholeEntriesLength(Uint8Array.from([0, 0])), 2);
  assert.equal(wholeEntriesLength(new Uint8Array(0)), 0);
});
