/**
 * `kspan doctor`: can kspan run here? Each check says what it found and, when it
 * fails, what to do. Hook types are proven by loading (and attaching) a tiny
 * program from bpf/.output/probe.bpf.o, then kspan's own object is loaded with
 * the I/O path this kernel gets. Exit 0 only when kspan can run.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { readElfFile } from '../elf/elf-file.ts';
import { entryFileOffset } from '../elf/symbol-offset.ts';
import { HINT_BPFFS, HINT_BTF, HINT_LIBBPF, HINT_TRACEFS, KspanError } from '../core/errors.ts';
import { Capabilities, HINT_PERF_PARANOID, loadRefusedHint, perfEventParanoid, perfEventsRestricted, tracefsState } from '../kernel/privileges.ts';
import { BpfObject } from '../kernel/bpf-object.ts';
import {
  bpffsMounted,
  chooseIoPath,
  hasVmlinuxBtf,
  kernelRelease,
} from '../kernel/kernel-features.ts';
import { libbpf } from '../kernel/native.ts';
import { TcpTracer } from '../kernel/tcp-tracer.ts';
import { describeOff, FEATURES, PROGRAMS } from '../kernel/programs.ts';

const HINT_FLOOR = 'kspan needs Linux 5.12 or later: tp_btf programs that call bpf_get_socket_cookie (this kernel refused one)';

export type CheckStatus = 'ok' | 'warn' | 'fail';
export interface Check {
  name: string;
  status: CheckStatus;
  detail: string;
  fix?: string;
}

const PROBE_OBJECT = fileURLToPath(new URL('../../bpf/.output/probe.bpf.o', import.meta.url));

function errorText(err: unknown): string {
  if (err instanceof KspanError) {
    const cause = err.cause instanceof Error ? `: ${err.cause.message}` : '';
    return `${err.code}: ${err.message}${cause}`;
  }
  return err instanceof Error ? err.message : String(err);
}

/** Loads one probe program (only it), attaches it, detaches. */
function probeProgram(name: string, attach: (o: BpfObject) => void = (o) => o.attach(name)): Check['status'] | Error {
  let obj: BpfObject | undefined;
  try {
    obj = BpfObject.open(PROBE_OBJECT);
    for (const p of obj.programNames) obj.setAutoload(p, p === name);
    obj.load();
    attach(obj);
    return 'ok';
  } catch (err) {
    return err as Error;
  } finally {
    obj?.close();
  }
}

