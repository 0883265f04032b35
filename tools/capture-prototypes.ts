/**
 * Writes the prototypes of the BTF tracepoints kspan's programs use, read from a
 * kernel's BTF, as a small JSON fixture for test/unit/programs.test.ts.
 * Usage: node tools/capture-prototypes.ts [BTF_FILE] > test/fixtures/kernels/<release>.json
 * (default BTF_FILE: the running kernel's /sys/kernel/btf/vmlinux; then, as root, the
 * verifier's capabilities are probed too; from a BTF file they must be added by hand)
 */
import { release } from 'node:os';
import { PROGRAM_TRACEPOINTS } from '../src/kernel/kernel-features.ts';
import { readTracepointPrototypes } from '../src/kernel/tracepoint-prototypes.ts';
import { VMLINUX_BTF } from '../src/kernel/kernel-features.ts';
import { kernelCapabilities } from '../src/kernel/program-probes.ts';
import type { KernelCapability } from '../src/kernel/programs.ts';

const [btfPath, rel] = process.argv.slice(2);
const CAPABILITIES: KernelCapability[] = ['bpf_loop', 'sleepable_queue_map', 'task_pt_regs'];
const names = [...PROGRAM_TRACEPOINTS, 'sched_switch', 'sched_wakeup', 'sched_wakeup_new', 'sched_process_exec', 'sched_process_fork', 'sched_process_exit'];
const prototypes = readTracepointPrototypes(names, btfPath ?? VMLINUX_BTF);
const out = {
  release: rel ?? (btfPath ? undefined : release()),
  source: btfPath ? 'captured BTF' : '/sys/kernel/btf/vmlinux',
  tracepoints: Object.fromEntries([...prototypes].sort(([a], [b]) => a.localeCompare(b))),
  // Probed on the running kernel only (root): a BTF file cannot tell what the verifier allows.
  capabilities: btfPath ? undefined : Object.fromEntries(CAPABILITIES.map((cap) => [cap, kernelCapabilities()(cap)])),
};
process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
