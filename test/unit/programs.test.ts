/**
 * The program table against the built object, and the load plan against the
 * tracepoint prototypes captured from real kernels (test/fixtures/kernels/,
 * written by tools/capture-prototypes.ts on each kernel).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { readElfFile } from '../../src/elf/elf-file.ts';

const STT_FUNC = 2;
const STB_GLOBAL = 1;
import { describeOff, essentialLossError, FEATURES, hasOtherVariant, planPrograms, PROGRAMS, type KernelCapability, type KernelHooks } from '../../src/kernel/programs.ts';
import { idleFlushTiming, socketTableAllocation, unaskedUprobeFeatures } from '../../src/kernel/tcp-tracer.ts';
import type { CallKind } from '../../src/uprobes/uprobe-spec.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';

const FIXTURES = join(REPO_ROOT, 'test/fixtures/kernels');

interface KernelFixture {
  release: string;
  tracepoints: Record<string, string[]>;
  /** What the verifier allowed there (src/kernel/program-probes.ts). */
  capabilities: Record<KernelCapability, boolean>;
}

function fixture(name: string): KernelFixture {
  return JSON.parse(readFileSync(join(FIXTURES, name), 'utf8')) as KernelFixture;
}

/** A kernel as the planner sees it: the captured prototypes and capabilities; every syscall tracepoint (x86_64). */
function hooksOf(k: KernelFixture, without: string[] = [], asked: KernelCapability[] = []): KernelHooks {
  return {
    tracepointArgs: (name) => (without.includes(name) ? undefined : k.tracepoints[name]?.length),
    hasTracepoint: (category) => category === 'syscalls',
    can: (cap) => {
      asked.push(cap);
      return k.capabilities[cap];
    },
  };
}

test('every program in kspan.bpf.o is in the table, with its section, and nothing else is', () => {
  const elf = readElfFile(join(REPO_ROOT, 'bpf/.output/kspan.bpf.o'));
  const inObject = new Map<string, string>();
  for (const sym of elf.symbols('.symtab')) {
    const section = elf.sections[sym.shndx]?.name;
    if (sym.type === STT_FUNC && sym.bind === STB_GLOBAL && section && section !== '.text') inObject.set(sym.name, section);
  }
  const inTable = new Map(PROGRAMS.map((p) => [p.name, p.section]));
  assert.deepEqual([...inObject].sort(), [...inTable].sort());
  for (const p of PROGRAMS) assert.ok(p.feature in FEATURES, `${p.name}: unknown feature ${p.feature}`);
});

test('captured kernels: each gets the variants its prototypes allow, and loses nothing', () => {
  const expected: Record<string, { ioPath: string; retransmit: string; flush: string }> = {
    '6.1': { ioPath: 'syscalls', retransmit: 'on_retransmit_noerr', flush: 'flush_idle_walk' },
    '6.12': { ioPath: 'sock_length', retransmit: 'on_retransmit_noerr', flush: 'flush_idle' },
    '6.18': { ioPath: 'sock_length', retransmit: 'on_retransmit', flush: 'flush_idle' },
  };
  const files = readdirSync(FIXTURES).filter((f) => f.endsWith('.json'));
  for (const [version, want] of Object.entries(expected)) {
    assert.ok(files.includes(`${version}.json`), `fixture ${version}.json is missing`);
    const k = fixture(`${version}.json`);
    const hooks = hooksOf(k);
    const ioPath = hooks.tracepointArgs('sock_send_length') !== undefined ? 'sock_length' : 'syscalls';
    assert.equal(ioPath, want.ioPath, version);
    const plan = planPrograms(hooks, ioPath);
    assert.deepEqual(plan.off, [], `${version}: ${plan.off.map(describeOff).join('; ')}`);
    const retransmit = PROGRAMS.filter((p) => p.feature === 'retransmit' && plan.load(p.name)).map((p) => p.name);
    assert.deepEqual(retransmit, [want.retransmit], version);
    // The idle flush is chosen before the load: no refused load, no second object.
    const flush = PROGRAMS.filter((p) => p.feature === 'idle-flush' && plan.load(p.name)).map((p) => p.name);
    assert.deepEqual(flush, [want.flush], version);
    // Exactly one send/recv path loads, all of it (the fallback: its exit-only programs, bpf_task_pt_regs being there).
    const io = PROGRAMS.filter((p) => p.feature === 'send-recv');
    const wanted = io.filter((p) => p.ioPath === ioPath && !p.name.startsWith('paired_') && !p.with);
    assert.deepEqual(io.filter((p) => plan.load(p.name)).map((p) => p.name), wanted.map((p) => p.name), version);
  }
});

