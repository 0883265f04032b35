/**
 * Builds the C fixtures the e2e subset uses on the host before the guest image is
 * made, so the guests (same Debian gcc, same absolute path, so the same cache key)
 * find them in test/.build/ instead of compiling under emulation. The guests
 * still have gcc and musl-tools: a cache miss there only costs time.
 */
import { tcpFixtureDir, tracedServerPath } from '../helpers/tcp-fixtures.ts';
import { buildTlsFixtures } from '../helpers/tls-fixtures.ts';
import { schedFixturePath } from '../helpers/sched-fixture.ts';
import { callsFixturePath } from '../helpers/uprobe-fixtures.ts';
import { preforkDir } from '../helpers/discovery-fixtures.ts';

tcpFixtureDir();
tracedServerPath();
buildTlsFixtures();
schedFixturePath();
callsFixturePath();
preforkDir();
