/** What src/records/abi.generated.ts is generated from: the record types of bpf/kspan.h. */
import { readFileSync } from 'node:fs';
import { parseElf } from '../../src/elf/elf-file.ts';
import { parseBtf } from './btf.ts';
import { generateDecoders } from './decoder-gen.ts';

export const RECORD_STRUCTS = ['kspan_trace_ctx', 'kspan_agg', 'kspan_event', 'kspan_span_ref', 'kspan_span_attrs', 'kspan_sock_agg', 'kspan_sock', 'kspan_tls_loc', 'kspan_target', 'kspan_node_layout', 'kspan_flush_args', 'kspan_call', 'kspan_sched_event', 'kspan_sched_thread', 'kspan_sched_off', 'kspan_sched_conf', 'kspan_proc_event', 'kspan_discovery', 'kspan_proc_seen'];
export const RECORD_ENUMS = ['kspan_event_type', 'kspan_event_flag', 'kspan_counter', 'kspan_tls_kind', 'kspan_ctx_scheme', 'kspan_dtv_layout', 'kspan_limit', 'kspan_target_flag', 'kspan_sock_flag', 'kspan_tx_at', 'kspan_call_flag', 'kspan_sched_flag', 'kspan_sched_limit', 'kspan_sched_off_kind', 'kspan_proc_event_type', 'kspan_discovery_flag'];

export function generatedRecordsSource(objectPath: string): string {
  const elf = parseElf(readFileSync(objectPath));
  const btfBytes = elf.section('.BTF');
  if (!btfBytes) throw new Error(`${objectPath} has no .BTF section (build with clang -g)`);
  return generateDecoders(parseBtf(btfBytes), {
    structs: RECORD_STRUCTS,
    enums: RECORD_ENUMS,
    source: 'bpf/.output/kspan.bpf.o (bpf/kspan.h, bpf/sched.h)',
  });
}
