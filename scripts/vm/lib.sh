# shellcheck shell=bash
# Library for the dm-crypt VM harness: boots a Debian kernel + busybox/cryptsetup
# initramfs under qemu (TCG) and runs a guest "case script" against raw images
# attached as virtio drives. Source this file; see scripts/vm/README.md.
#
# Public functions:
#   vm_setup                 install packages, fetch kernel, build base initramfs (cached)
#   vm_run_guest [opts] CASE_SCRIPT IMAGE[:ro]...
#                            boot once, run CASE_SCRIPT, print RESULT lines on stdout
#
# Environment (all optional):
#   VM_CACHE      cache dir (default <repo>/build/vm)
#   VM_TIMEOUT    seconds before the guest is killed (default 180)
#   VM_MEM        guest RAM in MiB (default 512)
#   VM_KERNEL_PKG Debian kernel package (default: what linux-image-amd64 depends on;
#                 once cached, the cached one is reused without asking apt)
#   VM_KEEP_RUNS  how many run dirs to keep under $VM_CACHE/runs (default 5)
#   VM_VERBOSE=1  echo the console log while waiting
#   VM_LOGLEVEL   guest kernel loglevel (default 3; 7 to debug boot problems)
#   VM_APPEND     extra kernel command line words
#   VM_BOOT_BZIMAGE=1  boot the compressed bzImage instead of the extracted vmlinux (PVH)
#   BIFS_BIN      optional bifs binary copied into the guest as /bin/bifs (+ its libs)

VM_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VM_REPO_DIR=$(cd "$VM_LIB_DIR/../.." && pwd)
VM_CACHE=${VM_CACHE:-$VM_REPO_DIR/build/vm}
VM_TIMEOUT=${VM_TIMEOUT:-180}
VM_MEM=${VM_MEM:-512}
VM_KEEP_RUNS=${VM_KEEP_RUNS:-5}

# Modules wanted in the guest; dependencies are resolved from modules.dep and
# built-in ones are skipped. Missing optional ones only warn.
VM_MODULES=(virtio_pci virtio_blk dm-mod dm-crypt cryptd crypto_simd aesni-intel
  xts ecb af_alg algif_skcipher algif_hash fuse loop)

# Debian packages the harness needs (host side).
VM_PACKAGES=(qemu-system-x86 qemu-utils busybox-static cryptsetup-bin cpio kmod
  python3-cryptography)

vm_log() { printf '[vm] %s\n' "$*" >&2; }
vm_die() { printf '[vm] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- packages
vm_install_packages() {
  local missing=() p
  for p in "${VM_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  vm_log "installing Debian packages: ${missing[*]}"
  [ "$(id -u)" = 0 ] || vm_die "need root to apt-get install ${missing[*]}"
  # Debian's qemu-system-x86 conflicts with a newer (backported) qemu-utils;
  # pin qemu-utils to the same version in the same apt call to keep qemu-img.
  local ver args=()
  ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2; exit}')
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
    apt-get update -qq
    ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2; exit}')
  fi
  for p in "${VM_PACKAGES[@]}"; do
    case $p in
      qemu-utils) args+=("qemu-utils=$ver") ;;
      *) args+=("$p") ;;
    esac
  done
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    --allow-downgrades "${args[@]}" >&2
}

