/**
 * RingBufferReader on a real BPF ring (bpf/bench.bpf.c's fill_ring writes N
 * records on getppid()): nothing thrown in koffi's epoll callback escapes, a
 * failing wait is retried without spinning, and a constructor that fails
 * half-way leaves no mapping or epoll fd behind.
 */
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { KspanError } from '../../src/core/errors.ts';
import { koffi } from '../../src/kernel/native.ts';
import { RingBufferReader, ringDrainIntervalMs } from '../../src/kernel/ring-buffer.ts';
import { decodeRecords } from '../../src/records/decoder.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { openRingFiller } from '../helpers/ring-filler.ts';

const RING = 256 << 10;
const dup2 = koffi.load('libc.so.6').func('int dup2(int oldfd, int newfd)') as (a: number, b: number) => number;

async function until(check: () => boolean, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The epoll instance of this process that watches `fd` (its fdinfo lists a `tfd:` line per watched fd). */
function epollWatching(fd: number): number | undefined {
  return epollFds().find((ep) => {
    try {
      return new RegExp(`^tfd:\\s+${fd}\\s`, 'm').test(readFileSync(`/proc/self/fdinfo/${ep}`, 'utf8'));
    } catch {
      return false;
    }
  });
}

/** fds of this process that are epoll instances. */
function epollFds(): number[] {
  return readdirSync('/proc/self/fd')
    .filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[eventpoll]';
      } catch {
        return false; // the fd of the readdir itself
      }
    })
    .map(Number);
}

