/**
 * koffi bindings to the system libbpf (libbpf.so.1, 1.1 or later) and the few libc
 * calls the agent needs (mmap, epoll, clock_gettime, vsnprintf, malloc_trim). Pointers are bigint
 * (koffi 3). The agent declares native functions here only; the in-app publisher
 * has its own few (src/publisher/libc.ts) so that it never loads libbpf.
 */
import koffi from 'koffi';
import { HINT_LIBBPF, KspanError } from '../core/errors.ts';

type Ptr = bigint;
type Fn<A extends unknown[], R> = ((...args: A) => R) & {
  async: (...args: [...A, (err: unknown, res: R) => void]) => void;
};

function loadLib(name: string, hint: string) {
  try {
    return koffi.load(name);
  } catch (cause) {
    throw new KspanError('KSPAN_ERR_LIBBPF', `cannot load ${name}`, { hint, cause });
  }
}

const libc = loadLib('libc.so.6', 'kspan runs on glibc-based Linux');

/** libbpf's print callback: (level, fmt, va_list). fmt and va_list stay raw pointers. */
export const LibbpfPrintFn = koffi.proto('int kspan_libbpf_print_fn(int level, void *fmt, void *args)');

/** libbpf's struct bpf_test_run_opts (bpf.h, libbpf 1.1). */
export const BpfTestRunOpts = koffi.struct('kspan_bpf_test_run_opts', {
  sz: 'size_t',
  data_in: 'void *',
  data_out: 'void *',
  data_size_in: 'uint32_t',
  data_size_out: 'uint32_t',
  ctx_in: 'void *',
  ctx_out: 'void *',
  ctx_size_in: 'uint32_t',
  ctx_size_out: 'uint32_t',
  retval: 'uint32_t',
  repeat: 'int',
  duration: 'uint32_t',
  flags: 'uint32_t',
  cpu: 'uint32_t',
  batch_size: 'uint32_t',
});

/** libbpf's struct bpf_uprobe_opts (libbpf.h, libbpf 1.1). */
export const BpfUprobeOpts = koffi.struct('kspan_bpf_uprobe_opts', {
  sz: 'size_t',
  ref_ctr_offset: 'size_t',
  bpf_cookie: 'uint64_t',
  retprobe: 'bool',
  func_name: 'const char *',
});

export const EpollEvent = koffi.pack('kspan_epoll_event', { events: 'uint32_t', data: 'uint64_t' });

let libbpfHandle: ReturnType<typeof koffi.load> | undefined;
let libbpfApi: ReturnType<typeof bindLibbpf> | undefined;

