/**
 * The start-up line at debug level: each phase's time and, per loaded program,
 * the instructions the verifier processed. `kspan events` asks for no function
 * spans, so none of the uprobe programs is loaded (they are a third of the
 * verifier's work); `--no-sched` leaves the scheduler programs out too.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { chooseIoPath, kernelHooks } from '../../src/kernel/kernel-features.ts';
import { planPrograms, PROGRAMS } from '../../src/kernel/programs.ts';
import { KSPAN_BIN } from '../helpers/kspan-cli.ts';
import { ProcessGroup } from '../helpers/processes.ts';
import { e2eOptions } from '../helpers/require-bpf.ts';
import { scaled } from '../helpers/timeouts.ts';

const PHASES = ['since_start', 'node_bootstrap', 'kernel_hooks', 'plan', 'object_open', 'verifier_load', 'attach', 'targets'];

async function startupLine(extra: string[]): Promise<{ ms: Record<string, number>; verified_insns: Record<string, number> }> {
  const group = new ProcessGroup();
  try {
    const p = group.start(KSPAN_BIN, ['events', '--pid', String(process.pid), '--duration', '0.2', '--log-level', 'debug', ...extra]);
    await p.waitStderr(/"msg":"stopped"/, scaled(60_000));
    const { code } = await p.exited;
    assert.equal(code, 0, p.stderr.join('\n'));
    const lines = p.stderr.filter((l) => l.includes('"msg":"start-up"'));
    assert.equal(lines.length, 1, p.stderr.join('\n'));
    return JSON.parse(lines[0]);
  } finally {
    await group.killAll();
  }
}

describe('start-up timing', e2eOptions(), () => {
  const hooks = kernelHooks();
  const expected = (disabled: string[]) => {
    const plan = planPrograms(hooks, chooseIoPath(undefined, hooks), new Map(), PROGRAMS, new Set(disabled));
    return PROGRAMS.filter((p) => plan.load(p.name)).map((p) => p.name).sort();
  };

  test('kspan events: every phase timed; exactly the planned programs, no uprobe program; --no-sched: no scheduler program', async () => {
    const line = await startupLine([]);
    assert.deepEqual(Object.keys(line.ms), PHASES);
    for (const phase of PHASES) assert.ok(line.ms[phase] >= 0, phase);
    assert.ok(line.ms.since_start >= line.ms.verifier_load + line.ms.object_open, JSON.stringify(line.ms));
    assert.deepEqual(Object.keys(line.verified_insns).sort(), expected(['uprobes', 'uprobe-dns', 'uprobe-tls']));
    assert.ok(!Object.keys(line.verified_insns).some((n) => n.startsWith('uprobe_') || n.startsWith('calls_on_')));
    // bpf_prog_info.verified_insns exists since 5.16: every loaded program cost the verifier something
    for (const [name, n] of Object.entries(line.verified_insns)) assert.ok(n > 0, `${name}: ${n}`);

    const noSched = await startupLine(['--no-sched']);
    assert.deepEqual(Object.keys(noSched.verified_insns).sort(), expected(['uprobes', 'uprobe-dns', 'uprobe-tls', 'sched']));
    assert.equal(noSched.verified_insns.on_set_state, line.verified_insns.on_set_state);
  });
});