describe('ring buffer reader', e2eOptions(), () => {
  test('a record handler that throws costs only its record: counted, reported, the others delivered from the epoll callback', async () => {
    const { obj, ringFd, fill } = openRingFiller(5, RING);
    const errors: unknown[] = [];
    const cookies: bigint[] = [];
    let reader: RingBufferReader | undefined;
    try {
      reader = new RingBufferReader(
        ringFd,
        RING,
        (view, off) =>
          decodeRecords(view, off, (r) => {
            if (r.cookie === 2n) throw new Error('record 2 refused');
            cookies.push(r.cookie);
          }),
        { onError: (err) => errors.push(err) },
      );
      reader.start(10);
      fill();
      await until(() => cookies.length === 4);
      await reader.stop();
      assert.deepEqual(cookies, [1n, 3n, 4n, 5n]);
      assert.equal(reader.stats.records, 4);
      assert.equal(reader.stats.handlerErrors, 1);
      assert.equal(reader.stats.waitErrors, 0);
      assert.deepEqual(errors.map((e) => (e as Error).message), ['record 2 refused']);
      reader.close();
      assert.equal(reader.drain(), 0, 'a closed reader reads nothing (its ring is unmapped)');
    } finally {
      reader?.close();
      obj.close();
    }
  });

  test('a record that wraps past the end of the ring (mapped once) is read whole, exactly, through the scratch copy', () => {
    // 312-byte records take 320 bytes with their header: the 820th starts 64 bytes
    // before the end of a 256 KiB ring, its header fits and its payload wraps.
    const perFill = 600;
    const { obj, ringFd, fill } = openRingFiller(perFill, RING);
    const got: { cookie: bigint; bytes: number }[] = [];
    let reader: RingBufferReader | undefined;
    try {
      reader = new RingBufferReader(ringFd, RING, (view, off) => decodeRecords(view, off, (r) => got.push({ cookie: r.cookie, bytes: r.bytes })));
      fill();
      assert.equal(reader.drain(), perFill);
      assert.equal(reader.stats.wrapped, 0);
      fill();
      assert.equal(reader.drain(), perFill);
      assert.equal(reader.stats.wrapped, 1, 'exactly one record wrapped');
      const want = [...Array.from({ length: perFill }, (_, i) => i), ...Array.from({ length: perFill }, (_, i) => i)].map((i) => ({ cookie: BigInt(i + 1), bytes: 100 + i }));
      assert.deepEqual(got, want);
      // The data pages are mapped once: the producer page and RING bytes, not 2 × RING.
      const maps = readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('anon_inode:bpf-map'));
      const sizes = maps.map((l) => l.split(' ')[0].split('-').map((h) => parseInt(h, 16))).map(([a, b]) => b - a);
      assert.ok(sizes.includes(4096 + RING), `a mapping of one page + ${RING} bytes among ${sizes.join(', ')}`);
      assert.ok(!sizes.includes(4096 + 2 * RING), 'no mapping of the data twice');
    } finally {
      reader?.close();
      obj.close();
    }
  });

  test('running readers share one epoll instance and one wait; a reader with a shorter idle interval ends a longer wait early', async () => {
    const a = openRingFiller(3, RING);
    const b = openRingFiller(4, RING);
    const got = { a: [] as bigint[], b: [] as bigint[] };
    const readers: RingBufferReader[] = [];
    try {
      readers.push(new RingBufferReader(a.ringFd, RING, (view, off) => decodeRecords(view, off, (r) => got.a.push(r.cookie))));
      readers.push(new RingBufferReader(b.ringFd, RING, (view, off) => decodeRecords(view, off, (r) => got.b.push(r.cookie))));
      const epfd = epollWatching(a.ringFd);
      assert.ok(epfd !== undefined);
      assert.equal(epollWatching(b.ringFd), epfd, 'both rings in one epoll instance');
      // The first waits up to a minute; the second's 20 ms interval must not wait for that.
      readers[0].start(60_000);
      readers[1].start(20);
      a.fill(); // one getppid(): both fillers' programs run, each writes its ring
      await until(() => got.a.length === 3 && got.b.length === 4);
      assert.deepEqual(got, { a: [1n, 2n, 3n], b: [1n, 2n, 3n, 4n] });
      await Promise.all(readers.map((r) => r.stop()));
    } finally {
      for (const r of readers) r.close();
      a.obj.close();
      b.obj.close();
    }
  });

  test('the drain timer backs off to 8 × the idle interval while the ring stays empty, and a record brings it back', async () => {
    const { obj, ringFd, fill } = openRingFiller(3, RING);
    const cookies: bigint[] = [];
    let reader: RingBufferReader | undefined;
    try {
      reader = new RingBufferReader(ringFd, RING, (view, off) => decodeRecords(view, off, (r) => cookies.push(r.cookie)));
      reader.start(10);
      assert.equal(ringDrainIntervalMs(), 10);
      // 5 quiet drains at 10 ms, 5 at 20, 5 at 40: 350 ms to the cap, however slow the timers.
      await until(() => ringDrainIntervalMs() === 80);
      fill();
      await until(() => cookies.length === 3);
      assert.deepEqual(cookies, [1n, 2n, 3n]);
      assert.equal(ringDrainIntervalMs(), 10, 'the drain that delivered them set the timer back to 10 ms');
      await reader.stop();
      assert.equal(ringDrainIntervalMs(), 0, 'no timer once no reader runs');
    } finally {
      reader?.close();
      obj.close();
    }
  });

  test('a failing epoll_wait is counted and retried after the idle interval, not in a loop; stop() still returns', async () => {
    const { obj, ringFd, fill } = openRingFiller(3, RING);
    const dir = mkdtempSync(join(tmpdir(), 'kspan-ring-'));
    const errors: unknown[] = [];
    const cookies: bigint[] = [];
    let reader: RingBufferReader | undefined;
    try {
      reader = new RingBufferReader(ringFd, RING, (view, off) => decodeRecords(view, off, (r) => cookies.push(r.cookie)), {
        onError: (err) => errors.push(err),
      });
      // The process's one epoll instance for its rings (src/kernel/ring-buffer.ts, RingPoller).
      const epfd = epollWatching(ringFd);
      assert.ok(epfd !== undefined, 'an epoll instance watches the ring');
      // Put a plain file where the reader's epoll fd was: every epoll_wait on it is EINVAL.
      const file = openSync(join(dir, 'not-epoll'), 'w');
      assert.equal(dup2(file, epfd), epfd);
      closeSync(file);
      const t0 = performance.now();
      reader.start(20);
      // Retried, not given up: five failures come, however loaded the machine.
      await until(() => reader!.stats.waitErrors >= 5);
      const failures = reader.stats.waitErrors;
      const elapsed = performance.now() - t0;
      // And not in a tight loop: at most one per 20 ms idle interval (plus the first).
      assert.ok(failures <= elapsed / 20 + 2, `${failures} failed waits in ${elapsed.toFixed(0)} ms at one per 20 ms`);
      const err = errors[0] as KspanError;
      assert.equal(err.code, 'KSPAN_ERR_RINGBUF');
      assert.equal(err.message, 'ring buffer: epoll_wait failed');
      assert.equal((err.cause as Error).message, 'epoll_wait failed: EINVAL (22)');
      assert.equal(errors.length, failures);
      // Records are still read on the retries' drains.
      fill();
      await until(() => cookies.length === 3);
      assert.deepEqual(cookies, [1n, 2n, 3n]);
      await reader.stop();
    } finally {
      reader?.close();
      obj.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('ring buffer reader, set-up failure', () => {
  test('when epoll cannot watch the fd, the mappings and the epoll fd are released', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kspan-ring-'));
    const path = join(dir, 'not-a-ring');
    const size = 64 << 10;
    const fd = openSync(path, 'w+');
    try {
      // A plain file can be mapped like a ring (both mmaps succeed) but not watched (epoll_ctl: EPERM).
      ftruncateSync(fd, 4096 + 2 * size);
      const mapped = () => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.endsWith(path)).length;
      const epolls = epollFds().length;
      assert.equal(mapped(), 0);
      assert.throws(
        () => new RingBufferReader(fd, size, () => {}),
        (err: unknown) => {
          assert.ok(err instanceof KspanError);
          assert.equal(err.code, 'KSPAN_ERR_RINGBUF');
          assert.equal(err.message, 'ring buffer: epoll_ctl failed');
          assert.equal((err.cause as Error).message, 'epoll_ctl failed: EPERM (1)');
          return true;
        },
      );
      assert.equal(mapped(), 0, 'no mapping of the file is left');
      assert.equal(epollFds().length, epolls, 'no epoll fd is left');
    } finally {
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
