/**
 * End-to-end tests need root and a kernel with BPF. Where that is missing they
 * skip, except when KSPAN_REQUIRE_BPF=1 (CI sets it): then the reason is a failure.
 */
import { existsSync } from 'node:fs';

export function bpfUnavailableReason(): string | undefined {
  if (process.geteuid?.() !== 0) return 'not root';
  if (!existsSync('/sys/kernel/btf/vmlinux')) return 'no kernel BTF';
  if (!existsSync('/sys/kernel/tracing/events')) return 'tracefs not mounted';
  return undefined;
}

/** Options for describe()/test(): `{ skip: reason }` locally, a thrown error in CI. */
export function e2eOptions(): { skip?: string } {
  const reason = bpfUnavailableReason();
  if (!reason) return {};
  if (process.env.KSPAN_REQUIRE_BPF === '1') {
    throw new Error(`end-to-end tests must run here (KSPAN_REQUIRE_BPF=1) but: ${reason}`);
  }
  return { skip: reason };
}
