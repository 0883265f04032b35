/**
 * /proc/PID/maps: parsed into mappings, and grouped into the loaded ELF modules
 * (executable and DSOs) with their load bias. Parsing is pure; readProcMaps is
 * the one function that touches /proc.
 */
import { readFileSync } from 'node:fs';

export interface Mapping {
  start: number;
  end: number;
  /** e.g. "r-xp" */
  perms: string;
  /** File offset of the mapping's first byte. */
  offset: number;
  /** "major:minor" in hex, as the kernel prints it. */
  dev: string;
  inode: number;
  /** File path, "[heap]", "[anon:NAME]", "/memfd:NAME (deleted)", or "" for anonymous. */
  path: string;
}

const LINE = /^([0-9a-f]+)-([0-9a-f]+)\s+(\S{4})\s+([0-9a-f]+)\s+([0-9a-f]+:[0-9a-f]+)\s+(\d+)\s*(.*)$/;

export function parseProcMaps(text: string): Mapping[] {
  const out: Mapping[] = [];
  for (const line of text.split('\n')) {
    const m = LINE.exec(line);
    if (!m) continue;
    out.push({
      start: parseInt(m[1], 16),
      end: parseInt(m[2], 16),
      perms: m[3],
      offset: parseInt(m[4], 16),
      dev: m[5],
      inode: Number(m[6]),
      path: m[7],
    });
  }
  return out;
}

export function readProcMaps(pid: number): Mapping[] {
  return parseProcMaps(readFileSync(`/proc/${pid}/maps`, 'latin1'));
}

/** A file mapped into the process, seen as one unit (all its mappings). */
export interface MappedFile {
  /** The path in the target's mount namespace (without " (deleted)"). */
  path: string;
  deleted: boolean;
  dev: string;
  inode: number;
  /** Its mappings, lowest address first. */
  mappings: Mapping[];
}

/**
 * Groups file-backed mappings by (dev, inode). Pseudo-files ([vdso], [heap]),
 * anonymous mappings and memfds are left out.
 */
export function mappedFiles(maps: Mapping[]): MappedFile[] {
  const byKey = new Map<string, MappedFile>();
  for (const m of maps) {
    if (m.inode === 0 || !m.path.startsWith('/') || m.path.startsWith('/memfd:')) continue;
    const deleted = m.path.endsWith(' (deleted)');
    const path = deleted ? m.path.slice(0, -' (deleted)'.length) : m.path;
    const key = `${m.dev}:${m.inode}:${path}`;
    let f = byKey.get(key);
    if (!f) byKey.set(key, (f = { path, deleted, dev: m.dev, inode: m.inode, mappings: [] }));
    f.mappings.push(m);
  }
  for (const f of byKey.values()) f.mappings.sort((a, b) => a.start - b.start);
  return [...byKey.values()];
}

const PAGE = 4096;

/**
 * The load bias of an ELF module: runtime address = bias + p_vaddr. Found from
 * the mapping of the first PT_LOAD segment (file offset rounded down to a page).
 * Returns undefined when that segment is not mapped (not loaded as an ELF image).
 */
export function loadBias(
  file: MappedFile,
  firstLoad: { offset: number; vaddr: number },
  pageSize = PAGE,
): number | undefined {
  const wantOffset = firstLoad.offset - (firstLoad.offset % pageSize);
  const m = file.mappings.find((x) => x.offset === wantOffset);
  if (!m) return undefined;
  return m.start - (firstLoad.vaddr - (firstLoad.vaddr % pageSize));
}
