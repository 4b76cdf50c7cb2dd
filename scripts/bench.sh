#!/usr/bin/env bash
# bifs against its peers, side by side on the same machine and data, in one run (issue 6).
#
#   scripts/bench.sh                       # 1 GiB image, median of 5 runs
#   BENCH_SIZE_MIB=256 BENCH_RUNS=3 scripts/bench.sh
#   BENCH_DIR=/some/dir scripts/bench.sh   # default /dev/shm/bifs-bench (tmpfs)
#   BENCH_ONLY=xts scripts/bench.sh        # only the XTS engine against OpenSSL (build/bench/xts.md)
#   BENCH_XTS_KERNEL=vaes256 scripts/bench.sh   # the XTS rows for one kernel only (default: the one
#                                          # bifs picks, and vaes256 as well where that is vaes512)
#
# Prints a Markdown table (medians and ratios) and writes it, with a CSV and an SVG chart, to
# build/bench/. Absolute numbers on a shared machine are noise; the ratios between peers
# measured in the same run are the result. Inputs and outputs live on a tmpfs so that the
# disk does not hide CPU speed; the page cache is warm (the image was just written).
# Needs root (cryptsetup reencrypt, FUSE mount) on a Linux machine with /dev/fuse.
set -euo pipefail

SIZE_MIB=${BENCH_SIZE_MIB:-1024}
RUNS=${BENCH_RUNS:-5}
DIR=${BENCH_DIR:-/dev/shm/bifs-bench}
RSS_GIB=${BENCH_RSS_GIB:-4}
ONLY=${BENCH_ONLY:-}
[[ -z $ONLY || $ONLY == xts ]] || { echo "bench: BENCH_ONLY must be empty or xts" >&2; exit 2; }
XTS_SECS=${BENCH_XTS_SECS:-1}
# cpu: both sides count CPU time (openssl speed without -elapsed counts user time), so time spent
# waiting for a core on a shared machine is left out; wall: wall-clock time on both sides.
XTS_CLOCK=${BENCH_XTS_CLOCK:-cpu}
# The XTS kernel section 1 measures: empty for the one bifs picks (and, where that is vaes512,
# vaes256 too: see section 1), else one of those that `target/release/deps/xts-* kernels` lists
# (vaes512, vaes256, avx512, avx2, portable).
XTS_FORCED=${BENCH_XTS_KERNEL:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/bench
PW=bench-passphrase

log() { echo "bench: $*" >&2; }

# The share of CPU time the hypervisor gave to other guests since the bench started (/proc/stat
# "steal"): on a shared VM every ratio below moves with it, the cipher's side (more CPU per
# byte than a copy) more than its peer's.
cpu_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9}' /proc/stat; }
read -r TICKS0 STEAL0 < <(cpu_ticks)
steal_pct() {
  local t st
  read -r t st < <(cpu_ticks)
  awk -v t="$((t - TICKS0))" -v s="$((st - STEAL0))" 'BEGIN {if (t > 0) printf "%.0f %%", 100 * s / t; else print "n/a"}'
}

# --- tools ------------------------------------------------------------------------------------
need=()
command -v cryptsetup >/dev/null || need+=(cryptsetup-bin)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
[[ -x /usr/bin/time ]] || need+=(time)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
"$ROOT/scripts/setup.sh" >/dev/null

log "building (release)"
if [[ $ONLY == xts ]]; then
  (cd "$ROOT" && cargo bench -p bifs-core --bench xts --no-run -q 2>/dev/null)
else
  (cd "$ROOT" && cargo build --release --bins -q && cargo bench -p bifs-core --bench xts --no-run -q 2>/dev/null)
fi
BIFS=$ROOT/target/release/bifs

