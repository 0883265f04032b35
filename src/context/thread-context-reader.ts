/**
 * Per target process: which thread-context scheme it publishes, where its TLS
 * pointer is, and its Resource; and keeping the BPF side in step (the location
 * in the process's `targets` entry, Node layouts in `node_layouts`).
 *
 * Pure of the loader: the BPF maps are reached through the functions passed in
 * (set or delete a pid's location, and its Node layout), so this runs in tests
 * without BPF.
 *
 * Processes change under us: a library with the TLS symbol may be dlopen'ed
 * later, ld.so may not have relocated it yet, the pid may exec another image.
 * refresh() re-resolves a target only when its set of mapped files changed (a
 * cheap read of /proc/PID/maps) or its OTEL_CTX header's published_at_ns moved
 * (a 32-byte read), so calling it every second or two is fine.
 */
import { KspanCtxScheme, type KspanTlsLoc, KspanTlsKind } from '../records/abi.generated.ts';
import { readProcessContext, readPublishedAt } from './process-context.ts';
import type { ProcessContextInfo } from './process-context-format.ts';
import { OTEL_THREAD_CTX_SYMBOL, type TlsResolution, TlsResolveError, TlsResolver } from './tls-resolver.ts';
import { procFailure } from './proc-mem.ts';
import { readProcMaps, type Mapping } from './proc-maps.ts';
import type { KspanNodeLayout } from '../records/abi.generated.ts';
import { nodeLayoutForBpf } from './nodejs/node-layout.ts';
import { NODE_TLS_SYMBOL } from './nodejs/v8-walk.ts';

export type ContextSchemeName = 'otel_thread_ctx_v1' | 'nodejs_v1_dev';

export interface TargetContext {
  pid: number;
  /** The scheme found, or null when the process publishes no thread context (yet). */
  scheme: ContextSchemeName | null;
  /** How the TLS is reached (local-exec, initial-exec, tlsdesc, general-dynamic), when found. */
  model: TlsResolution['model'] | null;
  /** True when the location sits in the DTV (dlopen'ed library). */
  dynamic: boolean;
  /** The location pushed to BPF, when one was. */
  loc: KspanTlsLoc | null;
  /** nodejs_v1_dev: the V8 walk layout pushed to BPF (`node_layouts`), and its contract generation. */
  nodeLayout?: KspanNodeLayout;
  nodeGeneration?: 'G1' | 'G2' | 'G3';
  /** Why there is no location: not publishing, not ready, unsupported, ... */
  reason?: string;
  /** The target's Resource and thread-local configuration. */
  process: ProcessContextInfo;
}

export interface ThreadContextReaderOptions {
  /** Gives BPF a pid's location (TcpTracer.setContextLocation). */
  setLocation: (pid: number, loc: KspanTlsLoc) => void;
  /** Takes a pid's location back (TcpTracer.clearContextLocation). */
  deleteLocation: (pid: number) => void;
  /** Writes / removes a Node.js target's walk layout (BPF `node_layouts`); enables nodejs_v1_dev. */
  setNodeLayout?: (pid: number, layout: KspanNodeLayout) => void;
  deleteNodeLayout?: (pid: number) => void;
  /**
   * Schemes the BPF side can read; a target publishing another one is reported
   * but gets no location (default: the native OTEP 4947 record, and the Node
   * walk when setNodeLayout is given).
   */
  bpfSchemes?: ReadonlySet<ContextSchemeName>;
  resolver?: TlsResolver;
  /** host.name for the Resource (default: this machine's hostname). */
  hostName?: string;
  /** Called with every target whose description changed (for `{"type":"target"}` lines). */
  onTarget?: (t: TargetContext) => void;
}

interface Tracked {
  fingerprint: string;
  target: TargetContext;
  /** The OTEL_CTX header's published_at_ns the description was made from. */
  publishedAt?: bigint;
}

/** Stats for self-metrics: resolution failures are counted, never silent. */
export interface ThreadContextReaderStats {
  resolved: number;
  notReady: number;
  failed: number;
  gone: number;
  /** Targets re-read because their process context was republished in place. */
  republished: number;
}

export class ThreadContextReader {
  readonly #opts: ThreadContextReaderOptions;
  readonly #resolver: TlsResolver;
  readonly #tracked = new Map<number, Tracked>();
  readonly #bpfSchemes: ReadonlySet<ContextSchemeName>;
  readonly stats: ThreadContextReaderStats = { resolved: 0, notReady: 0, failed: 0, gone: 0, republished: 0 };

