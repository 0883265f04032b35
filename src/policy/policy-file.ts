/**
 * The policy file (`--config kspan.yaml`): YAML parsed with `yaml`, checked
 * against a zod schema, so a wrong key or value is reported with its file, line
 * and key path (`kspan.yaml:7: select.port[1]: …`). The values then go through
 * the same setting checks as the command line (src/core/config.ts, file layer).
 *
 *   select:   all, pid, exe, comm, cmdline, container, cgroup, k8s_pod_uid, port
 *   exclude:  the same kinds, but all
 *   spans:    orphans
 *   kernel:   orphans_ratio, unsampled, io_hooks, max_sockets, socket_table, idle_flush_ms
 *   export:   endpoint, protocol, console
 *   log:      level
 *   duration
 *
 * Pure but for reading the file's text (the caller may pass it).
 */
import { readFileSync } from 'node:fs';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node } from 'yaml';
import { z } from 'zod';
import { KspanError } from '../core/errors.ts';
import { LOG_LEVELS } from '../core/config.ts';

const listOf = <T extends z.ZodType>(t: T) => z.union([t, z.array(t)]);
const text = z.string().min(1);

const criteria = {
  pid: listOf(z.number().int().positive()),
  exe: listOf(text),
  comm: listOf(text),
  cmdline: listOf(text),
  container: listOf(text),
  cgroup: listOf(text),
  k8s_pod_uid: listOf(text),
  port: listOf(z.number().int().min(1).max(65535)),
};

export const POLICY_SCHEMA = z
  .object({
    select: z.object({ all: z.boolean(), ...criteria }).partial().strict(),
    exclude: z.object(criteria).partial().strict(),
    spans: z.object({ orphans: z.boolean() }).partial().strict(),
    kernel: z
      .object({
        orphans_ratio: z.number().min(0).lt(1),
        unsampled: z.boolean(),
        io_hooks: z.enum(['auto', 'sock_length', 'syscalls']),
        max_sockets: z.number().int().positive(),
        socket_table: z.enum(['auto', 'on-use', 'preallocated']),
        idle_flush_ms: z.number().int().positive(),
      })
      .partial()
      .strict(),
    export: z.object({ endpoint: text, protocol: z.enum(['grpc', 'http/protobuf']), console: z.boolean() }).partial().strict(),
    log: z.object({ level: z.enum(LOG_LEVELS as [string, ...string[]]) }).partial().strict(),
    duration: z.number().positive(),
  })
  .partial()
  .strict();

export type PolicyValues = z.infer<typeof POLICY_SCHEMA>;

export interface PolicyFile {
  path: string;
  values: PolicyValues;
  /** The line (1-based) of a dotted key (`select.port`), when the file has it. */
  lineOf: (key: string) => number | undefined;
}

function policyError(path: string, line: number | undefined, what: string): KspanError {
  return new KspanError('KSPAN_ERR_POLICY', `${path}${line ? `:${line}` : ''}: ${what}`, {
    hint: 'fix that key; README "Policy file" lists the keys and their values',
  });
}

/** The node at a key path (keys and list indexes): a scalar value, else the key; for its line. */
function nodeAt(root: Node | null | undefined, path: readonly PropertyKey[]): Node | undefined {
  let node: unknown = root;
  let found: Node | undefined = root ?? undefined;
  for (const part of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(part));
      if (!pair) break;
      found = pair.key as Node;
      node = pair.value;
      if (isScalar(node)) found = node;
    } else if (isSeq(node) && typeof part === 'number') {
      const item = node.items[part];
      if (!item) break;
      found = item as Node;
      node = item;
    } else {
      break;
    }
  }
  return found;
}

function keyName(path: readonly PropertyKey[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i ? '.' : ''}${String(p)}`)).join('');
}

/** Parses and checks a policy file's text. Throws KSPAN_ERR_POLICY naming the line and the key. */
export function parsePolicy(path: string, source: string): PolicyFile {
  const lines = new LineCounter();
  const doc = parseDocument(source, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const lineAt = (offset: number | undefined) => (offset === undefined ? undefined : lines.linePos(offset).line);
  if (doc.errors.length) {
    const e = doc.errors[0];
    throw policyError(path, lineAt(e.pos[0]), `not valid YAML: ${e.message.split('\n')[0]}`);
  }
  const data = doc.toJS() ?? {};
  const checked = POLICY_SCHEMA.safeParse(data);
  const lineOf = (key: string) => {
    const parts = key.split('.');
    return lineAt(nodeAt(doc.contents as Node, parts)?.range?.[0]);
  };
  if (!checked.success) {
    const issue = checked.error.issues[0];
    let path2: PropertyKey[] = [...issue.path];
    let message = issue.message;
    if (issue.code === 'unrecognized_keys') {
      path2 = [...issue.path, issue.keys[0]];
      message = `unknown key${issue.keys.length > 1 ? `s ${issue.keys.join(', ')}` : ''}`;
    }
    const node = nodeAt(doc.contents as Node, path2);
    throw policyError(path, lineAt(node?.range?.[0]), `${keyName(path2) || '(top)'}: ${message}`);
  }
  return { path, values: checked.data, lineOf };
}

export function readPolicyFile(path: string): PolicyFile {
  let source: string;
  try {
    source = readFileSync(path, 'utf8');
  } catch (err) {
    throw new KspanError('KSPAN_ERR_POLICY', `${path}: cannot read the policy file`, { hint: 'give the path of a readable YAML file', cause: err });
  }
  return parsePolicy(path, source);
}