test('a variant the verifier refuses gives way to the next; the last one refused switches the feature off', () => {
  const hooks = hooksOf(fixture('6.18.json'));
  const one = planPrograms(hooks, 'sock_length', new Map([['on_retransmit', { reason: 'rejected by the verifier: x' }]]));
  assert.equal(one.load('on_retransmit_noerr'), true);
  assert.deepEqual(one.off, []);
  const both = planPrograms(hooks, 'sock_length', new Map([['on_retransmit', { reason: 'r1' }], ['on_retransmit_noerr', { reason: 'r2' }]]));
  assert.deepEqual(both.off, [{
    feature: 'retransmit', grade: 'optional', lost: FEATURES.retransmit.lost,
    programs: [{ name: 'on_retransmit', reason: 'r1' }, { name: 'on_retransmit_noerr', reason: 'r2' }],
  }]);
  assert.equal(describeOff(both.off[0]), 'retransmit is off (on_retransmit: r1; on_retransmit_noerr: r2); lost: tcp.retransmit events');
});

test('one refused accept program switches only it off; the rest of the feature loads', () => {
  const plan = planPrograms(hooksOf(fixture('6.18.json')), 'sock_length', new Map([['on_accept_exit', { reason: 'denied' }]]));
  assert.equal(plan.load('on_accept4_exit'), true);
  assert.equal(plan.load('on_accept_exit'), false);
  assert.deepEqual(plan.off.map((f) => [f.feature, f.grade, f.programs.map((p) => p.name)]), [['accept', 'optional', ['on_accept_exit']]]);
});

test('a missing essential hook is reported as essential; a prototype too short for a program is missing', () => {
  const k = fixture('6.18.json');
  const plan = planPrograms(hooksOf(k, ['inet_sock_set_state']), 'sock_length');
  assert.deepEqual(plan.off.map((f) => [f.feature, f.grade]), [['socket-state', 'essential']]);
  assert.match(plan.off[0].programs[0].reason, /no BTF tracepoint inet_sock_set_state/);

  const short: KernelHooks = { ...hooksOf(k), tracepointArgs: (n) => (n === 'tcp_retransmit_skb' ? 1 : k.tracepoints[n]?.length), hasTracepoint: () => true };
  const p2 = planPrograms(short, 'sock_length');
  assert.deepEqual(p2.off.map((f) => f.feature), ['retransmit']);
  assert.match(p2.off[0].programs[0].reason, /tcp_retransmit_skb has 1 argument\(s\); the program reads 3/);
});

test('the send/recv path not in use is no loss', () => {
  const plan = planPrograms(hooksOf(fixture('6.18.json')), 'syscalls');
  assert.deepEqual(plan.off, []);
  assert.equal(plan.load('on_send_length'), false);
  assert.equal(plan.load('on_write_exit'), true);
});

test('capabilities are asked only for the variant the plan would load', () => {
  const asked: KernelCapability[] = [];
  const plan = planPrograms(hooksOf(fixture('6.1.json'), [], asked), 'syscalls');
  assert.deepEqual(asked, [...Array(8).fill('task_pt_regs'), 'bpf_loop', 'sleepable_queue_map']);
  const d = plan.decisions.get('flush_idle');
  assert.deepEqual(d, { load: false, why: 'other-variant', reason: 'flush_idle_walk serves syscall here (the kernel\'s verifier does not allow a queue map in a sleepable program)' });
  const none: KernelCapability[] = [];
  planPrograms(hooksOf(fixture('6.18.json'), [], none), 'sock_length', new Map([['flush_idle', { reason: 'refused' }]]));
  assert.deepEqual(none, []);
});