  constructor(opts: ThreadContextReaderOptions) {
    this.#opts = opts;
    this.#resolver = opts.resolver ?? new TlsResolver();
    this.#bpfSchemes =
      opts.bpfSchemes ?? new Set<ContextSchemeName>(opts.setNodeLayout ? ['otel_thread_ctx_v1', 'nodejs_v1_dev'] : ['otel_thread_ctx_v1']);
  }

  /** Starts following a process (or re-checks it). Returns its description, or null if it is gone. */
  track(pid: number): TargetContext | null {
    const fingerprint = mapsFingerprint(pid);
    if (fingerprint === undefined) {
      this.untrack(pid);
      this.stats.gone++;
      return null;
    }
    const known = this.#tracked.get(pid);
    // Same files mapped and already resolved (or unsupported): nothing to redo,
    // unless the process context was republished in place (new Resource or
    // threadlocal keys in the same mapping), which maps cannot show.
    if (known && known.fingerprint === fingerprint && (known.target.loc || !isRetryable(known.target.reason))) {
      if (!this.#republished(pid, known)) return known.target;
      this.stats.republished++;
    }
    let target: TargetContext;
    try {
      target = this.#describe(pid);
    } catch (err) {
      if (isGone(err)) {
        this.untrack(pid);
        this.stats.gone++;
        return null;
      }
      throw err;
    }
    // The layout before the location: BPF never walks a pid without one.
    if (target.nodeLayout) this.#opts.setNodeLayout?.(pid, target.nodeLayout);
    if (target.loc) this.#opts.setLocation(pid, target.loc);
    else if (known?.target.loc) this.#opts.deleteLocation(pid);
    if (!target.nodeLayout && known?.target.nodeLayout) this.#opts.deleteNodeLayout?.(pid);
    this.#tracked.set(pid, { fingerprint, target, publishedAt: publishedAtOf(pid, target.process) });
    if (!known || describeChanged(known.target, target)) this.#opts.onTarget?.(target);
    return target;
  }

  /** Whether the OTEL_CTX header's published_at_ns moved since the description (a 32-byte read). */
  #republished(pid: number, known: Tracked): boolean {
    const address = known.target.process.mappingAddress;
    if (address === undefined) return false;
    const at = readPublishedAt(pid, address);
    // 0: an update is under way, look again at the next refresh. undefined: the
    // mapping went away, which the maps fingerprint reports.
    if (at === undefined || at === 0n) return false;
    return at !== known.publishedAt;
  }

  /** Stops following a process and removes its location. */
  untrack(pid: number): void {
    const known = this.#tracked.get(pid);
    this.#tracked.delete(pid);
    if (known?.target.loc) this.#opts.deleteLocation(pid);
    if (known?.target.nodeLayout) this.#opts.deleteNodeLayout?.(pid);
  }