mkdir -p "$OUT" "$DIR"
MNT=$DIR/mnt
STORE=$DIR/store
cleanup() {
  for m in "$MNT" "$DIR/mnt-rss"; do mountpoint -q "$m" 2>/dev/null && fusermount3 -u "$m" 2>/dev/null || true; done
  mountpoint -q "$DIR/other" 2>/dev/null && umount "$DIR/other" 2>/dev/null || true
  [[ -n "${MOUNT_PID:-}" ]] && kill "$MOUNT_PID" 2>/dev/null || true
  [[ -n "${SERVE_PID:-}" ]] && kill "$SERVE_PID" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
rm -rf "${DIR:?}"/* 2>/dev/null || true
mkdir -p "$MNT" "$STORE" "$DIR/out"

# --- timing helpers -----------------------------------------------------------------------------
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
mibs() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.0f", b/1048576/s}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b>0) printf "%.2f", a/b; else print "n/a"}'; }

declare -A SECS   # label -> median seconds
# time_runs LABEL PREP_FN CMD...: median wall time of CMD over RUNS runs; PREP_FN (untimed) runs
# before each one (e.g. restoring an input that the tool changes in place).
time_runs() {
  local label=$1 prep=$2; shift 2
  local t=() r s e
  for ((r = 0; r < RUNS; r++)); do
    [[ $prep == - ]] || $prep
    s=$(now); "$@" >/dev/null 2>"$DIR/err" || { log "$label failed:"; cat "$DIR/err" >&2; return 1; }; e=$(now)
    t+=("$(awk -v s="$s" -v e="$e" 'BEGIN {print e-s}')")
  done
  SECS[$label]=$(printf '%s\n' "${t[@]}" | median)
  log "$label: ${SECS[$label]} s"
}
clean_out() { rm -f "$DIR"/out/* "$DIR"/out/.[!.]* "$DIR"/other/* 2>/dev/null || true; }

declare -A PAIR   # label -> median of the per-pair ratios (peer time / bifs time)
# time_pairs LABEL PREP_FN PEER_CMD... -- BIFS_CMD...: RUNS pairs run in turn, the peer then
# bifs, each after clean_out (PREP_FN, untimed, also runs before bifs's turn); SECS["LABEL"] and
# SECS["LABEL (peer)"] get each side's median time, PAIR["LABEL"] the median of the per-pair
# ratios (a shared machine drifts between two separate series more than within a pair).
time_pairs() {
  local label=$1 prep=$2; shift 2
  local peer=() tp=() tb=() r=() i s e a b
  while [[ $1 != -- ]]; do peer+=("$1"); shift; done; shift
  for ((i = 0; i < RUNS; i++)); do
    clean_out
    s=$(now); "${peer[@]}" >/dev/null 2>"$DIR/err" || { log "$label (peer) failed:"; cat "$DIR/err" >&2; return 1; }; e=$(now)
    a=$(awk -v s="$s" -v e="$e" 'BEGIN {print e-s}')
    clean_out; [[ $prep == - ]] || $prep
    s=$(now); "$@" >/dev/null 2>"$DIR/err" || { log "$label failed:"; cat "$DIR/err" >&2; return 1; }; e=$(now)
    b=$(awk -v s="$s" -v e="$e" 'BEGIN {print e-s}')
    tp+=("$a"); tb+=("$b"); r+=("$(ratio "$a" "$b")")
  done
  SECS["$label (peer)"]=$(printf '%s\n' "${tp[@]}" | median)
  SECS[$label]=$(printf '%s\n' "${tb[@]}" | median)
  PAIR[$label]=$(printf '%s\n' "${r[@]}" | median)
  log "$label: ${SECS[$label]} s, peer ${SECS["$label (peer)"]} s, ratio (median of $RUNS pairs) ${PAIR[$label]} [${r[*]}]"
}

# --- 1. XTS engine vs OpenSSL, one core ---------------------------------------------------------
log "XTS engine vs openssl speed (${XTS_SECS}s per point, $RUNS rounds, $XTS_CLOCK time)"
XTS_BIN=$(ls -t "$ROOT"/target/release/deps/xts-* | grep -v '\.d$' | head -1)
case $XTS_CLOCK in
  cpu) XTS_BIN_CLOCK=cpu; OSSL_ELAPSED=() ;;
  wall) XTS_BIN_CLOCK=wall; OSSL_ELAPSED=(-elapsed) ;;
  *) log "BENCH_XTS_CLOCK must be cpu or wall"; exit 2 ;;
esac
# Each round measures bifs and then openssl at every point, one after the other on core 0; the
# ratio column is the median of the per-round ratios (pairs measured minutes apart on a shared
# machine can differ by more than the engines do).
# On a CPU with AVX-512 bifs picks vaes512; the same rounds then also force vaes256, the kernel
# a CPU with VAES but no AVX-512 runs (AMD Zen 3, Intel's client cores): its instructions on
# this core, against the same OpenSSL figures (OpenSSL 3.0's XTS does not use VAES on either).
declare -A XO XS XR
XTS_KERNELS=()
xts_run() { # xts_run KERNEL_ARG: the bench binary's "alg unit MB/s" lines; its kernel in $DIR/xts-kernel
  taskset -c 0 "$XTS_BIN" "$XTS_SECS" "$XTS_BIN_CLOCK" ${1:+kernel=$1} 2>"$DIR/xts-kernel"
}
xts_kernel() { # The bench binary says on stderr which kernel it ran ("xts kernel: NAME").
  local k; k=$(sed -n 's/^xts kernel: //p' "$DIR/xts-kernel")
  [[ -n $k ]] || { log "the XTS bench failed: $(cat "$DIR/xts-kernel")"; exit 1; }
  echo "$k"
}
for ((r = 0; r < RUNS; r++)); do
  declare -A ours=()
  while read -r alg unit mbs; do ours[first.$alg.$unit]=$mbs; done < <(xts_run "$XTS_FORCED")
  if ((r == 0)); then
    XTS_KERNELS=("$(xts_kernel)")
    [[ -z $XTS_FORCED && ${XTS_KERNELS[0]} == vaes512 ]] && XTS_KERNELS+=(vaes256)
    log "XTS kernels: ${XTS_KERNELS[*]}"
  fi
  for alg_unit in "${!ours[@]}"; do ours[${XTS_KERNELS[0]}.${alg_unit#first.}]=${ours[$alg_unit]}; done
  for kern in "${XTS_KERNELS[@]:1}"; do
    while read -r alg unit mbs; do ours[$kern.$alg.$unit]=$mbs; done < <(xts_run "$kern")
    [[ $(xts_kernel) == "$kern" ]] || { log "the XTS bench ran $(xts_kernel), not $kern"; exit 1; }
  done
  for kern in "${XTS_KERNELS[@]}"; do
    for alg in aes-128-xts aes-256-xts; do XO[$kern.$alg.bulk]+="${ours[$kern.$alg.bulk]} "; done
  done
  for alg in aes-128-xts aes-256-xts; do
    for unit in 512 4096; do
      k=$(taskset -c 0 openssl speed "${OSSL_ELAPSED[@]}" -evp "$alg" -bytes "$unit" -seconds "$XTS_SECS" 2>/dev/null | tail -1 | awk '{sub("k","",$2); print $2/1000}')
      XS[$alg.$unit]+="$k "
      for kern in "${XTS_KERNELS[@]}"; do
        XO[$kern.$alg.$unit]+="${ours[$kern.$alg.$unit]} "
        XR[$kern.$alg.$unit]+="$(ratio "${ours[$kern.$alg.$unit]}" "$k") "
      done
    done
  done
done
xmed() { tr ' ' '\n' <<<"$1" | grep . | median; }
XTS_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') (family $(grep -m1 '^cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), model $(grep -m1 '^model[[:space:]]*:' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')): VAES $(grep -qw vaes /proc/cpuinfo && echo yes || echo no), AVX-512F $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no); kernels ${XTS_KERNELS[*]}"
# xts_rows: the table rows of this section, a block per kernel measured.
xts_rows() {
  local kern alg unit o p t what
  for kern in "${XTS_KERNELS[@]}"; do
    what="XTS engine ($kern)"
    [[ $kern == "${XTS_KERNELS[0]}" ]] || what="XTS engine ($kern: the VAES-without-AVX-512 path, forced on this core)"
    for alg in aes-128-xts aes-256-xts; do
      for unit in 4096 512; do
        o=$(xmed "${XO[$kern.$alg.$unit]}"); p=$(xmed "${XS[$alg.$unit]}")
        t="≥ 0.8"; [[ $unit == 4096 ]] && t="≥ 1.0"
        echo "| $what $alg, $unit-byte units, 1 core, $XTS_CLOCK time (MB/s; ratio: median of $RUNS pairs) | openssl $p | $o | $(xmed "${XR[$kern.$alg.$unit]}") | $t |"
      done
      o=$(xmed "${XO[$kern.$alg.bulk]}")
      echo "| $what $alg, 1 MiB of 4 KiB sectors per call (MB/s) | - | $o | - | - |"
    done
  done
}
XTS_LEGEND="(vaes512: the whole pass in 512-bit VAES registers, with AVX-512F/BW; vaes256: in 256-bit ones, VAES and VPCLMULQDQ without AVX-512; avx512/avx2: tweak kernels around the aes crate)"
if [[ $ONLY == xts ]]; then
  {
    echo "XTS CPU: $XTS_CPU $XTS_LEGEND; host steal $(steal_pct)."
    echo
    echo "| measurement | peer | bifs | ratio (bifs/peer) | target |"
    echo "| --- | --- | --- | --- | --- |"
    xts_rows
  } | tee "$OUT/xts.md"
  exit 0
fi

# --- data -------------------------------------------------------------------------------------
BYTES=$((SIZE_MIB * 1048576))
log "making a ${SIZE_MIB} MiB random image in $DIR"
head -c "$BYTES" /dev/urandom >"$STORE/disk.img"
cat >"$DIR/secret.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: bench, namespace: default}
stringData:
  CRYPTO_KEY_VALUE: "$PW"
  CRYPTO_KEY_CIPHER: aes-xts-plain64
  CRYPTO_KEY_HASH: sha256
  CRYPTO_KEY_SIZE: "512"
  CRYPTO_PBKDF: pbkdf2
  CRYPTO_PBKDF_FORCE_ITERATIONS: "1000"
EOF
SECRET=(--secret "$DIR/secret.yaml")
export BIFS_LOG=warn

# --- 2. encrypt: bifs vs cryptsetup reencrypt vs qemu-img vs cp ----------------------------------
time_runs "cp raw file" clean_out cp "$STORE/disk.img" "$DIR/out/copy.img"
time_runs "bifs encrypt" clean_out "$BIFS" encrypt "${SECRET[@]}" "$STORE/disk.img" "$DIR/out/enc.img"
time_runs "bifs encrypt (1 core)" clean_out taskset -c 0 "$BIFS" encrypt "${SECRET[@]}" "$STORE/disk.img" "$DIR/out/enc.img"
"$BIFS" encrypt "${SECRET[@]}" "$STORE/disk.img" "$STORE/disk.luks" 2>/dev/null

prep_reenc() { clean_out; cp "$STORE/disk.img" "$DIR/out/re.img"; truncate -s +16M "$DIR/out/re.img"; }
time_runs "cryptsetup reencrypt --encrypt" prep_reenc sh -c \
  "printf %s '$PW' | cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 16M --key-size 512 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - -q '$DIR/out/re.img'"
# qemu-img times its PBKDF2 with getrusage first, and on a fast CPU that reads 0 now and then
# ("Unable to get accurate CPU usage"), before any data moves: that failure alone is retried.
qemu_img_retrying() {
  local i
  for ((i = 0; i < 40; i++)); do
    qemu-img "$@" 2>"$DIR/qemu.err" && return 0
    grep -q "Unable to get accurate CPU usage" "$DIR/qemu.err" || { cat "$DIR/qemu.err" >&2; return 1; }
  done
  cat "$DIR/qemu.err" >&2; return 1
}
time_runs "qemu-img convert -O luks" clean_out qemu_img_retrying convert -f raw -O luks \
  --object "secret,id=sec0,data=$PW" -o key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,iter-time=10 \
  "$STORE/disk.img" "$DIR/out/q.luks"

# --- 3. decrypt: bifs vs cryptsetup reencrypt --decrypt (detached header) -----------------------
time_runs "bifs decrypt" clean_out "$BIFS" decrypt "${SECRET[@]}" "$STORE/disk.luks" "$DIR/out/dec.img"
# cryptsetup decrypts in place only with a detached header: make one encrypted copy once.
cp "$STORE/disk.img" "$DIR/det.img"
printf %s "$PW" | cryptsetup reencrypt --encrypt --force-offline-reencrypt --type luks2 --header "$DIR/det.hdr" --key-size 512 \
  --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - -q "$DIR/det.img" >/dev/null
prep_dec() { clean_out; cp "$DIR/det.img" "$DIR/out/det.img"; cp "$DIR/det.hdr" "$DIR/out/det.hdr"; }
time_runs "cryptsetup reencrypt --decrypt" prep_dec sh -c \
  "printf %s '$PW' | cryptsetup reencrypt --decrypt --force-offline-reencrypt --header '$DIR/out/det.hdr' --key-file - -q '$DIR/out/det.img'"

# --- 4. qcow2 (compressed) -> raw ---------------------------------------------------------------
log "making a compressed qcow2 (base64 text, about 3/4 compressible)"
head -c $((BYTES * 3 / 4)) /dev/urandom | base64 -w 0 | head -c "$BYTES" >"$DIR/text.img"
qemu-img convert -c -f raw -O qcow2 "$DIR/text.img" "$STORE/disk.qcow2"
rm -f "$DIR/text.img"
time_runs "qemu-img convert -O raw (qcow2)" clean_out qemu-img convert -O raw "$STORE/disk.qcow2" "$DIR/out/q.raw"

# --- 5. the mount -------------------------------------------------------------------------------
mount_bifs() { # mount_bifs MOUNTPOINT EXTRA_ARGS...
  local m=$1; shift
  "$BIFS" mount --store "$STORE" --secrets "$DIR/secret.yaml" --state "$DIR/state" "$@" "$m" 2>"$DIR/mount.log" &
  MOUNT_PID=$!
  for _ in $(seq 100); do mountpoint -q "$m" && return 0; sleep 0.1; done
  log "mount failed"; cat "$DIR/mount.log" >&2; return 1
}
umount_bifs() { fusermount3 -u "$1"; wait "$MOUNT_PID" 2>/dev/null || true; MOUNT_PID=; }

ENC=$MNT/encrypt/default/bench
DEC=$MNT/decrypt/default/bench
# Where the mount's copies go: another tmpfs. cp from a view to any file system is read(2) and
# write(2); so is a plain cp of the source to another file system, the peer. A plain cp within
# one file system is something else: coreutils asks copy_file_range(2) and the kernel copies
# page to page without user space, which the kernel refuses between two file systems (EXDEV),
# so no FUSE file system can take that path. It is measured too, as a reference row.
OTHER=$DIR/other
mkdir -p "$OTHER"
mount -t tmpfs -o size=$((3 * SIZE_MIB + 64))m bifs-bench-other "$OTHER"
# The default mount (keep-cache: the page cache kept, dropped when a source or Secret changes)
# against a plain cp of the source file, in pairs. "warm": one mount, so after the first pair a
# view is read from the page cache as the source is; "cold": a fresh mount before each of
# bifs's turns, so every byte goes through bifs (the first reader after a start or a change).
mount_bifs "$MNT"
cat "$ENC/disk.img" >/dev/null  # makes and persists the header once (pbkdf2: cheap anyway)
time_pairs "cp mount encrypt/" - cp "$STORE/disk.img" "$OTHER/copy.img" -- cp "$ENC/disk.img" "$OTHER/m.luks"
time_pairs "cp mount decrypt/" - cp "$STORE/disk.luks" "$OTHER/copy.img" -- cp "$DEC/disk.luks" "$OTHER/m.dec"
time_pairs "cp mount raw/ (raw)" - cp "$STORE/disk.img" "$OTHER/copy.img" -- cp "$MNT/raw/disk.img" "$OTHER/m.raw"
time_pairs "cp mount raw/ (raw) vs cp within one tmpfs" - cp "$STORE/disk.img" "$DIR/out/copy.img" -- cp "$MNT/raw/disk.img" "$OTHER/m.raw"
time_runs "cp mount raw/ (qcow2)" clean_out cp "$MNT/raw/disk.qcow2" "$DIR/out/m.qraw"
umount_bifs "$MNT"
remount_bifs() { umount_bifs "$MNT"; mount_bifs "$MNT"; }
mount_bifs "$MNT"
time_pairs "cp mount encrypt/ (cold)" remount_bifs cp "$STORE/disk.img" "$OTHER/copy.img" -- cp "$ENC/disk.img" "$OTHER/m.luks"
time_pairs "cp mount decrypt/ (cold)" remount_bifs cp "$STORE/disk.luks" "$OTHER/copy.img" -- cp "$DEC/disk.luks" "$OTHER/m.dec"
time_pairs "cp mount raw/ (raw, cold)" remount_bifs cp "$STORE/disk.img" "$OTHER/copy.img" -- cp "$MNT/raw/disk.img" "$OTHER/m.raw"
umount_bifs "$MNT"

# --- 5b. bifs serve: an encrypt view over loopback vs the plain file from the same server -------
"$BIFS" serve --store "$STORE" --secrets "$DIR/secret.yaml" --state "$DIR/state" --listen 127.0.0.1:0 \
  >"$DIR/serve.out" 2>"$DIR/serve.log" &
SERVE_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$DIR/serve.out" 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/.*listening on //p' "$DIR/serve.out")
[[ -n $URL ]] || { log "bifs serve did not start"; cat "$DIR/serve.log" >&2; exit 1; }
curl -sf -o /dev/null "$URL/views/encrypt/default/bench/disk.img"   # the header, made once
time_pairs "curl serve encrypt/" - curl -sf -o /dev/null "$URL/views/ignore/disk.img" -- \
  curl -sf -o /dev/null "$URL/views/encrypt/default/bench/disk.img"
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=

# FUSE variants (the choice recorded in docs/performance.md): cp from encrypt/ against the
# default (--cache keep-cache, --threads 4).
FUSE_VARIANTS=("--cache direct-io --threads 4" "--cache direct-io --threads 1" "--cache keep-cache --threads 1" "--read-ahead-kib 0")
for variant in "${FUSE_VARIANTS[@]}"; do
  # shellcheck disable=SC2086
  mount_bifs "$MNT" $variant
  time_runs "cp mount encrypt/ ($variant)" clean_out cp "$ENC/disk.img" "$DIR/out/m.luks"
  umount_bifs "$MNT"
done

# --- 6. argon2id unlock, cryptsetup's default cost --------------------------------------------
log "argon2id keyslot with cryptsetup's default cost"
truncate -s 20M "$DIR/kdf.img"
printf %s "$PW" | cryptsetup luksFormat --type luks2 --key-file - -q "$DIR/kdf.img"
KDF_DESC=$(cryptsetup luksDump "$DIR/kdf.img" | awk '/PBKDF:|Time cost:|Memory:|Threads:/ {$1=$1; printf "%s; ", $0}')
time_runs "cryptsetup open --test-passphrase (argon2id)" - sh -c \
  "printf %s '$PW' | cryptsetup open --test-passphrase --key-file - '$DIR/kdf.img'"
time_runs "bifs unlock (decrypt 4 MiB, argon2id)" clean_out "$BIFS" decrypt "${SECRET[@]}" "$DIR/kdf.img" "$DIR/out/kdf.dec"

# --- 7. daemon peak RSS while copying a large view ---------------------------------------------
log "peak RSS while cp reads a ${RSS_GIB} GiB encrypt view"
truncate -s "${RSS_GIB}G" "$STORE/big.img"
dd if="$STORE/disk.img" of="$STORE/big.img" bs=1M count=64 conv=notrunc status=none
mkdir -p "$DIR/mnt-rss"
mount_bifs "$DIR/mnt-rss"
s=$(now); cp "$DIR/mnt-rss/encrypt/default/bench/big.img" /dev/null; e=$(now)
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$MOUNT_PID/status")
RSS_SECS=$(awk -v s="$s" -v e="$e" 'BEGIN {print e-s}')
umount_bifs "$DIR/mnt-rss"
rm -f "$STORE/big.img"

# --- 8. Longhorn: header preparation, HEAD and first-byte latency, SIGTERM ---------------------
log "Longhorn's view of a node (scripts/bench-longhorn.sh)"
LONGHORN_ROWS=$(BIFS="$BIFS" "$ROOT/scripts/bench-longhorn.sh")

# --- table ------------------------------------------------------------------------------------
S=${SECS["bifs encrypt"]}
D=${SECS["bifs decrypt"]}
CP=${SECS["cp raw file"]}
thr() { mibs "$BYTES" "${SECS[$1]}"; }
{
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg), host steal $(steal_pct); $(uname -r)."
  echo "XTS CPU: $XTS_CPU $XTS_LEGEND."
  echo "Data: ${SIZE_MIB} MiB random image (qcow2: base64 text, compressed), median of $RUNS runs; inputs and outputs on $(df --output=fstype "$DIR" | tail -1) ($DIR), page cache warm."
  echo
  echo "| measurement | peer | bifs | ratio (bifs/peer) | target |"
  echo "| --- | --- | --- | --- | --- |"
  xts_rows
  echo "| encrypt (MiB/s) | cryptsetup reencrypt --encrypt $(thr "cryptsetup reencrypt --encrypt") | $(thr "bifs encrypt") | $(ratio "${SECS["cryptsetup reencrypt --encrypt"]}" "$S") | ≥ 4 |"
  echo "| encrypt (MiB/s) | qemu-img convert -O luks $(thr "qemu-img convert -O luks") | $(thr "bifs encrypt") | $(ratio "${SECS["qemu-img convert -O luks"]}" "$S") | ≥ 8 |"
  echo "| encrypt (MiB/s) | cp of the raw file $(thr "cp raw file") | $(thr "bifs encrypt") | $(ratio "$CP" "$S") | - |"
  echo "| encrypt, 2 cores vs 1 (MiB/s) | bifs on 1 core $(thr "bifs encrypt (1 core)") | $(thr "bifs encrypt") | $(ratio "${SECS["bifs encrypt (1 core)"]}" "$S") | ≥ 1.7 |"
  echo "| decrypt (MiB/s) | cryptsetup reencrypt --decrypt (detached header) $(thr "cryptsetup reencrypt --decrypt") | $(thr "bifs decrypt") | $(ratio "${SECS["cryptsetup reencrypt --decrypt"]}" "$D") | - |"
  for m in "cp mount encrypt/" "cp mount decrypt/" "cp mount raw/ (raw)" "cp mount encrypt/ (cold)" "cp mount decrypt/ (cold)" "cp mount raw/ (raw, cold)"; do
    echo "| $m, default mount (keep-cache), to another tmpfs (MiB/s; ratio: median of $RUNS pairs) | plain cp of the source to another tmpfs $(thr "$m (peer)") | $(thr "$m") | ${PAIR[$m]} | ≥ 0.9 |"
  done
  m="cp mount raw/ (raw) vs cp within one tmpfs"
  echo "| cp mount raw/ (raw), warm, to another tmpfs (MiB/s; ratio: median of $RUNS pairs) | plain cp within the store's tmpfs (copy_file_range: no read/write, not open to FUSE) $(thr "$m (peer)") | $(thr "$m") | ${PAIR[$m]} | - |"
  echo "| bifs serve encrypt/ over loopback (MiB/s; ratio: median of $RUNS pairs) | curl of ignore/ (the plain file) from the same server $(thr "curl serve encrypt/ (peer)") | $(thr "curl serve encrypt/") | ${PAIR["curl serve encrypt/"]} | ≥ 0.9 |"
  echo "| qcow2 (compressed) to raw (MiB/s of raw) | qemu-img convert -O raw $(thr "qemu-img convert -O raw (qcow2)") | cp from raw/ $(thr "cp mount raw/ (qcow2)") | $(ratio "${SECS["qemu-img convert -O raw (qcow2)"]}" "${SECS["cp mount raw/ (qcow2)"]}") | - |"
  for variant in "${FUSE_VARIANTS[@]}"; do
    echo "| cp from mount encrypt/ with $variant (MiB/s) | default (keep-cache, 4 threads) $(thr "cp mount encrypt/") | $(thr "cp mount encrypt/ ($variant)") | $(ratio "${SECS["cp mount encrypt/"]}" "${SECS["cp mount encrypt/ ($variant)"]}") | - |"
  done
  a=${SECS["cryptsetup open --test-passphrase (argon2id)"]}; b=${SECS["bifs unlock (decrypt 4 MiB, argon2id)"]}
  echo "| argon2id unlock, cryptsetup default cost (${KDF_DESC%; }) (s) | cryptsetup open --test-passphrase $a | $b | $(ratio "$b" "$a") (time, lower is better) | ≤ 1.5 |"
  echo "| mount daemon peak RSS (VmHWM) while cp reads a ${RSS_GIB} GiB encrypt/ view (pbkdf2 Secret: no argon2 memory) | - | $((RSS_KB / 1024)) MiB ($(mibs $((RSS_GIB * 1073741824)) "$RSS_SECS") MiB/s to /dev/null) | - | ≤ 64 MiB |"
  echo "$LONGHORN_ROWS"
} | tee "$OUT/table.md"

# --- chart: throughput bars of each comparison (SVG, no dependencies) ----------------------------
{
  rows=("cp raw file" "bifs encrypt" "bifs encrypt (1 core)" "cryptsetup reencrypt --encrypt" "qemu-img convert -O luks"
        "bifs decrypt" "cryptsetup reencrypt --decrypt" "cp mount encrypt/" "cp mount decrypt/" "cp mount raw/ (raw)"
        "cp mount raw/ (qcow2)" "qemu-img convert -O raw (qcow2)")
  max=1; for r in "${rows[@]}"; do v=$(thr "$r"); ((v > max)) && max=$v; done
  h=$((30 + 24 * ${#rows[@]}))
  echo "<svg xmlns='http://www.w3.org/2000/svg' width='820' height='$h' font-family='sans-serif' font-size='12'>"
  echo "<text x='10' y='18' font-weight='bold'>MiB/s, ${SIZE_MIB} MiB image, median of $RUNS ($(nproc) cores)</text>"
  y=30
  for r in "${rows[@]}"; do
    v=$(thr "$r"); w=$((v * 480 / max))
    case $r in bifs*|cp\ mount*) c="#2b7bb9" ;; *) c="#999999" ;; esac
    echo "<text x='10' y='$((y + 14))'>$r</text><rect x='240' y='$y' width='$w' height='18' fill='$c'/><text x='$((245 + w))' y='$((y + 14))'>$v</text>"
    y=$((y + 24))
  done
  echo "</svg>"
} >"$OUT/chart.svg"
log "wrote $OUT/table.md and $OUT/chart.svg"
