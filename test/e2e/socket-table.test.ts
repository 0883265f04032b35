/**
 * The socket table's kernel memory. Where the kernel has the BPF memory
 * allocator (6.1+), `socks` is created with BPF_F_NO_PREALLOC: an element per
 * traced socket, freed when the socket closes, so the memory the kernel charges
 * (the map's memlock in fdinfo) is the buckets while nothing is traced, grows by
 * the same amount for every socket traced, and falls back exactly once they
 * close (the memlock figures from 6.4, where fdinfo reports a map's own memory
 * accounting; 6.1–6.3 show only the flag). Before 6.1 it stays preallocated (a run-time allocated hash map in a
 * tracing program makes those kernels WARN), as it does everywhere with
 * --socket-table preallocated.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { hasBpfMemAlloc, kernelVersion } from '../../src/kernel/kernel-features.ts';
import { KspanLimit } from '../../src/records/abi.generated.ts';
import { startEvents, stopEvents } from '../helpers/kspan-cli.ts';
import { fdinfoTexts, ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { waitFor } from '../helpers/timeouts.ts';

/** A table size no other map of kspan's has, to find `socks` among the agent's map fds. */
const MAX_SOCKETS = 3001;
const SOCK_VALUE = 192;
const BPF_F_NO_PREALLOC = 1;
const CONNS = 200;
/** The table's target at the default size, with every slot in use (BENCHMARKS.md, memory). */
const DEFAULT_TABLE_BUDGET = 16e6;

/**
 * Whether fdinfo's memlock is what the map holds now (the maps' own memory
 * accounting, 6.4+); before, it is key and value size × max_entries whatever the
 * allocation, so only the flags tell.
 */
function memlockFollowsUse(): boolean {
  const [major, minor] = kernelVersion();
  return major > 6 || (major === 6 && minor >= 4);
}

/** The fdinfo of the agent's `socks` map (of `maxEntries` slots): its flags and the kernel memory charged to it. */
function socksInfo(pid: number, maxEntries = MAX_SOCKETS): { flags: number; memlock: number } {
  for (const t of fdinfoTexts(pid)) {
    const field = (k: string) => new RegExp(`^${k}:\\s*(\\S+)`, 'm').exec(t)?.[1];
    if (field('max_entries') === String(maxEntries) && field('value_size') === String(SOCK_VALUE)) {
      return { flags: Number(field('map_flags')), memlock: Number(field('memlock')) };
    }
  }
  throw new Error(`no socks map (max_entries ${maxEntries}) among the fds of ${pid}`);
}

/** A Node echo server in a process of its own (the traced target): each connection answers one line with "ok". */
const ECHO = `const s = require('node:net').createServer((c) => c.on('data', () => c.write('ok\\n')));
s.listen(0, '127.0.0.1', () => console.log('port ' + s.address().port));
process.stdin.on('end', () => process.exit(0)).resume();`;

describe('the socket table: allocated as sockets are traced', e2eOptions(), () => {
  const group = new ProcessGroup();
  after(() => group.killAll());
  /** The kernel's memory per traced socket, allocated on use, as the first test measured it. */
  let perSocketOnUse: number | undefined;

  test(`${CONNS} traced connections: memlock grows by one element each and falls back when they close (6.1+), else preallocated`, async () => {
    const server = group.start(process.execPath, ['-e', ECHO]);
    const port = Number((await server.waitLine(/^port (\d+)$/))[1]);
    const events = await startEvents(group, [server.pid], ['--max-sockets', String(MAX_SOCKETS)]);

    const idle = socksInfo(events.pid);
    if (!hasBpfMemAlloc()) {
      assert.equal(idle.flags & BPF_F_NO_PREALLOC, 0, 'preallocated before 6.1');
      assert.ok(idle.memlock >= MAX_SOCKETS * SOCK_VALUE, `preallocated: ${idle.memlock} B`);
      await stopEvents(events);
      return;
    }
    assert.equal(idle.flags & BPF_F_NO_PREALLOC, BPF_F_NO_PREALLOC, `map_flags 0x${idle.flags.toString(16)}`);
    if (!memlockFollowsUse()) {
      await stopEvents(events);
      return;
    }
    // Nothing traced yet: the buckets and the table's own header, far below one value per slot.
    assert.ok(idle.memlock < (MAX_SOCKETS * SOCK_VALUE) / 4, `idle memlock ${idle.memlock} B`);

    const socks: Socket[] = [];
    for (let i = 0; i < CONNS; i++) {
      const c = connect(port, '127.0.0.1');
      await new Promise<void>((resolve, reject) => {
        c.once('error', reject);
        c.once('data', () => resolve());
        c.write('hi\n');
      });
      socks.push(c);
    }
    // Each accepted socket did a recv and a send in the server: one element each.
    const open = await waitFor(() => socksInfo(events.pid).memlock, (m) => m > idle.memlock, 5000, 'the table to grow');
    const perSocket = (open - idle.memlock) / CONNS;
    assert.ok(Number.isInteger(perSocket), `${open - idle.memlock} B over ${CONNS} sockets`);
    // The value, the 8-byte key and the kernel's per-element header and list node.
    assert.ok(perSocket > SOCK_VALUE + 8 && perSocket <= SOCK_VALUE + 128, `${perSocket} B per socket`);
    perSocketOnUse = perSocket;

    for (const c of socks) c.destroy();
    await waitFor(() => socksInfo(events.pid).memlock, (m) => m === idle.memlock, 10_000, 'the table to fall back to its idle size');
    await stopEvents(events);
  });

  test('--socket-table preallocated: every slot at start, on any kernel', async () => {
    const server = group.start(process.execPath, ['-e', ECHO]);
    await server.waitLine(/^port (\d+)$/);
    const events = await startEvents(group, [server.pid], ['--max-sockets', String(MAX_SOCKETS), '--socket-table', 'preallocated']);
    const info = socksInfo(events.pid);
    assert.equal(info.flags & BPF_F_NO_PREALLOC, 0, `map_flags 0x${info.flags.toString(16)}`);
    // A value and a key per slot at least, before any socket is traced (every kernel's memlock says so).
    assert.ok(info.memlock >= MAX_SOCKETS * (SOCK_VALUE + 8), `preallocated memlock ${info.memlock} B`);
    await stopEvents(events);
  });

  test(`the default size (${KspanLimit.KSPAN_MAX_SOCKETS} slots): with every slot in use, within 16 MB either way`, async () => {
    const server = group.start(process.execPath, ['-e', ECHO]);
    await server.waitLine(/^port (\d+)$/);
    const max = KspanLimit.KSPAN_MAX_SOCKETS;
    // Preallocated, the memlock is the full table's from the start.
    const pre = await startEvents(group, [server.pid], ['--socket-table', 'preallocated']);
    const full = socksInfo(pre.pid, max).memlock;
    await stopEvents(pre);
    assert.ok(full >= max * (SOCK_VALUE + 8) && full <= DEFAULT_TABLE_BUDGET, `preallocated: ${full} B`);
    if (!hasBpfMemAlloc() || !memlockFollowsUse() || perSocketOnUse === undefined) return;
    // On use: the buckets now, and what the first test measured per socket for every slot.
    const onUse = await startEvents(group, [server.pid]);
    const idle = socksInfo(onUse.pid, max).memlock;
    await stopEvents(onUse);
    const whole = idle + perSocketOnUse * max;
    assert.ok(whole <= DEFAULT_TABLE_BUDGET, `on use, every slot: ${idle} + ${perSocketOnUse} × ${max} = ${whole} B`);
  });
});
