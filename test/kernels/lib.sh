# Helpers for test/kernels/run.sh (sourced). Everything is cached under $CACHE.

log() { printf 'test-kernels: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

# Host packages the harness needs, installed when missing.
HOST_PACKAGES=(qemu-system-x86 debootstrap busybox-static e2fsprogs cpio xz-utils zstd tar kmod)

# shellcheck source=../../scripts/apt-ensure.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/apt-ensure.sh"
ensure_host_packages() {
  ensure_debian_packages "${HOST_PACKAGES[@]}"
}

# The Debian mirror this machine's apt uses (deb822 URIs: or one-line deb entries),
# e.g. http://deb.debian.org/debian. KSPAN_KERNELS_MIRROR overrides it.
debian_mirror() {
  if [[ -n ${KSPAN_KERNELS_MIRROR:-} ]]; then echo "$KSPAN_KERNELS_MIRROR"; return; fi
  local f uri
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    uri=$(grep -hoE '^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)[a-z]+://[^[:space:]]+/debian/?([[:space:]]|$)' "$f" \
      | grep -oE '[a-z]+://[^[:space:]]+' | head -n1)
    if [[ -n $uri ]]; then echo "${uri%/}"; return; fi
  done
  echo http://deb.debian.org/debian
}

# apt-get with a private sources list, lists and cache for one suite (nothing of
# the machine's own apt state is touched).
suite_apt() {
  local suite=$1; shift
  local d=$CACHE/apt/$suite
  apt-get -q \
    -o Dir::Etc::sourcelist="$d/sources.list" -o Dir::Etc::sourceparts=- \
    -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" \
    -o APT::Get::List-Cleanup=0 -o Debug::NoLocking=1 -o APT::Sandbox::User=root "$@"
}
suite_apt_cache() {
  local suite=$1; shift
  local d=$CACHE/apt/$suite
  apt-cache \
    -o Dir::Etc::sourcelist="$d/sources.list" -o Dir::Etc::sourceparts=- \
    -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" "$@"
}

# Refreshes the suite's package lists when they are older than a day (or forced).
suite_update() {
  local suite=$1 mirror d
  mirror=$(debian_mirror)
  d=$CACHE/apt/$suite
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  local want
  want="deb [trusted=yes] $mirror $suite main
deb [trusted=yes] $mirror $suite-updates main
deb [trusted=yes] ${mirror%/debian}/debian-security $suite-security main"
  if [[ ! -f $d/sources.list ]] || [[ $(cat "$d/sources.list") != "$want" ]]; then
    echo "$want" >"$d/sources.list"
    rm -f "$d/updated"
  fi
  if [[ -n ${KSPAN_KERNELS_REFRESH:-} ]] || [[ ! -f $d/updated ]] || [[ -n $(find "$d/updated" -mmin +1440) ]]; then
    log "$suite: updating package lists from $mirror"
    suite_apt "$suite" update -qq >"$d/update.log" 2>&1 || { cat "$d/update.log" >&2; die "apt-get update for $suite failed"; }
    touch "$d/updated"
    rm -rf "$d/unavailable"
  fi
}

# Packages whose name matches the extended regex $2 in suite $1, newest version
# first: lines "name version".
kernel_candidates() {
  local suite=$1 re=$2 names
  names=$(suite_apt_cache "$suite" pkgnames linux-image- | grep -E "^($re)\$" | sort -u)
  [[ -n $names ]] || return 0
  # shellcheck disable=SC2086
  suite_apt_cache "$suite" madison $names | awk -F' *[|] *' '{print $1, $2}' | sort -u | sort -k2,2Vr
}

# Downloads and extracts the newest kernel package of a suite; prints the
# directory holding vmlinuz, modules/ and release.
fetch_kernel() {
  local suite=$1 re=$2
  suite_update "$suite"
  local name ver out= found=
  while read -r name ver; do
    [[ -n $name ]] || continue
    out=$CACHE/kernels/${name}_${ver}
    if [[ -f $out/.complete ]]; then found=1; break; fi
    [[ -f $CACHE/apt/$suite/unavailable/${name}_${ver} ]] && continue
    log "$suite: downloading $name $ver"
    rm -rf "$out.tmp"
    mkdir -p "$out.tmp/deb"
    if ! (cd "$out.tmp/deb" && suite_apt "$suite" download "$name=$ver" >"$out.tmp/download.log" 2>&1); then
      # a mirror may lack a pool (e.g. an LTS security archive): take the next newest
      log "$suite: $name $ver is not downloadable here: $(grep -m1 -E '^E:' "$out.tmp/download.log")"
      rm -rf "$out.tmp"
      mkdir -p "$CACHE/apt/$suite/unavailable" && touch "$CACHE/apt/$suite/unavailable/${name}_${ver}"
      continue
    fi
    dpkg-deb -x "$out.tmp"/deb/*.deb "$out.tmp/x"
    local rel mod
    mod=$(find "$out.tmp/x/lib/modules" "$out.tmp/x/usr/lib/modules" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | head -n1)
    [[ -n $mod ]] || die "$name: no modules directory"
    rel=$(basename "$mod")
    mv "$out.tmp/x/boot/vmlinuz-$rel" "$out.tmp/vmlinuz"
    # modules as plain .ko (trixie ships .ko.xz), with modules.dep made here:
    # the package leaves depmod to its postinst
    mkdir -p "$out.tmp/root/lib/modules"
    mv "$mod" "$out.tmp/root/lib/modules/$rel"
    find "$out.tmp/root/lib/modules/$rel" -name '*.ko.xz' -exec xz -d {} +
    find "$out.tmp/root/lib/modules/$rel" -name '*.ko.zst' -exec zstd -q -d --rm {} +
    find "$out.tmp/root/lib/modules/$rel" -name '*.ko.gz' -exec gzip -d {} +
    depmod -b "$out.tmp/root" "$rel" || die "depmod for $rel failed"
    ln -s "root/lib/modules/$rel" "$out.tmp/modules"
    echo "$rel" >"$out.tmp/release"
    echo "$name $ver" >"$out.tmp/package"
    rm -rf "$out.tmp/x" "$out.tmp/deb" "$out.tmp/download.log"
    touch "$out.tmp/.complete"
    rm -rf "$out"
    mv "$out.tmp" "$out"
    found=1
    break
  done < <(kernel_candidates "$suite" "$re")
  [[ -n $found ]] || die "$suite: no downloadable package matches $re"
  echo "$out"
}

# What the guest root needs at run time: libbpf/libelf for kspan (koffi loads
# libbpf.so.1), gcc/libc6-dev/musl-tools for the C fixtures the tests build,
# iproute2 (ip netns, ss) and iptables for the lossy-path tests, linux-perf for
# the retransmit oracle (perf stat), bpftool for the loader test and the
# diagnostics, kmod so iptables/veth can load their modules, procps, util-linux
# (setpriv), tar for the results disk.
ROOT_PACKAGES=(libbpf1 libelf1 zlib1g iproute2 iptables gcc libc6-dev musl-tools linux-perf bpftool procps kmod util-linux tar xz-utils)

# A debootstrap'ed bookworm with ROOT_PACKAGES, cached by the package list; prints its directory.
build_rootfs() {
  local mirror key out
  mirror=$(debian_mirror)
  key=$(printf '%s\n' bookworm "$mirror" "${ROOT_PACKAGES[@]}" | sha256sum | cut -c1-12)
  out=$CACHE/rootfs/bookworm-$key
  if [[ ! -f $out/.complete ]]; then
    log "debootstrap bookworm (minbase + ${ROOT_PACKAGES[*]}) into $out"
    rm -rf "$out" "$out.tmp"
    mkdir -p "$out.tmp"
    local inc
    inc=$(IFS=,; echo "${ROOT_PACKAGES[*]}")
    if ! debootstrap --variant=minbase --include="$inc" bookworm "$out.tmp" "$mirror" >"$CACHE/rootfs/debootstrap.log" 2>&1; then
      tail -n 30 "$CACHE/rootfs/debootstrap.log" >&2
      die "debootstrap failed (log: $CACHE/rootfs/debootstrap.log)"
    fi
    # no apt caches or docs in the image
    rm -rf "$out.tmp"/var/cache/apt/archives/*.deb "$out.tmp"/var/lib/apt/lists/* "$out.tmp"/usr/share/doc/* "$out.tmp"/usr/share/man/*
    touch "$out.tmp/.complete"
    mv "$out.tmp" "$out"
  fi
  echo "$out"
}

# Modules the initrd loads when they are not built in: virtio PCI and block for
# the disks, ext4 for the root, virtio_rng so early getrandom() does not wait.
INITRD_MODULES=(virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk crc32c_generic ext4 virtio_rng)

# Prints the module files (relative to modules/, dependencies first) that load
# $@ on kernel dir $1, skipping built-in ones.
module_closure() {
  local kdir=$1; shift
  awk -v want="$*" '
    function base(p,   b) { b = p; sub(/.*\//, "", b); sub(/\.ko(\.xz|\.zst|\.gz)?$/, "", b); gsub(/-/, "_", b); return b }
    FILENAME ~ /modules\.builtin$/ { builtin[base($1)] = 1; next }
    {
      f = $1; sub(/:$/, "", f); n = base(f); path[n] = f
      deps[n] = ""
      for (i = 2; i <= NF; i++) deps[n] = deps[n] " " base($i)
    }
    function visit(n,   d, k, i) {
      if (n in done || n in builtin) return
      done[n] = 1
      if (!(n in path)) { print "missing " n > "/dev/stderr"; return }
      k = split(deps[n], d, " ")
      for (i = k; i >= 1; i--) visit(d[i])
      print path[n]
    }
    END { k = split(want, w, " "); for (i = 1; i <= k; i++) visit(w[i]) }
  ' "$kdir/modules/modules.builtin" "$kdir/modules/modules.dep"
}

# Copies one module into dir $3 as plain .ko (xz/zst/gz decompressed on the host).
copy_module() {
  local src=$1 dst=$2
  mkdir -p "$(dirname "$dst")"
  case $src in
    *.ko.xz) xz -dc "$src" >"${dst%.xz}" ;;
    *.ko.zst) zstd -qdc "$src" >"${dst%.zst}" ;;
    *.ko.gz) gzip -dc "$src" >"${dst%.gz}" ;;
    *) cp "$src" "$dst" ;;
  esac
}

# Builds (or reuses) the initrd for kernel dir $1; prints its path.
build_initrd() {
  local kdir=$1 here key out
  here=$(dirname "${BASH_SOURCE[0]}")
  key=$( { cat "$here/initrd-init.sh"; echo "${INITRD_MODULES[*]}"; readlink -f /bin/busybox; } | sha256sum | cut -c1-12)
  out=$kdir/initrd-$key.cpio.gz
  if [[ ! -f $out ]]; then
    local tmp m
    tmp=$(mktemp -d)
    mkdir -p "$tmp"/{bin,dev,proc,sys,newroot,modules}
    cp /bin/busybox "$tmp/bin/busybox"
    cp "$here/initrd-init.sh" "$tmp/init"
    chmod +x "$tmp/init"
    : >"$tmp/modules.load"
    while read -r m; do
      copy_module "$kdir/modules/$m" "$tmp/modules/$m"
      m=${m%.xz}; m=${m%.zst}; m=${m%.gz}
      echo "$m" >>"$tmp/modules.load"
    done < <(module_closure "$kdir" "${INITRD_MODULES[@]}" 2>/dev/null)
    (cd "$tmp" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$tmp"
  fi
  echo "$out"
}

# kvm when /dev/kvm really works, else tcg. Opening /dev/kvm is not enough
# (nested set-ups can create VMs yet fail to run a kernel: "KVM internal error",
# or hang): boot kernel $2 with initrd $3 into the initrd's probe and wait for it.
choose_accel() {
  local want=$1 kernel=$2 initrd=$3
  case $want in
    tcg) echo tcg; return ;;
    kvm | auto)
      if [[ -c /dev/kvm ]] && timeout -k 5 "${KSPAN_KERNELS_KVM_PROBE_TIMEOUT:-25}" qemu-system-x86_64 -accel kvm -cpu host \
        -m 512M -smp 1 -nodefaults -no-reboot -display none -monitor none -serial stdio \
        -kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 panic=-1 kspan.probe" </dev/null 2>&1 \
        | grep -q 'kspan-initrd: probe ok'; then
        echo kvm
        return
      fi
      [[ $want == kvm ]] && die "KSPAN_KERNELS_ACCEL=kvm but KVM cannot boot a kernel here"
      echo tcg
      ;;
    *) die "KSPAN_KERNELS_ACCEL must be kvm, tcg or auto" ;;
  esac
}

# The checkout as the guest sees it: tracked and new files, node_modules, .node,
# the compiled dist/ (mtimes kept, so bin/kspan runs it as on the host), the BPF build and the prebuilt fixtures (not the kernels' own outputs).
checkout_files() {
  (
    cd "$REPO"
    if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      # not a git checkout (an unpacked copy): all of it
      find . -mindepth 1 \( -path ./test/.build/kernels -o -path ./.git \) -prune -o -print0
      return
    fi
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
      [[ -e $f ]] && printf '%s\0' "$f"
    done
    find node_modules .node bpf/.output -print0
    [[ -d dist ]] && find dist -print0
    [[ -d test/.build ]] && find test/.build -path test/.build/kernels -prune -o -print0
  )
}

# root image for one kernel: the cached debootstrap root + that kernel's modules +
# the checkout at its own absolute path + the guest init and its config.
make_root_image() {
  local rootfs=$1 kdir=$2 release=$3 mode=$4 img=$5
  local stage
  stage=$(dirname "$img")/stage
  cp -al "$rootfs" "$stage"
  rm -f "$stage/.complete"
  mkdir -p "$stage/usr/lib/modules"
  cp -al "$kdir/root/lib/modules/$release" "$stage/usr/lib/modules/$release"
  mkdir -p "$stage$REPO" "$stage/kspan-kernels"
  checkout_files | tar -C "$REPO" --null --no-recursion -T - -cf - | tar -C "$stage$REPO" -xf -
  cp "$HERE/guest-init.sh" "$stage/kspan-kernels/guest-init.sh"
  chmod +x "$stage/kspan-kernels/guest-init.sh"
  {
    printf 'REPO=%q\n' "$REPO"
    printf 'MODE=%q\n' "$mode"
    printf 'DIAG=%q\n' "$DIAG"
    printf 'TEST_TIMEOUT=%q\n' "$TEST_TIMEOUT"
    printf 'TIMEOUT_SCALE=%q\n' "$TIMEOUT_SCALE"
    printf 'CPU_STALL_MS=%q\n' "$CPU_STALL_MS"
  } >"$stage/kspan-kernels/config"
  local t
  for t in "${TESTS[@]}"; do
    if [[ $t == *::* ]]; then printf '%s\t%s\n' "${t%%::*}" "${t#*::}"; else printf '%s\n' "$t"; fi
  done >"$stage/kspan-kernels/tests"
  local mb
  mb=$(du -sm "$stage" | cut -f1)
  # room for what the tests build and write (the guests' /tmp is a tmpfs)
  mkfs.ext4 -q -F -L kspanroot -d "$stage" "$img" "$((mb + 1536))M" >/dev/null || die "mkfs.ext4 -d failed"
  rm -rf "$stage"
}

# Boots one VM; returns qemu's exit status (124/137: the hard timeout hit).
# Progress lines of the guest are echoed as they come.
boot_vm() {
  local kernel=$1 initrd=$2 root=$3 results=$4 console=$5
  # TCG: every feature qemu emulates but protection keys. With PKU, V8 tracks its
  # JIT pages (ThreadIsolation) and under TCG died now and then of
  # "Check failed: it->second.Size() > offset" (SIGTRAP). Node also segfaults
  # about once in 15-30 starts under TCG whatever the model (max, max,-pku and
  # Nehalem all did): the guest notes every core dump and reruns such a file.
  local cpu=${KSPAN_KERNELS_CPU:-max,-pku}
  [[ $ACCEL == kvm ]] && cpu=${KSPAN_KERNELS_CPU:-host}
  # One host thread for both vCPUs: with multi-threaded TCG, node crashed now and
  # then (SIGSEGV, SIGTRAP) in every guest run; with one thread it did not.
  local accel=$ACCEL
  [[ $ACCEL == tcg ]] && accel="tcg,thread=${KSPAN_KERNELS_TCG_THREAD:-single}"
  : >"$console"
  local rc=0 vm
  timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -m 4G -smp 2 \
    -nodefaults -no-reboot -display none -monitor none -serial "file:$console" \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 loglevel=4 no_timer_check" \
    -drive "file=$root,format=raw,if=virtio,cache=unsafe" \
    -drive "file=$results,format=raw,if=virtio" \
    -device virtio-rng-pci -nic none </dev/null >"$console.qemu" 2>&1 &
  vm=$!
  VM_PID=$vm
  # tail ends by itself when the VM has gone
  tail -n +1 -F --pid="$vm" "$console" 2>/dev/null \
    | grep --line-buffered -E '^kspan-(guest|initrd):|Kernel panic' | sed -u 's/^/    /' >&2 || true
  wait "$vm" || rc=$?
  VM_PID=
  return "$rc"
}

# BTF tracepoint typedefs whose prototypes the diagnostics record.
PROTOTYPE_RE='btf_trace_(tcp_[a-z_]+|inet_sock_set_state|sock_send_length|sock_recv_length|sched_process_(exec|fork|exit)|sched_switch|sched_wakeup)\)'

# Keeps the guest's BTF as $CACHE/btf/<release>.btf and dumps the tracepoint
# prototypes next to it (host bpftool reads any BTF file).
save_btf() {
  local out=$1 release=$2
  local src=$out/results/btf/vmlinux
  [[ -s $src ]] || return 0
  mkdir -p "$CACHE/btf"
  cp "$src" "$CACHE/btf/$release.btf"
  rm -f "$src"
  if command -v bpftool >/dev/null; then
    bpftool btf dump file "$CACHE/btf/$release.btf" format c | grep -E "$PROTOTYPE_RE" | sort \
      >"$CACHE/btf/$release.prototypes.txt" || true
    cp "$CACHE/btf/$release.prototypes.txt" "$out/prototypes.txt"
  fi
}

# One line per program the verifier or the attach refused, from diag.jsonl.
diag_summary() {
  local f=$1
  [[ -s $f ]] || { echo "no diagnostics"; return; }
  node -e '
    const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => JSON.parse(l));
    const progs = lines.filter((l) => l.program);
    const bad = progs.filter((p) => p.load !== "ok" || p.attach === "fail");
    console.log(`${progs.length - bad.length}/${progs.length} programs load and attach alone` +
      (bad.length ? "; refused: " + bad.map((p) => `${p.program} (${p.load !== "ok" ? (p.hook_present === false ? "hook absent" : p.code) : "attach"})`).join(", ") : ""));
  ' "$f"
}

# Each failed test of a node --test TAP file: its name, its error's first lines
# and the expected/actual values node writes in the YAML block under it (what
# the summary, and so CI's log, shows of a failure).
tap_failures() {
  awk '
    /^ *not ok [0-9]+ - / { sub(/^ *not ok [0-9]+ - /, ""); print "      not ok: " $0; blk = 1; err = 0; n = 0; next }
    /^ *(ok|not ok) [0-9]+ / { blk = 0; next }
    !blk { next }
    /^ *\.\.\.$/ { blk = 0; next }
    /^ *error: \|-$/ { err = 1; n = 0; next }
    /^ *error: / { sub(/^ *error: /, ""); print "        " $0; next }
    /^ *(expected|actual): / { err = 0; sub(/^ */, ""); print "        " $0; next }
    /^ *[a-zA-Z_]+: / { err = 0; next }
    err && n < 4 && $0 !~ /^ *$/ { sub(/^ */, ""); print "        " $0; n++ }
  ' "$1" 2>/dev/null
}