function bindLibbpf(lib: ReturnType<typeof koffi.load>) {
  const f = <A extends unknown[], R>(decl: string) => lib.func(decl) as unknown as Fn<A, R>;
  return {
    majorVersion: f<[], number>('uint32_t libbpf_major_version()'),
    minorVersion: f<[], number>('uint32_t libbpf_minor_version()'),
    setPrint: f<[Ptr | null], Ptr>('void *libbpf_set_print(void *fn)'),
    numPossibleCpus: f<[], number>('int libbpf_num_possible_cpus()'),
    objectOpenFile: f<[string, Ptr | null], Ptr>('void *bpf_object__open_file(const char *path, void *opts)'),
    objectLoad: f<[Ptr], number>('int bpf_object__load(void *obj)'),
    objectClose: f<[Ptr], void>('void bpf_object__close(void *obj)'),
    objectNextProgram: f<[Ptr, Ptr | null], Ptr>('void *bpf_object__next_program(void *obj, void *prog)'),
    objectFindMap: f<[Ptr, string], Ptr>('void *bpf_object__find_map_by_name(void *obj, const char *name)'),
    programName: f<[Ptr], string>('const char *bpf_program__name(void *prog)'),
    programSectionName: f<[Ptr], string>('const char *bpf_program__section_name(void *prog)'),
    programSetAutoload: f<[Ptr, boolean], number>('int bpf_program__set_autoload(void *prog, bool autoload)'),
    programAutoload: f<[Ptr], boolean>('bool bpf_program__autoload(void *prog)'),
    programSetType: f<[Ptr, number], number>('int bpf_program__set_type(void *prog, int type)'),
    programSetLogBuf: f<[Ptr, Buffer, number], number>('int bpf_program__set_log_buf(void *prog, void *buf, size_t size)'),
    programFd: f<[Ptr], number>('int bpf_program__fd(void *prog)'),
    programAttach: f<[Ptr], Ptr>('void *bpf_program__attach(void *prog)'),
    programAttachUprobe: f<[Ptr, boolean, number, string, number], Ptr>(
      'void *bpf_program__attach_uprobe(void *prog, bool retprobe, int pid, const char *path, size_t offset)',
    ),
    programAttachUprobeOpts: f<[Ptr, number, string, number, unknown], Ptr>(
      'void *bpf_program__attach_uprobe_opts(void *prog, int pid, const char *path, size_t offset, const kspan_bpf_uprobe_opts *opts)',
    ),
    linkDestroy: f<[Ptr], number>('int bpf_link__destroy(void *link)'),
    enableStats: f<[number], number>('int bpf_enable_stats(int type)'),
    progTestRun: f<[number, unknown], number>('int bpf_prog_test_run_opts(int fd, _Inout_ kspan_bpf_test_run_opts *opts)'),
    mapFd: f<[Ptr], number>('int bpf_map__fd(void *map)'),
    mapSetMaxEntries: f<[Ptr, number], number>('int bpf_map__set_max_entries(void *map, uint32_t n)'),
    mapFlags: f<[Ptr], number>('uint32_t bpf_map__map_flags(void *map)'),
    mapSetFlags: f<[Ptr, number], number>('int bpf_map__set_map_flags(void *map, uint32_t flags)'),
    mapKeySize: f<[Ptr], number>('uint32_t bpf_map__key_size(void *map)'),
    mapValueSize: f<[Ptr], number>('uint32_t bpf_map__value_size(void *map)'),
    mapUpdate: f<[Ptr, Buffer, number, Buffer, number, number], number>(
      'int bpf_map__update_elem(void *map, void *key, size_t ksz, void *val, size_t vsz, uint64_t flags)',
    ),
    mapLookup: f<[Ptr, Buffer, number, Buffer, number, number], number>(
      'int bpf_map__lookup_elem(void *map, void *key, size_t ksz, void *val, size_t vsz, uint64_t flags)',
    ),
    mapDelete: f<[Ptr, Buffer, number, number], number>(
      'int bpf_map__delete_elem(void *map, void *key, size_t ksz, uint64_t flags)',
    ),
    mapNextKey: f<[Ptr, Buffer | null, Buffer, number], number>(
      'int bpf_map__get_next_key(void *map, void *cur, void *next, size_t ksz)',
    ),
    objGetInfoByFd: f<[number, Buffer, Buffer], number>('int bpf_obj_get_info_by_fd(int fd, void *info, uint32_t *len)'),
    probeBpfHelper: f<[number, number, Ptr | null], number>('int libbpf_probe_bpf_helper(int prog_type, int helper_id, const void *opts)'),
    mapCreate: f<[number, string | null, number, number, number, Ptr | null], number>(
      'int bpf_map_create(int type, const char *name, uint32_t key_size, uint32_t value_size, uint32_t max_entries, const void *opts)',
    ),
    progLoad: f<[number, string | null, string, Buffer, number, Buffer], number>(
      'int bpf_prog_load(int type, const char *name, const char *license, const void *insns, size_t insn_cnt, void *opts)',
    ),
    btfLoadVmlinux: f<[], Ptr>('void *btf__load_vmlinux_btf()'),
    btfFindByNameKind: f<[Ptr, string, number], number>('int btf__find_by_name_kind(void *btf, const char *name, uint32_t kind)'),
    btfFree: f<[Ptr], void>('void btf__free(void *btf)'),
    btfParse: f<[string, Ptr | null], Ptr>('void *btf__parse(const char *path, void *ext)'),
    btfTypeById: f<[Ptr, number], Ptr>('const void *btf__type_by_id(void *btf, uint32_t id)'),
    btfNameByOffset: f<[Ptr, number], string | null>('const char *btf__name_by_offset(void *btf, uint32_t offset)'),
    ringBufferNew: f<[number, Ptr, Ptr | null, Ptr | null], Ptr>(
      'void *ring_buffer__new(int fd, void *cb, void *ctx, void *opts)',
    ),
    ringBufferConsume: f<[Ptr], number>('int ring_buffer__consume(void *rb)'),
    ringBufferFree: f<[Ptr], void>('void ring_buffer__free(void *rb)'),
  };
}