test('uprobe programs load only for the function spans asked for; leaving them out is no loss', () => {
  const uprobePrograms = PROGRAMS.filter((p) => p.feature.startsWith('uprobe')).map((p) => p.name);
  const loaded = (kinds: readonly CallKind[] | undefined) => {
    const plan = planPrograms(hooksOf(fixture('6.1.json')), 'syscalls', new Map(), PROGRAMS, new Set(unaskedUprobeFeatures(kinds)));
    assert.deepEqual(plan.off, []);
    return uprobePrograms.filter((n) => plan.load(n));
  };
  assert.deepEqual(loaded([]), []);
  assert.deepEqual(loaded(['call']), ['uprobe_call_entry', 'uprobe_call_return', 'calls_on_exit', 'calls_on_exec']);
  assert.deepEqual(loaded(['dns']), ['uprobe_call_entry', 'uprobe_call_return', 'uprobe_dns_return', 'calls_on_exit', 'calls_on_exec']);
  assert.deepEqual(loaded(['dns', 'tls', 'call']), uprobePrograms);
  assert.deepEqual(loaded(undefined), uprobePrograms);
});

test('the fallback reads the fd at the exit alone where bpf_task_pt_regs is allowed, and pairs entry and exit where not', () => {
  const k = fixture('6.1.json');
  const withRegs = planPrograms(hooksOf(k), 'syscalls');
  assert.deepEqual(withRegs.off, []);
  assert.equal(withRegs.load('on_read_exit'), true);
  assert.equal(withRegs.load('paired_read_exit'), false);
  assert.deepEqual(withRegs.decisions.get('on_read_enter'), { load: false, why: 'other-variant', reason: 'goes with paired_read_exit, not loaded here' });

  const old: KernelHooks = { ...hooksOf(k), can: (cap) => cap !== 'task_pt_regs' && k.capabilities[cap] };
  const paired = planPrograms(old, 'syscalls');
  assert.deepEqual(paired.off, []);
  for (const sc of ['write', 'writev', 'sendto', 'sendmsg', 'read', 'readv', 'recvfrom', 'recvmsg']) {
    assert.equal(paired.load(`on_${sc}_exit`), false, sc);
    assert.equal(paired.load(`paired_${sc}_exit`), true, sc);
    assert.equal(paired.load(`on_${sc}_enter`), true, sc);
  }
  assert.deepEqual(paired.decisions.get('on_read_exit'), {
    load: false, why: 'other-variant', reason: 'paired_read_exit serves tracepoint/syscalls/sys_exit_read here (the kernel\'s verifier does not allow bpf_task_pt_regs in a tracepoint program)',
  });

  // The exit-only program refused at load: the next plan pairs that syscall's programs.
  const refused = planPrograms(hooksOf(k), 'syscalls', new Map([['on_write_exit', { reason: 'verifier said no' }]]));
  assert.deepEqual(refused.off, []);
  assert.equal(refused.load('paired_write_exit'), true);
  assert.equal(refused.load('on_write_enter'), true);
  assert.equal(refused.load('on_read_enter'), false);
});