# Judges one kernel's results against its expectation; prints "PASS ..." or "FAIL ...".
judge() {
  local kname=$1 expect=$2 out=$3 vm_rc=$4 vm_secs=$5
  local r=$out/results
  local release
  release=$(cat "$r/release" 2>/dev/null || echo '?')
  save_btf "$out" "$release"
  if [[ ! -f $r/end ]]; then
    local why="the VM gave no results"
    ((vm_rc == 124 || vm_rc == 137)) && why="the VM hit its ${VM_TIMEOUT} s limit"
    {
      echo "$kname: $why (qemu exit $vm_rc); last console lines:"
      tail -n 40 "$out/console.log" | sed 's/^/      /'
      tail -n 5 "$out/console.log.qemu" | sed 's/^/      qemu: /'
    } >&2
    echo "FAIL: $why"
    return
  fi
  [[ -f $r/diag.jsonl ]] && log "$kname diagnostics: $(diag_summary "$r/diag.jsonl")"
  case $expect in
    e2e)
      if [[ ! -s $r/tests.tsv ]]; then echo "FAIL: no test ran"; return; fi
      # the last attempt of each file counts
      local pass=0 fail=0 cancelled=0 bad=() crashes=0 inconclusive=()
      local file attempt rc p f c s crash secs
      declare -A last=()
      while IFS=$'\t' read -r file attempt rc p f c s crash secs; do
        last[$file]="$attempt $rc $p $f $c $s $crash $secs"
        ((crash)) && crashes=$((crashes + 1))
      done <"$r/tests.tsv"
      local t want
      for t in "${TESTS[@]}"; do
        want=${t%%::*}
        if [[ -z ${last[$want]:-} ]]; then bad+=("$(basename "$want"): did not run"); continue; fi
        read -r attempt rc p f c s crash secs <<<"${last[$want]}"
        pass=$((pass + p)); fail=$((fail + f)); cancelled=$((cancelled + c))
        log "$kname: $(basename "$want"): exit $rc, $p passed, $f failed, $c cancelled, $s skipped, ${secs} s$( ((attempt > 1)) && echo ", rerun after a node crash")"
        if ((rc != 0 || f > 0 || c > 0 || p == 0)) && ((crash)); then
          # node itself died in the last attempt too (V8 under TCG segfaults now
          # and then, never on the host): no verdict on kspan, said, not failed
          inconclusive+=("$(basename "$want")")
          pass=$((pass - p)); fail=$((fail - f)); cancelled=$((cancelled - c))
        elif ((rc != 0 || f > 0 || c > 0 || p == 0)); then
          bad+=("$(basename "$want")")
          local tap=$r/$(basename "$want" .ts).tap
          ((attempt > 1)) && tap=$r/$(basename "$want" .ts).rerun.tap
          tap_failures "$tap" | head -n 40 >&2 || true
        fi
      done
      local note=""
      ((crashes)) && note=", $crashes node crash(es) rerun"
      ((${#inconclusive[@]})) && note+="; inconclusive, node crashed in every attempt: ${inconclusive[*]}"
      if ((${#bad[@]})); then
        echo "FAIL: $pass passed, $((fail + cancelled)) failed$note [${bad[*]}]"
      else
        echo "PASS: $pass passed, 0 failed$note"
      fi
      ;;
    refuse)
      local problems=()
      local drc erc
      drc=$(cat "$r/doctor-json.rc" 2>/dev/null || echo '?')
      erc=$(cat "$r/events.rc" 2>/dev/null || echo '?')
      [[ $drc =~ ^[1-9][0-9]*$ ]] && ((drc < 128)) || problems+=("doctor --json exit $drc (want non-zero, no crash)")
      local trc
      trc=$(cat "$r/doctor.rc" 2>/dev/null || echo '?')
      [[ $trc =~ ^[1-9][0-9]*$ ]] && ((trc < 128)) || problems+=("doctor exit $trc (want non-zero, no crash)")
      grep -qE '^\[FAIL\].*|fix:.*5\.12' "$r/doctor.stdout" 2>/dev/null && grep -q '5\.12' "$r/doctor.stdout" \
        || problems+=("doctor's text does not name the 5.12 floor")
      # doctor --json: not ok, and a failed check that names the floor
      if ! node -e '
        const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        const failed = r.checks.filter((c) => c.status === "fail");
        process.exit(r.ok === false && failed.some((c) => /5\.12/.test(`${c.detail} ${c.fix ?? ""}`)) ? 0 : 1);
      ' "$r/doctor-json.stdout" 2>/dev/null; then
        problems+=("doctor --json does not fail a check naming the 5.12 floor")
      fi
      [[ $erc =~ ^[1-9][0-9]*$ ]] && ((erc < 128)) || problems+=("events exit $erc (want non-zero, no crash)")
      grep -qE '^kspan: KSPAN_ERR_[A-Z_]+: ' "$r/events.stderr" 2>/dev/null || problems+=("events printed no KSPAN_ERR_* error")
      grep -qE '^ +at .+:[0-9]+:[0-9]+\)?$' "$r/events.stderr" 2>/dev/null && problems+=("events printed a stack trace")
      local f crashes=""
      for f in doctor doctor-json events; do
        [[ -f $r/$f.crashed ]] && crashes+=" $f: $(tr '\n' ' ' <"$r/$f.crashed")"
      done
      [[ -n $crashes ]] && log "$kname: node crashed and was rerun:$crashes"
      local code
      code=$(grep -oE '^kspan: KSPAN_ERR_[A-Z_]+' "$r/events.stderr" 2>/dev/null | head -n1 | cut -d' ' -f2)
      if ((${#problems[@]})); then
        echo "FAIL: $(IFS=';'; echo "${problems[*]}")"
      else
        echo "PASS: doctor exit $drc (floor named), events exit $erc with $code"
      fi
      ;;
  esac
}