  /** Re-checks every tracked process; drops the ones that exited. */
  refresh(): void {
    for (const pid of [...this.#tracked.keys()]) this.track(pid);
  }

  target(pid: number): TargetContext | undefined {
    return this.#tracked.get(pid)?.target;
  }

  get targets(): TargetContext[] {
    return [...this.#tracked.values()].map((t) => t.target);
  }

  #describe(pid: number): TargetContext {
    const process = readProcessContext(pid, { hostName: this.#opts.hostName });
    const published = process.threadLocal?.scheme;
    // The process context says which scheme; without one, look for the native
    // symbol anyway (it is in .dynsym by contract).
    const scheme: ContextSchemeName = published === 'nodejs_v1_dev' ? 'nodejs_v1_dev' : 'otel_thread_ctx_v1';
    const base = { pid, process, model: null, dynamic: false, loc: null };
    if (published === 'unsupported') {
      return { ...base, scheme: null, reason: `unsupported threadlocal.schema_version ${process.threadLocal!.schemaVersion}` };
    }
    let res: TlsResolution | null;
    try {
      res = this.#resolver.resolve(pid, {
        symbol: scheme === 'nodejs_v1_dev' ? NODE_TLS_SYMBOL : OTEL_THREAD_CTX_SYMBOL,
        scheme: scheme === 'nodejs_v1_dev' ? KspanCtxScheme.KSPAN_SCHEME_NODEJS_V1 : KspanCtxScheme.KSPAN_SCHEME_OTEL_V1,
      });
    } catch (err) {
      if (!(err instanceof TlsResolveError)) throw err;
      if (err.reason === 'gone') throw err;
      if (err.reason === 'not-ready') this.stats.notReady++;
      else this.stats.failed++;
      // Unread, the scheme is unknown: only the process context can name it.
      return { ...base, scheme: published ? scheme : null, reason: `${err.reason}: ${err.message}` };
    }
    if (!res) return { ...base, scheme: null, reason: 'not-publishing' };
    const described = { ...base, scheme, model: res.model, dynamic: res.dynamic };
    if (!this.#bpfSchemes.has(scheme)) return { ...described, reason: `unsupported: the kernel reader does not walk ${scheme} yet` };
    if (res.loc.kind === KspanTlsKind.KSPAN_TLS_DTV && res.libc === 'unknown') {
      // The DTV layout is the loader's: without one mapped we cannot tell whose.
      return { ...described, reason: 'unsupported: dynamic TLS without a known libc loader mapped' };
    }
    if (scheme === 'nodejs_v1_dev') {
      const node = nodeLayoutForBpf(process.threadLocal?.raw ?? {});
      if (!node.ok) {
        this.stats.failed++;
        return { ...described, reason: `unsupported: ${node.reason}` };
      }
      this.stats.resolved++;
      return { ...described, loc: res.loc, nodeLayout: node.layout, nodeGeneration: node.generation };
    }
    this.stats.resolved++;
    return { ...described, loc: res.loc };
  }
}

/**
 * The once-per-target JSON object of `kspan events`:
 * {"type":"target","pid":…,"scheme":"otel_thread_ctx_v1"|"nodejs_v1_dev"|"none",
 *  "model":…,"resource":{…}}, plus why there is no location when there is none.
 */
export function targetEvent(t: TargetContext): Record<string, unknown> {
  const ev: Record<string, unknown> = {
    type: 'target',
    pid: t.pid,
    scheme: t.scheme ?? 'none',
    model: t.model ?? 'none',
    dynamic_tls: t.dynamic,
    resource_source: t.process.source,
    resource: t.process.resource,
  };
  if (t.process.threadLocal) ev.attribute_keys = t.process.threadLocal.keyMap;
  if (t.nodeGeneration) ev.node_contract = t.nodeGeneration;
  if (!t.loc && t.reason) ev.reason = t.reason;
  if (t.process.problem) ev.process_context_problem = t.process.problem;
  return ev;
}

/**
 * The set of files a process maps, as a string: changes when it dlopens a
 * library or execs. Undefined when the process is gone.
 */
function mapsFingerprint(pid: number): string | undefined {
  let maps: Mapping[];
  try {
    maps = readProcMaps(pid);
  } catch (err) {
    const failure = procFailure(err);
    if (failure === 'gone') return undefined;
    // Another user's process without CAP_SYS_PTRACE: no fingerprint; the description says why (scheme none, a permission reason).
    if (failure === 'permission') return '';
    throw err;
  }
  const files = new Set<string>();
  for (const m of maps) {
    // File mappings, by "dev inode path" of their first page.
    if (m.offset === 0 && m.inode !== 0 && m.path.startsWith('/')) files.add(`${m.dev} ${m.inode} ${m.path}`);
    // A process context published later in a named anonymous mapping.
    else if (m.path.includes('OTEL_CTX]')) files.add(m.path);
  }
  return [...files].sort().join('\n');
}

/**
 * The published_at_ns a description stands for: the one its Resource was read
 * from; when that read failed (mid-update, bad payload), the header's value
 * now, so an unusable publication is not re-read until it changes.
 */
function publishedAtOf(pid: number, process: ProcessContextInfo): bigint | undefined {
  if (process.publishedAtNs !== undefined) return process.publishedAtNs;
  return process.mappingAddress === undefined ? undefined : readPublishedAt(pid, process.mappingAddress);
}

function isRetryable(reason: string | undefined): boolean {
  return reason === undefined || reason === 'not-publishing' || reason.startsWith('not-ready');
}

function isGone(err: unknown): boolean {
  const reason = (err as { reason?: string; details?: { reason?: string } })?.reason ?? (err as { details?: { reason?: string } })?.details?.reason;
  return reason === 'gone';
}

function describeChanged(a: TargetContext, b: TargetContext): boolean {
  return (
    a.scheme !== b.scheme ||
    a.model !== b.model ||
    a.reason !== b.reason ||
    a.loc?.offset !== b.loc?.offset ||
    a.loc?.module !== b.loc?.module ||
    JSON.stringify(a.process.resource) !== JSON.stringify(b.process.resource)
  );
}