test('send/recv lost for want of a privilege is KSPAN_ERR_PRIVILEGE with what to grant, never "this kernel lacks a hook"', () => {
  const grant = 'grant CAP_DAC_READ_SEARCH (libbpf reads the ids of classic tracepoints there), or run as root';
  // 6.1 (send/recv from classic tracepoints) with tracefs closed to this process.
  const closed: KernelHooks = { ...hooksOf(fixture('6.1.json')), tracepointsUnreadable: { reason: 'tracefs is not readable here', privilege: grant } };
  const plan = planPrograms(closed, 'syscalls');
  const sendRecv = plan.off.find((f) => f.feature === 'send-recv')!;
  assert.equal(sendRecv.grade, 'essential');
  assert.ok(sendRecv.programs.length >= 8, JSON.stringify(sendRecv.programs));
  for (const p of sendRecv.programs) assert.deepEqual(p, { name: p.name, reason: `tracefs is not readable here: ${grant}`, privilege: grant });
  for (const forced of [false, true]) {
    const err = essentialLossError(sendRecv, 'syscalls', forced);
    assert.equal(err.code, 'KSPAN_ERR_PRIVILEGE', `forced ${forced}`);
    assert.equal(err.hint, grant, 'one hint, however many programs it kept off');
    const names = sendRecv.programs.map((p) => p.name).join(', ');
    assert.equal(err.message, `not allowed to attach the programs kspan needs: send-recv is off (${names}: tracefs is not readable here: ${grant}); lost: ${FEATURES['send-recv'].lost} (${grant})`);
  }

  // An attach refused for a privilege (bpf-object.ts attachRefusedHint) keeps it through the plan.
  const paranoid = 'kernel.perf_event_paranoid is 3, which on this kernel lets only CAP_SYS_ADMIN open the perf events classic tracepoints attach through: set sysctl kernel.perf_event_paranoid=2, or grant CAP_SYS_ADMIN';
  const refused = planPrograms(hooksOf(fixture('6.18.json')), 'sock_length', new Map([['on_send_length', { reason: `could not attach (EACCES (13): ${paranoid})`, privilege: paranoid }]]));
  const off = refused.off.find((f) => f.feature === 'send-recv')!;
  assert.deepEqual(off.programs, [{ name: 'on_send_length', reason: `could not attach (EACCES (13): ${paranoid})`, privilege: paranoid }]);
  assert.deepEqual([essentialLossError(off, 'sock_length', false).code, essentialLossError(off, 'sock_length', false).hint], ['KSPAN_ERR_PRIVILEGE', paranoid]);

  // One program missing for want of a hook: the kernel's fault, as before.
  const mixed = planPrograms(hooksOf(fixture('6.18.json'), ['sock_recv_length']), 'sock_length', new Map([['on_send_length', { reason: 'x', privilege: paranoid }]]));
  const lost = mixed.off.find((f) => f.feature === 'send-recv')!;
  assert.equal(essentialLossError(lost, 'sock_length', false).code, 'KSPAN_ERR_KERNEL');
  assert.match(essentialLossError(lost, 'sock_length', false).message, /^this kernel lacks a hook kspan needs: /);
  const forcedErr = essentialLossError(lost, 'sock_length', true);
  assert.deepEqual([forcedErr.code, forcedErr.hint], ['KSPAN_ERR_KERNEL', 'leave --io-hooks at auto: kspan picks the path this kernel has']);
});

test('a refused essential program has a variant to give way to only where its hook has another program', () => {
  assert.equal(hasOtherVariant('on_read_exit'), true);
  assert.equal(hasOtherVariant('paired_read_exit'), true);
  assert.equal(hasOtherVariant('on_read_enter'), false);
  assert.equal(hasOtherVariant('on_send_length'), false);
  assert.equal(hasOtherVariant('on_destroy_sock'), false);
  assert.equal(hasOtherVariant('no_such_program'), false);
});

test('socketTableAllocation: what was asked for, else on use where the kernel has the BPF memory allocator (6.1+)', () => {
  assert.equal(socketTableAllocation(undefined, () => true), 'on-use');
  assert.equal(socketTableAllocation(undefined, () => false), 'preallocated');
  assert.equal(socketTableAllocation('preallocated', () => true), 'preallocated');
  assert.equal(socketTableAllocation('on-use', () => true), 'on-use');
});

test('idleFlushTiming: a tick of half the idle time within 10-250 ms, a guard a fifth more than the tick', () => {
  const ms = 1_000_000n;
  assert.deepEqual(idleFlushTiming(500n * ms), { tickMs: 250, guardNs: 300n * ms });
  assert.deepEqual(idleFlushTiming(3_600_000n * ms), { tickMs: 250, guardNs: 300n * ms });
  assert.deepEqual(idleFlushTiming(100n * ms), { tickMs: 50, guardNs: 60n * ms });
  assert.deepEqual(idleFlushTiming(30n * ms), { tickMs: 15, guardNs: 18n * ms });
  assert.deepEqual(idleFlushTiming(1n * ms), { tickMs: 10, guardNs: 12n * ms });
  // the guard stays below the idle time wherever the tick is half of it: sockets in use need no claim
  for (const idle of [20n, 100n, 499n, 500n]) assert.ok(idleFlushTiming(idle * ms).guardNs < idle * ms);
});