export function runDoctor(): Check[] {
  const checks: Check[] = [];
  const add = (name: string, status: CheckStatus, detail: string, fix?: string) =>
    checks.push({ name, status, detail, ...(status === 'ok' ? {} : { fix }) });

  // The floor is judged by feature (hook:tp_btf+socket_cookie below, then the
  // real programs), not by the version number: distributions backport.
  add('kernel', 'ok', `Linux ${kernelRelease()}`);

  const btf = hasVmlinuxBtf();
  add('btf', btf ? 'ok' : 'fail', btf ? '/sys/kernel/btf/vmlinux present' : 'no /sys/kernel/btf/vmlinux', HINT_BTF);

  // Capabilities, not the uid: root without capabilities (a container, setpriv)
  // cannot load BPF either, and a user holding them can.
  const caps = new Capabilities();
  const privOk = caps.canLoadBpf();
  add('privileges', privOk ? 'ok' : 'fail', `${caps.describe()}${privOk ? ': may load and attach BPF' : ''}`, loadRefusedHint(caps));
  const ptrace = caps.has('CAP_SYS_PTRACE') || caps.has('CAP_SYS_ADMIN');
  add('ptrace', ptrace ? 'ok' : 'warn', ptrace ? 'can read other users\' /proc/PID/mem (trace context)' : 'no CAP_SYS_PTRACE: the trace context of other users\' processes cannot be read',
    'grant CAP_SYS_PTRACE');
  const dacRead = caps.has('CAP_DAC_READ_SEARCH') || caps.has('CAP_DAC_OVERRIDE');
  add('file-read', dacRead ? 'ok' : 'warn', dacRead ? 'can read any file (tracefs, the targets\' ELF files)' : 'no CAP_DAC_READ_SEARCH: files not readable by this uid (tracefs, a target\'s ELF files) are out of reach',
    'grant CAP_DAC_READ_SEARCH');

  // Classic tracepoints serve send/recv before Linux 6.3 (kspan cannot run
  // without them there), and accept() everywhere (optional: lost, kspan runs on).
  const ioPath = chooseIoPath();
  const classicStatus: CheckStatus = ioPath === 'syscalls' ? 'fail' : 'warn';
  const tfs = tracefsState(caps);
  add('tracefs', tfs.state === 'ok' ? 'ok' : classicStatus, tfs.detail, tfs.fix);
  // Debian's perf_event_paranoid 3: classic tracepoints need CAP_SYS_ADMIN.
  const paranoid = perfEventParanoid();
  const restricted = perfEventsRestricted(caps, paranoid);
  if (!restricted) add('perf-events', 'ok', `kernel.perf_event_paranoid ${paranoid ?? '?'}: perf events may be opened`);
  else add('perf-events', classicStatus, restricted, HINT_PERF_PARANOID);
  const bfs = bpffsMounted();
  add('bpffs', bfs ? 'ok' : 'warn', bfs ? 'mounted at /sys/fs/bpf' : 'not mounted (only needed for pinning)', HINT_BPFFS);

  let lib = false;
  try {
    const l = libbpf();
    const [ma, mi] = [l.majorVersion(), l.minorVersion()];
    lib = ma >= 1;
    add('libbpf', lib ? 'ok' : 'fail', `libbpf.so.1 version ${ma}.${mi}`, HINT_LIBBPF);
  } catch (err) {
    add('libbpf', 'fail', errorText(err), HINT_LIBBPF);
  }
  if (!lib || !privOk) return checks;

  const probeObjOk = existsSync(PROBE_OBJECT);
  if (!probeObjOk) {
    add('bpf-objects', 'fail', `${PROBE_OBJECT} missing`, 'build the BPF objects: make -C bpf');
    return checks;
  }
  const hook = (name: string, program: string, fix: string, attach?: (o: BpfObject) => void) => {
    const r = probeProgram(program, attach);
    add(name, r === 'ok' ? 'ok' : 'fail', r === 'ok' ? `loaded and attached ${program}` : errorText(r), fix);
  };
  hook('hook:tracepoint', 'probe_tracepoint', tfs.fix ?? (restricted ? HINT_PERF_PARANOID : HINT_TRACEFS));
  const tracepoint = checks.at(-1)!;
  if (tracepoint.status === 'fail' && classicStatus === 'warn') {
    tracepoint.status = 'warn';
    tracepoint.fix = `${tracepoint.fix}; without it kspan runs on; lost: ${FEATURES.accept.lost}`;
  }
  hook('hook:tp_btf+socket_cookie', 'probe_tp_btf_cookie', HINT_FLOOR);
  const belowFloor = checks.at(-1)?.status === 'fail';
  hook('hook:ringbuf', 'probe_ringbuf', 'kspan needs the BPF ring buffer (Linux 5.8+)');
  hook('hook:thread_pointer', 'probe_thread_pointer', 'CO-RE read of task->thread.fsbase failed: the kernel BTF lacks it');
  // kspan's agent attaches no uprobe: a refusal is worth knowing, not a failure.
  hook('hook:uprobe', 'probe_uprobe', 'uprobes need CONFIG_UPROBES and tracefs/perf events', (o) =>
    o.attach('probe_uprobe', { binaryPath: process.execPath, offset: entryFileOffset(readElfFile(process.execPath)), pid: process.pid }));
  const uprobe = checks.at(-1)!;
  if (uprobe.status === 'fail') {
    uprobe.status = 'warn';
    uprobe.fix = 'nothing to do: kspan\'s agent attaches no uprobe';
  }

  add('io-path', 'ok', ioPath === 'sock_length'
    ? 'send/recv from tp_btf sock_send_length/sock_recv_length'
    : 'send/recv from syscall tracepoints (sock_send_length/sock_recv_length absent: kernel < 6.3)');

  // The real programs, loaded and attached as `kspan run` would: one line per
  // feature, saying which program serves it or what is lost without it. Below
  // the floor every essential program is refused: say so instead of trying.
  if (belowFloor) {
    add('kspan-programs', 'fail', 'not loaded: this kernel is below kspan\'s floor (hook:tp_btf+socket_cookie)', HINT_FLOOR);
    return checks;
  }
  try {
    const t = TcpTracer.open({ onRecord: () => {}, onSchedRecord: () => {} });
    void t.stop();
    for (const [feature, spec] of Object.entries(FEATURES)) {
      const off = t.plan.off.find((f) => f.feature === feature);
      const loaded = PROGRAMS.filter((p) => p.feature === feature && t.plan.load(p.name)).map((p) => p.name);
      const tracefsFix = off && tfs.state !== 'ok' && off.programs.some((p) => p.reason.includes('tracefs')) ? `${tfs.fix}; ` : '';
      if (off) add(`feature:${feature}`, 'warn', describeOff(off), `${tracefsFix}without it kspan runs on; lost: ${spec.lost}`);
      else add(`feature:${feature}`, 'ok', `${loaded.length > 3 ? `${loaded.length} programs` : loaded.join(', ')} loaded and attached`);
    }
    add('kspan-programs', 'ok', `kspan.bpf.o loaded and attached (${t.ioPath})`);
  } catch (err) {
    add('kspan-programs', 'fail', errorText(err), err instanceof KspanError ? err.hint : undefined);
  }
  return checks;
}

export function formatChecks(checks: Check[]): string {
  const mark = { ok: ' ok ', warn: 'warn', fail: 'FAIL' } as const;
  return checks
    .map((c) => `[${mark[c.status]}] ${c.name.padEnd(26)} ${c.detail}${c.fix ? `\n       fix: ${c.fix}` : ''}`)
    .join('\n');
}

export function doctorExitCode(checks: Check[]): number {
  return checks.some((c) => c.status === 'fail') ? 1 : 0;
}