/** The libbpf API, loaded on first use so that `kspan doctor` can report its absence. */
export function libbpf(): ReturnType<typeof bindLibbpf> {
  if (!libbpfApi) {
    libbpfHandle = loadLib('libbpf.so.1', HINT_LIBBPF);
    libbpfApi = bindLibbpf(libbpfHandle);
  }
  return libbpfApi;
}

const cf = <A extends unknown[], R>(decl: string) => libc.func(decl) as unknown as Fn<A, R>;

export const c = {
  mmap: cf<[Ptr | null, number, number, number, number, number], Ptr>(
    'void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)',
  ),
  munmap: cf<[Ptr, number], number>('int munmap(void *addr, size_t len)'),
  close: cf<[number], number>('int close(int fd)'),
  sysconf: cf<[number], number>('long sysconf(int name)'),
  epollCreate1: cf<[number], number>('int epoll_create1(int flags)'),
  epollCtl: cf<[number, number, number, unknown], number>('int epoll_ctl(int epfd, int op, int fd, kspan_epoll_event *ev)'),
  epollWait: cf<[number, Buffer, number, number], number>('int epoll_wait(int epfd, void *events, int max, int timeout)'),
  eventfd: cf<[number, number], number>('int eventfd(unsigned int initval, int flags)'),
  clockGettime: cf<[number, Buffer], number>('int clock_gettime(int clk, void *ts)'),
  vsnprintf: cf<[Buffer, number, Ptr, Ptr], number>('int vsnprintf(void *buf, size_t n, void *fmt, void *ap)'),
  getpid: cf<[], number>('int getpid()'),
  pthreadSigmask: cf<[number, Buffer | null, Buffer | null], number>('int pthread_sigmask(int how, void *set, void *old)'),
  mallocTrim: cf<[number], number>('int malloc_trim(size_t pad)'),
};

const SIG_BLOCK = 0;
const SIG_SETMASK = 2;

/**
 * Runs `fn` with every signal blocked in this thread. The kernel abandons BPF
 * verification (EAGAIN) when the loading thread has a signal pending; a
 * profiler's SIGPROF every few milliseconds would then make loading impossible.
 * Blocked here, process-directed signals go to another thread meanwhile.
 */
export function withSignalsBlocked<T>(fn: () => T): T {
  const all = Buffer.alloc(128, 0xff);
  const old = Buffer.alloc(128);
  if (c.pthreadSigmask(SIG_BLOCK, all, old) !== 0) return fn();
  try {
    return fn();
  } finally {
    c.pthreadSigmask(SIG_SETMASK, old, null);
  }
}

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_FAILED = 0xffffffffffffffffn;
export const EPOLLIN = 1;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
export const CLOCK_REALTIME = 0;
export const CLOCK_MONOTONIC = 1;
export const SC_PAGESIZE = 30;

export function errno(): number {
  return koffi.errno();
}

export { koffi };
