/**
 * Per-kernel diagnostics, run inside each guest by test/kernels/guest-init.sh
 * (KSPAN_KERNELS_DIAG=1, the default): loads every program of kspan.bpf.o and
 * probe.bpf.o alone (every other program's autoload off), attaches it when it
 * loaded, and writes one JSON object per program to stdout: whether the verifier
 * accepted it and, when not, the tail of its verifier log (or libbpf's log).
 * Then: the classic syscall tracepoints kspan uses, whether the `syscall`
 * program flush_idle runs through BPF_PROG_TEST_RUN, and the BTF tracepoints
 * kspan's sections name.
 *
 *   node test/kernels/diag.ts > diag.jsonl
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { KspanError, VerifierError } from '../../src/core/errors.ts';
import { decodeKspanFlushArgs, encodeKspanFlushArgs, KSPAN_FLUSH_ARGS_SIZE } from '../../src/records/abi.generated.ts';
import { BpfObject } from '../../src/kernel/bpf-object.ts';
import { hasBtfTracepoint, hasTracepoint } from '../../src/kernel/kernel-features.ts';
import { REPO_ROOT } from '../helpers/build-fixture.ts';

const TAIL = 30;
const tail = (s: string) => s.trimEnd().split('\n').slice(-TAIL).join('\n');

function describeError(err: unknown, program?: string): Record<string, unknown> {
  if (err instanceof VerifierError) return { code: err.code, error: err.message, log: tail(err.log) };
  if (err instanceof KspanError) {
    // libbpf's log for the whole object: keep what concerns this program or failed
    const libbpfLog = ((err.details as { libbpfLog?: string[] } | undefined)?.libbpfLog ?? [])
      .filter((l) => !program || l.includes(`'${program}'`) || /fail|error|invalid/i.test(l));
    const cause = err.cause instanceof Error ? err.cause.message : undefined;
    return { code: err.code, error: err.message, cause, log: tail(libbpfLog.join('\n')) };
  }
  return { code: 'EXCEPTION', error: err instanceof Error ? err.message : String(err) };
}

function hookPresent(section: string): boolean | undefined {
  const [kind, a, b] = section.split('/');
  if (kind === 'tp_btf') return hasBtfTracepoint(a);
  if (kind === 'tracepoint' || kind === 'tp') return hasTracepoint(a, b);
  return undefined;
}

/** Loads `name` alone from `path`; attaches it unless it is a syscall or uprobe program. */
function loadAlone(path: string, name: string): Record<string, unknown> {
  const obj = BpfObject.open(path);
  const section = obj.sectionName(name);
  const out: Record<string, unknown> = { object: path.split('/').pop(), program: name, section, hook_present: hookPresent(section) };
  try {
    for (const p of obj.programNames) obj.setAutoload(p, p === name);
    try {
      const t0 = performance.now();
      obj.load();
      out.load = 'ok';
      // the object's maps are created in this time too (a few ms): compare programs with each other
      out.load_ms = Math.round(performance.now() - t0);
      out.verified_insns = obj.programInfo(name)?.verifiedInsns;
    } catch (err) {
      out.load = 'fail';
      Object.assign(out, describeError(err, name));
      return out;
    }
    if (section === 'syscall') {
      if (name === 'flush_idle' || name === 'flush_idle_walk') {
        const args = Buffer.alloc(KSPAN_FLUSH_ARGS_SIZE);
        const view = new DataView(args.buffer, args.byteOffset, args.length);
        encodeKspanFlushArgs({ idle_ns: 1n, guard_ns: 1n, flushed: 0n, more: 0n }, view, 0);
        try {
          out.test_run_retval = obj.run(name, args);
          out.test_run_flushed = Number(decodeKspanFlushArgs(view, 0).flushed);
          out.attach = 'ran via BPF_PROG_TEST_RUN';
        } catch (err) {
          out.attach = 'fail';
          out.attach_error = describeError(err);
        }
      } else {
        out.attach = 'n/a (syscall program)';
      }
    } else if (section.startsWith('uprobe') || section.startsWith('uretprobe')) {
      out.attach = 'n/a (uprobe: needs a binary)';
    } else {
      try {
        obj.attach(name);
        out.attach = 'ok';
      } catch (err) {
        out.attach = 'fail';
        out.attach_error = describeError(err);
      }
    }
    return out;
  } finally {
    obj.close();
  }
}

const objects = ['kspan.bpf.o', 'probe.bpf.o'].map((o) => join(REPO_ROOT, 'bpf/.output', o));
for (const path of objects) {
  if (!existsSync(path)) {
    console.log(JSON.stringify({ object: path, error: 'missing' }));
    continue;
  }
  const names = (() => {
    const o = BpfObject.open(path);
    try {
      return o.programNames;
    } finally {
      o.close();
    }
  })();
  for (const name of names) {
    let r: Record<string, unknown>;
    try {
      r = loadAlone(path, name);
    } catch (err) {
      r = { object: path.split('/').pop(), program: name, load: 'fail', ...describeError(err) };
    }
    console.log(JSON.stringify(r));
  }
}

// Classic syscall tracepoints (the I/O fallback and accept).
const syscalls = ['write', 'writev', 'sendto', 'sendmsg', 'read', 'readv', 'recvfrom', 'recvmsg', 'accept', 'accept4', 'getppid'];
const tracepoints: Record<string, boolean> = {};
for (const s of syscalls) {
  for (const dir of ['enter', 'exit']) tracepoints[`sys_${dir}_${s}`] = hasTracepoint('syscalls', `sys_${dir}_${s}`);
}
console.log(JSON.stringify({ kind: 'syscall_tracepoints', present: tracepoints }));
const btf = ['sock_send_length', 'sock_recv_length', 'inet_sock_set_state', 'tcp_retransmit_skb', 'tcp_send_reset',
  'tcp_receive_reset', 'tcp_destroy_sock', 'sched_process_exec', 'sched_process_fork', 'sched_process_exit', 'sys_enter', 'sys_exit'];
console.log(JSON.stringify({ kind: 'btf_tracepoints', present: Object.fromEntries(btf.map((t) => [t, hasBtfTracepoint(t)])) }));
