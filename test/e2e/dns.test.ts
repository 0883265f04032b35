/**
 * The dns preset on the real kernel: a fixture resolves two names with
 * getaddrinfo, each under its own span, inside a mount namespace of the test's
 * own where /etc/hosts answers one of them and /etc/nsswitch.conf allows no
 * other source (no network is ever asked). Each call is one `dns.lookup` span
 * under the right span, with the name, the result and the address count the
 * fixture itself saw, lasting no longer than the fixture measured.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { callsFixturePath, runFixtureTraced, useTestBed } from '../helpers/uprobe-fixtures.ts';

const STATUS_ERROR = 2;
const SPAN_KIND_CLIENT = 3; // OTLP numbering
const EAI_NONAME = -2;

interface Lookup {
  name: string;
  rc: number;
  addresses: number;
  traceId: string;
  spanId: string;
  wallNs: bigint;
}

function lookups(lines: readonly string[]): Lookup[] {
  return lines.flatMap((l) => {
    const m = /^lookup (\S+) (-?\d+) (\d+) ([0-9a-f]{32}) ([0-9a-f]{16}) (\d+) (\d+)$/.exec(l);
    return m ? [{ name: m[1], rc: Number(m[2]), addresses: Number(m[3]), traceId: m[4], spanId: m[5], wallNs: BigInt(m[7]) - BigInt(m[6]) }] : [];
  });
}

describe('dns preset: getaddrinfo → dns.lookup', e2eOptions(), () => {
  const bed = useTestBed();

  test('one span per lookup, under the caller\'s span, with the name, result and addresses; a failed one is an error', async () => {
    const found = `kspan-${process.pid}-a.test`;
    const missing = `kspan-${process.pid}-missing.test`;
    // Two addresses for `found` (IPv4 and IPv6); nothing else is consulted.
    writeFileSync(join(bed.dir, 'hosts'), `10.77.0.1 ${found}\nfd00:77::1 ${found}\n10.77.0.2 other-${found}\n`);
    writeFileSync(join(bed.dir, 'nsswitch.conf'), 'hosts: files\n');
    const exe = callsFixturePath();
    // The fixture's own mount namespace (private propagation): the host's files stay untouched.
    const script = 'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/nsswitch.conf && shift 2 && exec "$@"';
    const { fixture, pid } = await runFixtureTraced(bed.group, 'unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script, 'sh',
      join(bed.dir, 'hosts'), join(bed.dir, 'nsswitch.conf'), exe, 'dns', found, missing], ['--otlp-endpoint', bed.receiver.endpoint, '--uprobe-presets', 'dns']);

    const seen = lookups(fixture.lines);
    assert.deepEqual(seen.map((l) => [l.name, l.rc, l.addresses]), [[found, 0, 2], [missing, EAI_NONAME, 0]]);
    const spans = bed.receiver.spans.filter((s) => s.name === 'dns.lookup');
    assert.equal(spans.length, 2, bed.receiver.spans.map((s) => s.name).join(' '));
    assert.equal(bed.receiver.spans.length, 2);
    for (const l of seen) {
      const mine = spans.filter((s) => s.parentSpanId === l.spanId);
      assert.equal(mine.length, 1, l.name);
      const [s] = mine;
      assert.equal(s.traceId, l.traceId);
      assert.equal(s.kind, SPAN_KIND_CLIENT);
      assert.equal(s.attributes['dns.question.name'], l.name);
      assert.equal(s.attributes['kspan.dns.result'], l.rc);
      assert.equal(s.attributes['kspan.dns.addresses'], l.addresses);
      assert.equal(s.attributes['code.function.name'], 'getaddrinfo');
      assert.equal(s.attributes['process.pid'], pid);
      assert.equal(s.attributes['thread.id'], pid);
      // The probes run inside the call the fixture timed: never longer than its wall time.
      const dur = s.endTimeUnixNano - s.startTimeUnixNano;
      assert.ok(dur > 0n && dur <= l.wallNs, `${l.name}: span ${dur} ns, fixture measured ${l.wallNs} ns`);
      if (l.rc === 0) {
        assert.equal(s.status.code, 0);
        assert.equal(s.attributes['error.type'], undefined);
      } else {
        assert.equal(s.status.code, STATUS_ERROR);
        assert.equal(s.status.message, 'getaddrinfo failed: EAI_NONAME');
        assert.equal(s.attributes['error.type'], 'EAI_NONAME');
      }
    }
  });
});
