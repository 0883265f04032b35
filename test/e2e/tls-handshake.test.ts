/**
 * The tls preset on the real kernel: a fixture linked with libssl does TLS
 * handshakes over loopback with a certificate made by openssl at test time, each
 * side under its own span; the last client insists on verifying the certificate
 * against an empty trust store, so that handshake fails on both sides. One
 * `tls.handshake` span per handshake and side, under the right span, with the
 * result the fixture saw (SSL_connect and SSL_accept call SSL_do_handshake
 * inside: that inner call is not a second span).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { agentStopLog, runFixtureTraced, tlsFixturePath, useTestBed } from '../helpers/uprobe-fixtures.ts';

const HANDSHAKES = 4;
const STATUS_ERROR = 2;

interface Handshake {
  role: 'client' | 'server';
  i: number;
  rc: number;
  traceId: string;
  spanId: string;
}

function handshakes(lines: readonly string[]): Handshake[] {
  return lines.flatMap((l) => {
    const m = /^handshake (client|server) (\d+) (-?\d+) ([0-9a-f]{32}) ([0-9a-f]{16})$/.exec(l);
    return m ? [{ role: m[1] as Handshake['role'], i: Number(m[2]), rc: Number(m[3]), traceId: m[4], spanId: m[5] }] : [];
  });
}

describe('tls preset: SSL_connect / SSL_accept → tls.handshake', e2eOptions(), () => {
  const bed = useTestBed();

  test('one span per handshake and side, under its span, with its result; a failed handshake is an error on both sides', async () => {
    const cert = join(bed.dir, 'cert.pem');
    const key = join(bed.dir, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost'], { stdio: 'ignore' });
    const { fixture, agent } = await runFixtureTraced(bed.group, tlsFixturePath(), [cert, key, String(HANDSHAKES)],
      ['--otlp-endpoint', bed.receiver.endpoint, '--uprobe-presets', 'tls']);

    const seen = handshakes(fixture.lines);
    assert.equal(seen.length, 2 * HANDSHAKES);
    for (const h of seen) assert.equal(h.rc === 1, h.i < HANDSHAKES - 1, `${h.role} ${h.i} returned ${h.rc}`);

    const spans = bed.receiver.spans.filter((s) => s.name === 'tls.handshake');
    assert.equal(spans.length, 2 * HANDSHAKES, bed.receiver.spans.map((s) => `${s.name} ${s.attributes['code.function.name']}`).join('\n'));
    for (const h of seen) {
      const mine = spans.filter((s) => s.parentSpanId === h.spanId);
      assert.equal(mine.length, 1, `${h.role} ${h.i}`);
      const [s] = mine;
      assert.equal(s.traceId, h.traceId);
      assert.equal(s.attributes['code.function.name'], h.role === 'client' ? 'SSL_connect' : 'SSL_accept');
      assert.equal(s.attributes['kspan.tls.result'], h.rc);
      assert.match(String(s.attributes['kspan.uprobe.binary']), /\/libssl\.so\.3$/);
      if (h.rc === 1) {
        assert.equal(s.status.code, 0);
        // Debian 12's OpenSSL 3.0 negotiates TLS 1.3 with itself.
        assert.equal(s.attributes['tls.protocol.name'], 'tls');
        assert.equal(s.attributes['tls.protocol.version'], '1.3');
      } else {
        assert.equal(s.attributes['tls.protocol.version'], undefined);
        assert.equal(s.status.code, STATUS_ERROR);
        assert.equal(s.attributes['error.type'], 'tls_handshake_failed');
        assert.equal(s.status.message, `${h.role === 'client' ? 'SSL_connect' : 'SSL_accept'} returned ${h.rc}`);
      }
    }
    // The handshake functions were all probed: the inner SSL_do_handshake of each outer call was seen, and not made a span.
    assert.deepEqual(agentStopLog(agent).uprobes?.calls, { spans: 2 * HANDSHAKES, orphans: 0, nested: 2 * HANDSHAKES, unknownProbe: 0 });
  });
});
