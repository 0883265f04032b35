/**
 * The few libc calls the publisher makes to create its OTEP 4719 mapping. Declared
 * here rather than in src/kernel/native.ts on purpose: the publisher runs inside the
 * *target* service, and must not pull the agent's libbpf bindings into it.
 */
import koffi from 'koffi';

type Ptr = bigint;

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MFD_CLOEXEC = 1;
export const MADV_DONTFORK = 10;
export const PR_SET_VMA = 0x53564d41;
export const PR_SET_VMA_ANON_NAME = 0;
export const CLOCK_REALTIME = 0;
/** mmap's MAP_FAILED, as koffi returns it (an unsigned pointer). */
export const MAP_FAILED = 0xffffffffffffffffn;

export interface PublisherLibc {
  memfdCreate(name: string, flags: number): number;
  ftruncate(fd: number, len: number): number;
  mmap(addr: Ptr | null, len: number, prot: number, flags: number, fd: number, off: number): Ptr;
  munmap(addr: Ptr, len: number): number;
  mprotect(addr: Ptr, len: number, prot: number): number;
  madvise(addr: Ptr, len: number, advice: number): number;
  close(fd: number): number;
  /** prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, addr, len, name): 0 or -1. */
  nameAnonMapping(addr: Ptr, len: number, name: string): number;
  /** CLOCK_REALTIME in nanoseconds, 0n when the clock failed. */
  realtimeNs(): bigint;
  errno(): number;
  view(addr: Ptr, len: number): ArrayBuffer;
}

let bound: PublisherLibc | undefined;

export function publisherLibc(): PublisherLibc {
  if (bound) return bound;
  const libc = koffi.load('libc.so.6');
  const memfdCreate = libc.func('int memfd_create(const char *name, unsigned int flags)');
  const ftruncate = libc.func('int ftruncate(int fd, int64_t len)');
  const mmap = libc.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)');
  const munmap = libc.func('int munmap(void *addr, size_t len)');
  const mprotect = libc.func('int mprotect(void *addr, size_t len, int prot)');
  const madvise = libc.func('int madvise(void *addr, size_t len, int advice)');
  const close = libc.func('int close(int fd)');
  const prctl = libc.func('int prctl(int option, ...)');
  const clockGettime = libc.func('int clock_gettime(int clk, void *ts)');
  const ts = Buffer.alloc(16);
  bound = {
    memfdCreate: (name, flags) => memfdCreate(name, flags) as number,
    ftruncate: (fd, len) => ftruncate(fd, len) as number,
    mmap: (addr, len, prot, flags, fd, off) => BigInt.asUintN(64, BigInt(mmap(addr, len, prot, flags, fd, off) ?? 0)),
    munmap: (addr, len) => munmap(addr, len) as number,
    mprotect: (addr, len, prot) => mprotect(addr, len, prot) as number,
    madvise: (addr, len, advice) => madvise(addr, len, advice) as number,
    close: (fd) => close(fd) as number,
    nameAnonMapping: (addr, len, name) =>
      prctl(PR_SET_VMA, 'unsigned long', PR_SET_VMA_ANON_NAME, 'void *', addr, 'size_t', len, 'const char *', name) as number,
    realtimeNs: () => {
      if ((clockGettime(CLOCK_REALTIME, ts) as number) !== 0) return 0n;
      return ts.readBigInt64LE(0) * 1_000_000_000n + ts.readBigInt64LE(8);
    },
    errno: () => koffi.errno(),
    view: (addr, len) => koffi.view(addr, len),
  };
  return bound;
}