# ---------------------------------------------------------------- kernel
# Sets VM_KVER, VM_KROOT (unpacked package root), VM_VMLINUZ.
vm_fetch_kernel() {
  local pkg=${VM_KERNEL_PKG:-}
  if [ -z "$pkg" ] && [ -f "$VM_CACHE/kernel/current" ]; then
    pkg=$(cat "$VM_CACHE/kernel/current")
  fi
  if [ -z "$pkg" ]; then
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
      awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || vm_die "cannot resolve the kernel package behind linux-image-amd64 (apt-get update?)"
  fi
  local kdir=$VM_CACHE/kernel/$pkg
  if [ ! -f "$kdir/.done" ]; then
    vm_log "downloading + unpacking $pkg"
    rm -rf "$kdir"
    mkdir -p "$kdir/deb"
    (cd "$kdir/deb" && apt-get download "$pkg" >&2 2>/dev/null) ||
      (cd "$kdir/deb" && apt-get download "$pkg" >&2) ||
      vm_die "apt-get download $pkg failed"
    dpkg-deb -x "$kdir"/deb/*.deb "$kdir/root"
    local kver
    kver=$(basename "$(find "$kdir/root/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")
    [ -n "$kver" ] || vm_die "no lib/modules/<version> in $pkg"
    depmod -b "$kdir/root" "$kver"
    echo "$kver" >"$kdir/kver"
    rm -rf "$kdir/deb"
    touch "$kdir/.done"
  fi
  mkdir -p "$VM_CACHE/kernel"
  echo "$pkg" >"$VM_CACHE/kernel/current"
  VM_KVER=$(cat "$kdir/kver")
  VM_KROOT=$kdir/root
  VM_VMLINUZ=$VM_KROOT/boot/vmlinuz-$VM_KVER
  [ -f "$VM_VMLINUZ" ] || vm_die "missing $VM_VMLINUZ"
  # Booting the uncompressed ELF vmlinux through its PVH entry point skips the
  # in-guest decompression, which costs 5-10 s under TCG.
  VM_BOOT_KERNEL=$VM_VMLINUZ
  if [ "${VM_BOOT_BZIMAGE:-0}" != 1 ]; then
    if [ ! -f "$kdir/vmlinux" ]; then
      if vm_extract_vmlinux "$VM_VMLINUZ" "$kdir/vmlinux.tmp"; then
        mv "$kdir/vmlinux.tmp" "$kdir/vmlinux"
      else
        rm -f "$kdir/vmlinux.tmp"
        vm_log "WARN: could not extract vmlinux, booting bzImage"
      fi
    fi
    [ -f "$kdir/vmlinux" ] && VM_BOOT_KERNEL=$kdir/vmlinux
  fi
}

# vm_extract_vmlinux BZIMAGE OUT: decompress the xz/gzip payload of a bzImage.
vm_extract_vmlinux() {
  /usr/bin/python3 - "$1" "$2" <<'PYEOF'
import gzip, lzma, sys, zlib
d = open(sys.argv[1], "rb").read()
for magic, kind in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08\x00", "gz")):
    i = d.find(magic)
    if i < 0:
        continue
    try:
        if kind == "xz":
            out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:])
        else:
            out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(d[i:])
    except Exception:
        continue
    if out[:4] == b"\x7fELF":
        open(sys.argv[2], "wb").write(out)
        sys.exit(0)
sys.exit(1)
PYEOF
}

# Print the load order (paths relative to lib/modules/$VM_KVER) for VM_MODULES.
vm_module_order() {
  local mdir=$VM_KROOT/lib/modules/$VM_KVER
  awk -v want="${VM_MODULES[*]}" -v builtin="$mdir/modules.builtin" '
    function norm(s) { sub(/.*\//, "", s); sub(/\.ko.*$/, "", s); gsub(/-/, "_", s); return s }
    function visit(p,   n, i, d) {
      if (p in seen) return
      seen[p] = 1
      n = split(deps[p], d, " ")
      for (i = n; i >= 1; i--) visit(d[i])
      print p
    }
    BEGIN {
      while ((getline line < builtin) > 0) isbuiltin[norm(line)] = 1
    }
    {
      p = $1; sub(/:$/, "", p)
      deps[p] = ""
      for (i = 2; i <= NF; i++) deps[p] = deps[p] " " $i
      bypath[norm(p)] = p
    }
    END {
      n = split(want, w, " ")
      for (i = 1; i <= n; i++) {
        m = norm(w[i])
        if (m in bypath) visit(bypath[m])
        else if (!(m in isbuiltin)) printf "[vm] WARN: module %s not found\n", w[i] > "/dev/stderr"
      }
    }' "$mdir/modules.dep"
}

# ---------------------------------------------------------------- initramfs helpers
# Shared libraries of an ELF binary, one path per line (nothing for static ones).
vm_libs_of() {
  ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}' || true
}

# vm_stage_binary STAGE SRC DEST: copy a binary and its libraries into STAGE.
vm_stage_binary() {
  local stage=$1 src=$2 dest=$3 lib
  mkdir -p "$stage/$(dirname "$dest")"
  cp -L "$src" "$stage/$dest"
  chmod 0755 "$stage/$dest"
  while read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$stage/$(dirname "$lib")"
    [ -e "$stage/$lib" ] || cp -L "$lib" "$stage/$lib"
  done < <(vm_libs_of "$src")
}

# Uncompressed: unpacking gzip in the guest costs ~1 s under TCG; the kernel
# accepts concatenated archives.
vm_pack() { # vm_pack STAGE OUT.cpio
  (cd "$1" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc -R 0:0 --quiet) >"$2.tmp"
  mv "$2.tmp" "$2"
}

vm_libgcc() {
  local p
  for p in /lib/x86_64-linux-gnu/libgcc_s.so.1 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1; do
    [ -f "$p" ] && { echo "$p"; return; }
  done
  ldconfig -p | awk '/libgcc_s\.so\.1 .*x86-64/{print $NF; exit}'
}

# Base initramfs: busybox, cryptsetup (+libs, libgcc_s), modules, /init.
# Cached by a hash over every input file; sets VM_BASE_INITRD.
vm_build_base_initramfs() {
  local cs busybox mods libgcc
  cs=$(command -v cryptsetup || echo /sbin/cryptsetup)
  busybox=/bin/busybox
  [ -x "$busybox" ] || vm_die "no /bin/busybox (busybox-static)"
  libgcc=$(vm_libgcc)
  mods=$(vm_module_order)
  local hash
  hash=$( {
    echo "kver=$VM_KVER"
    echo "$mods"
    # shellcheck disable=SC2046
    sha256sum "$busybox" "$cs" "$libgcc" $(vm_libs_of "$cs") \
      "$VM_LIB_DIR/guest-init.sh" "$VM_LIB_DIR/lib.sh"
  } | sha256sum | cut -c1-16)
  VM_BASE_INITRD=$VM_CACHE/initramfs/base-$hash.cpio
  if [ -f "$VM_BASE_INITRD" ]; then
    return 0
  fi
  vm_log "building base initramfs ($hash)"
  local stage=$VM_CACHE/initramfs/stage-base.$$
  rm -rf "$stage"
  mkdir -p "$stage"/{bin,sbin,dev,proc,sys,run,tmp,etc,lib/modules,mnt,params}
  cp "$busybox" "$stage/bin/busybox"
  local applet
  for applet in $("$busybox" --list); do
    [ -e "$stage/bin/$applet" ] || ln -s busybox "$stage/bin/$applet"
  done
  vm_stage_binary "$stage" "$cs" /sbin/cryptsetup
  mkdir -p "$stage/$(dirname "$libgcc")"
  cp -L "$libgcc" "$stage/$libgcc"
  local m mdir=$VM_KROOT/lib/modules/$VM_KVER
  : >"$stage/etc/modules.load"
  for m in $mods; do
    cp "$mdir/$m" "$stage/lib/modules/"
    basename "$m" >>"$stage/etc/modules.load"
  done
  mknod -m 600 "$stage/dev/console" c 5 1
  mknod -m 666 "$stage/dev/null" c 1 3
  cp "$VM_LIB_DIR/guest-init.sh" "$stage/init"
  chmod 0755 "$stage/init"
  vm_pack "$stage" "$VM_BASE_INITRD"
  rm -rf "$stage"
  # keep only the newest few base images
  find "$VM_CACHE/initramfs" -maxdepth 1 -name 'base-*.cpio' ! -newer "$VM_BASE_INITRD" \
    ! -path "$VM_BASE_INITRD" -mmin +60 -delete 2>/dev/null || true
}

# Optional layer with the bifs binary (stripped) and its libraries; sets VM_BIFS_INITRD.
vm_build_bifs_layer() {
  VM_BIFS_INITRD=
  [ -n "${BIFS_BIN:-}" ] || return 0
  [ -x "$BIFS_BIN" ] || vm_die "BIFS_BIN=$BIFS_BIN is not an executable"
  local hash
  hash=$(sha256sum "$BIFS_BIN" | cut -c1-16)
  VM_BIFS_INITRD=$VM_CACHE/initramfs/bifs-$hash.cpio
  [ -f "$VM_BIFS_INITRD" ] && return 0
  vm_log "building bifs initramfs layer ($hash)"
  local stage=$VM_CACHE/initramfs/stage-bifs.$$
  rm -rf "$stage"
  mkdir -p "$stage"
  vm_stage_binary "$stage" "$BIFS_BIN" /bin/bifs
  if command -v objcopy >/dev/null; then
    objcopy --strip-debug "$stage/bin/bifs" 2>/dev/null || true
  fi
  vm_pack "$stage" "$VM_BIFS_INITRD"
  rm -rf "$stage"
}

vm_setup() {
  mkdir -p "$VM_CACHE/initramfs" "$VM_CACHE/runs"
  vm_install_packages
  vm_fetch_kernel
  vm_build_base_initramfs
  vm_build_bifs_layer
}

# ---------------------------------------------------------------- running
vm_shquote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

# vm_run_guest [-e KEY=VALUE]... [-f FILE]... CASE_SCRIPT IMAGE[:ro]...
#   Boots one guest. IMAGE i becomes /dev/vd<a+i> and /dev/disk/<serial>, where
#   serial is the image's basename without extension (max 20 chars). -f files
#   appear as /params/<basename>; -e pairs are exported (from /params/env)
#   before CASE_SCRIPT runs as /case.sh. Prints the guest's RESULT lines on
#   stdout. Returns 0 if the guest finished (even if some RESULT is FAIL),
#   2 on boot failure / timeout / missing completion marker (console tail on
#   stderr; the RESULT lines printed before that are still on stdout).
#   The console log is left in $VM_LAST_LOG.
vm_run_guest() {
  local envs=() files=()
  while [ $# -gt 0 ]; do
    case $1 in
      -e) envs+=("$2"); shift 2 ;;
      -f) files+=("$2"); shift 2 ;;
      --) shift; break ;;
      -*) vm_die "vm_run_guest: unknown option $1" ;;
      *) break ;;
    esac
  done
  [ $# -ge 1 ] || vm_die "usage: vm_run_guest [-e K=V] [-f FILE] CASE_SCRIPT IMAGE..."
  local case_script=$1
  shift
  [ -f "$case_script" ] || vm_die "no case script $case_script"
  [ -n "${VM_BASE_INITRD:-}" ] || vm_setup
  [ $# -le 28 ] || vm_die "too many images ($#) for one boot (max 28 PCI slots)"

  local run
  run=$VM_CACHE/runs/$(date +%Y%m%d-%H%M%S)-$$-$RANDOM
  mkdir -p "$run/stage/params"
  cp "$case_script" "$run/stage/case.sh"
  chmod 0755 "$run/stage/case.sh"
  local f kv
  for f in "${files[@]}"; do cp "$f" "$run/stage/params/"; done
  {
    echo "export VM_NDRIVES=$#"
    for kv in "${envs[@]}"; do
      echo "export ${kv%%=*}=$(vm_shquote "${kv#*=}")"
    done
  } >"$run/stage/params/env"

  local drives=() img ro serial i=0 letters=abcdefghijklmnopqrstuvwxyz
  : >"$run/stage/params/drives"
  for img in "$@"; do
    ro=
    case $img in *:ro) ro=,readonly=on; img=${img%:ro} ;; esac
    [ -f "$img" ] || vm_die "no image $img"
    case $img in *,*) vm_die "image path must not contain a comma: $img" ;; esac
    serial=$(basename "$img")
    serial=${serial%.*}
    serial=${serial:0:20}
    img=$(realpath "$img")
    drives+=(-drive "file=$img,format=raw,if=none,id=d$i,cache=unsafe$ro"
      -device "virtio-blk-pci,drive=d$i,serial=$serial")
    echo "vd${letters:$i:1} $serial" >>"$run/stage/params/drives"
    i=$((i + 1))
  done
  vm_pack "$run/stage" "$run/run.cpio"
  cat "$VM_BASE_INITRD" ${VM_BIFS_INITRD:+"$VM_BIFS_INITRD"} "$run/run.cpio" >"$run/initrd"

  local log=$run/console.log rc=0 start tailpid=
  VM_LAST_LOG=$log
  export VM_LAST_LOG
  : >"$log"
  start=$(date +%s)
  if [ "${VM_VERBOSE:-0}" = 1 ]; then
    tail -n +1 -f "$log" >&2 &
    tailpid=$!
  fi
  timeout -k 5 "$VM_TIMEOUT" qemu-system-x86_64 \
    -accel tcg -cpu max -smp 1 -m "$VM_MEM" \
    -nodefaults -display none -no-reboot -monitor none \
    -serial "file:$log" \
    -kernel "$VM_BOOT_KERNEL" -initrd "$run/initrd" \
    -append "console=ttyS0 panic=-1 loglevel=${VM_LOGLEVEL:-3} rdinit=/init ${VM_APPEND:-}" \
    "${drives[@]}" </dev/null >"$run/qemu.out" 2>&1 || rc=$?
  [ -z "$tailpid" ] || kill "$tailpid" 2>/dev/null || true
  local secs=$(($(date +%s) - start))
  tr -d '\r' <"$log" >"$log.clean"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    vm_log "guest TIMED OUT after ${VM_TIMEOUT}s (run dir $run; VM_LOGLEVEL=7 shows more); console tail:"
    tail -n 40 "$log.clean" >&2
    grep -E '^RESULT ' "$log.clean" || true
    return 2
  fi
  if ! grep -q '^VMHARNESS DONE' "$log.clean"; then
    vm_log "guest did not finish (qemu rc=$rc, ${secs}s, run dir $run); qemu said:"
    tail -n 10 "$run/qemu.out" >&2
    vm_log "console tail:"
    tail -n 40 "$log.clean" >&2
    grep -E '^RESULT ' "$log.clean" || true
    return 2
  fi
  vm_log "guest finished in ${secs}s ($(grep '^VMHARNESS DONE' "$log.clean" | head -n1))"
  grep -E '^VMHARNESS WARN' "$log.clean" >&2 || true
  grep -E '^RESULT ' "$log.clean" || true
  # prune old run dirs
  find "$VM_CACHE/runs" -mindepth 1 -maxdepth 1 -type d | LC_ALL=C sort -r |
    tail -n +"$((VM_KEEP_RUNS + 1))" | xargs -r rm -rf
  return 0
}
