#!/usr/bin/env bash
# Real dm-crypt round trips in a qemu guest (one boot for the whole matrix).
#
#   scripts/dm-crypt-vm.sh                       # host cryptsetup makes/reads images
#   BIFS_BIN=target/release/bifs scripts/dm-crypt-vm.sh   # bifs encrypt/decrypt
#
# Cases (each prints "RESULT <case> PASS|FAIL <hashes>"):
#   fwd-K-S-KDF        image made on the host by make_encrypted_image, opened by
#                      dm-crypt in the guest: sha512(mapping) == sha512(source)
#   rev-K-S-KDF        guest luksFormat + dd through dm-crypt; then on the host
#   rev-K-S-KDF-host   decrypt_image(drive) == source
#   grow-longhorn[-host] encrypted image grown like a Longhorn volume from a
#                      backing image: first N bytes == source, data written past
#                      N reads back after close/reopen (and on the host)
#   neg-flip           one flipped ciphertext byte must change the hash
#   neg-wrongpass      a wrong passphrase must not open
#   neg-flip-host      one flipped ciphertext byte must change the host decrypt
# Ends with "N passed, M failed"; exit status 1 on any failure, 2 if the guest
# did not boot/finish.
#
# Env: ENCRYPTOR=cryptsetup|bifs (default bifs if BIFS_BIN is set), DECRYPTOR
# (default: ENCRYPTOR), BIFS_BIN, BIFS_ENCRYPT_ARGS / BIFS_DECRYPT_ARGS (extra
# words for the bifs command lines), PAYLOAD_MIB (default 4), VM_KEEP_WORK=1
# (keep the images in build/vm/work/matrix after a green run; they are always
# kept after a failure), plus lib.sh's VM_* variables.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/vm/lib.sh
. "$HERE/vm/lib.sh"

if [ -n "${BIFS_BIN:-}" ]; then
  BIFS_BIN=$(realpath "$BIFS_BIN")
  ENCRYPTOR=${ENCRYPTOR:-bifs}
else
  ENCRYPTOR=${ENCRYPTOR:-cryptsetup}
fi
DECRYPTOR=${DECRYPTOR:-$ENCRYPTOR}
PAYLOAD_MIB=${PAYLOAD_MIB:-4}
LUKS_HDR=$((16 << 20)) # LUKS2 data offset used everywhere (cryptsetup luksFormat default)
PY=/usr/bin/python3

# KDF cost options for host cryptsetup: cheap, the guest has 512 MiB and TCG is slow.
kdf_args() {
  case $1 in
    pbkdf2) echo "--pbkdf pbkdf2 --pbkdf-force-iterations 1000" ;;
    argon2i | argon2id) echo "--pbkdf $1 --pbkdf-memory 32 --pbkdf-force-iterations 4" ;;
    *) vm_die "unknown KDF $1" ;;
  esac
}

# write_secret FILE PASS KEYSIZE KDF: a Longhorn-style Kubernetes Secret.
b64() { printf '%s' "$1" | base64 -w0; }
write_secret() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: bifs-vm-test
  namespace: longhorn-system
type: Opaque
data:
  CRYPTO_KEY_VALUE: $(b64 "$2")
  CRYPTO_KEY_PROVIDER: $(b64 secret)
  CRYPTO_KEY_CIPHER: $(b64 aes-xts-plain64)
  CRYPTO_KEY_HASH: $(b64 sha256)
  CRYPTO_KEY_SIZE: $(b64 "$3")
  CRYPTO_PBKDF: $(b64 "$4")
$(secret_cost "$4")
EOF
  chmod 600 "$1"
}
# The same cheap KDF costs as kdf_args, as Secret keys (the guest has 512 MiB, TCG is slow).
secret_cost() {
  case $1 in
    pbkdf2) echo "  CRYPTO_PBKDF_FORCE_ITERATIONS: $(b64 1000)" ;;
    *) printf '  CRYPTO_PBKDF_MEMORY: %s\n  CRYPTO_PBKDF_FORCE_ITERATIONS: %s\n' "$(b64 32)" "$(b64 4)" ;;
  esac
}

# make_encrypted_image SRC DST KEYSIZE SECTOR KDF PASS
#   DST = LUKS2 (aes-xts-plain64, sha256, data at 16 MiB) whose mapping is exactly SRC.
make_encrypted_image() {
  local src=$1 dst=$2 keysize=$3 sector=$4 kdf=$5 pass=$6
  case $ENCRYPTOR in
    cryptsetup)
      # Offline in-place encryption: the last 32M of the file are free space;
      # reencrypt puts a 16M header in front (the other half is its move buffer),
      # so the data lands at the 16 MiB offset like a luksFormat'ed device.
      local size
      size=$(stat -c %s "$src")
      rm -f "$dst"
      truncate -s $((size + 2 * LUKS_HDR)) "$dst"
      dd if="$src" of="$dst" bs=1M conv=notrunc status=none
      printf '%s' "$pass" >"$dst.key"
      # shellcheck disable=SC2046
      cryptsetup reencrypt --encrypt --type luks2 -q --batch-mode \
        --cipher aes-xts-plain64 --hash sha256 --key-size "$keysize" \
        --sector-size "$sector" $(kdf_args "$kdf") \
        --reduce-device-size $((2 * LUKS_HDR >> 20))M --key-file "$dst.key" "$dst" >/dev/null
      truncate -s $((size + LUKS_HDR)) "$dst"
      rm -f "$dst.key"
      ;;
    bifs)
      write_secret "$dst.secret.yaml" "$pass" "$keysize" "$kdf"
      # shellcheck disable=SC2086
      "$BIFS_BIN" encrypt --secret "$dst.secret.yaml" --sector-size "$sector" \
        ${BIFS_ENCRYPT_ARGS:-} "$src" "$dst"
      ;;
    *) vm_die "ENCRYPTOR must be cryptsetup or bifs, not $ENCRYPTOR" ;;
  esac
}

# decrypt_image SRC DST PASS: DST = the plaintext of the LUKS2 image SRC (whole mapping).
decrypt_image() {
  local src=$1 dst=$2 pass=$3
  case $DECRYPTOR in
    cryptsetup)
      printf '%s' "$pass" >"$dst.key"
      "$PY" "$HERE/vm/luks2_decrypt.py" "$src" "$dst.key" "$dst"
      rm -f "$dst.key"
      ;;
    bifs)
      write_secret "$dst.secret.yaml" "$pass" 512 argon2i
      # shellcheck disable=SC2086
      "$BIFS_BIN" decrypt --secret "$dst.secret.yaml" ${BIFS_DECRYPT_ARGS:-} "$src" "$dst"
      ;;
    *) vm_die "DECRYPTOR must be cryptsetup or bifs, not $DECRYPTOR" ;;
  esac
}

sha512() { sha512sum "$1" | cut -d' ' -f1; }
sha512_range() { # FILE OFFSET LENGTH
  dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none | sha512sum | cut -d' ' -f1
}
genpass() { head -c 15 /dev/urandom | base64 | tr -d '/+=\n'; }
flip_byte() { # FILE OFFSET
  "$PY" - "$1" "$2" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0x01]))
EOF
}

main() {
  local t0 t1
  t0=$(date +%s)
  vm_setup
  "$PY" -c 'import cryptography' 2>/dev/null ||
    vm_die "$PY with python3-cryptography is needed"
  vm_log "encryptor=$ENCRYPTOR decryptor=$DECRYPTOR bifs=${BIFS_BIN:-none} payload=${PAYLOAD_MIB}MiB"

  local W=$VM_CACHE/work/matrix
  rm -rf "$W"
  mkdir -p "$W"
  local payload=$W/payload.img payload2=$W/payload2.img plan=$W/plan results=$W/results
  head -c $((PAYLOAD_MIB << 20)) /dev/urandom >"$payload"
  head -c $((PAYLOAD_MIB << 20)) /dev/urandom >"$payload2"
  local want want2 plen
  want=$(sha512 "$payload")
  want2=$(sha512 "$payload2")
  plen=$(stat -c %s "$payload")
  : >"$plan"
  : >"$results"
  local images=("$payload:ro" "$payload2:ro") expected=() host_checks=() params=()

  local ks ss kdf name pass
  declare -A PASS
  for ks in 256 512; do
    for ss in 512 4096; do
      for kdf in argon2i pbkdf2; do
        name=$ks-$ss-$kdf
        pass=$(genpass)
        PASS[$name]=$pass
        make_encrypted_image "$payload" "$W/fwd-$name.img" "$ks" "$ss" "$kdf" "$pass"
        images+=("$W/fwd-$name.img:ro")
        echo "check fwd-$name fwd-$name $pass $want match" >>"$plan"
        expected+=("fwd-$name")
        if [ "$ENCRYPTOR" = bifs ]; then
          # bifs verify in the guest, activating the image with real dm-crypt.
          params+=(-f "$W/fwd-$name.img.secret.yaml")
          echo "verify vfy-$name fwd-$name fwd-$name.img.secret.yaml $want match" >>"$plan"
          expected+=("vfy-$name")
        fi
        truncate -s $((plen + LUKS_HDR)) "$W/rev-$name.img"
        images+=("$W/rev-$name.img")
        echo "format rev-$name rev-$name payload $ks $ss $kdf $pass $want" >>"$plan"
        expected+=("rev-$name" "rev-$name-host")
        host_checks+=("rev-$name")
      done
    done
  done

  # Longhorn: volume created from an encrypted backing image, larger than it.
  local gsrc=512-4096-argon2i
  cp --sparse=always "$W/fwd-$gsrc.img" "$W/grow.img"
  truncate -s $((plen + LUKS_HDR + plen + (1 << 20))) "$W/grow.img"
  images+=("$W/grow.img")
  echo "grow grow-longhorn grow ${PASS[$gsrc]} $plen $want payload2 $want2" >>"$plan"
  expected+=(grow-longhorn grow-longhorn-host)

  # Negative controls.
  cp --sparse=always "$W/fwd-512-512-pbkdf2.img" "$W/neg-flip.img"
  flip_byte "$W/neg-flip.img" $((LUKS_HDR + plen / 2 + 1234))
  images+=("$W/neg-flip.img:ro")
  echo "check neg-flip neg-flip ${PASS[512-512-pbkdf2]} $want mismatch" >>"$plan"
  echo "wrongpass neg-wrongpass fwd-256-512-argon2i ${PASS[256-512-argon2i]}x" >>"$plan"
  expected+=(neg-flip neg-wrongpass neg-flip-host)
  if [ "$ENCRYPTOR" = bifs ]; then
    echo "verify neg-vfy-flip neg-flip fwd-512-512-pbkdf2.img.secret.yaml $want mismatch" >>"$plan"
    write_secret "$W/wrongpass.secret.yaml" "${PASS[256-512-argon2i]}x" 256 argon2i
    params+=(-f "$W/wrongpass.secret.yaml")
    echo "verify neg-vfy-wrongpass fwd-256-512-argon2i wrongpass.secret.yaml $want mismatch" >>"$plan"
    expected+=(neg-vfy-flip neg-vfy-wrongpass)
  fi
  t1=$(date +%s)
  vm_log "prepared ${#images[@]} images in $((t1 - t0))s; booting guest"

  local rc=0
  vm_run_guest -f "$plan" "${params[@]}" "$VM_LIB_DIR/cases/dm-crypt-matrix.sh" "${images[@]}" >>"$results" || rc=$?
  if [ "$rc" != 0 ]; then
    echo "RESULT guest-boot FAIL guest did not finish (see console tail above)" >>"$results"
  fi

  # Host-side checks of what the guest wrote through dm-crypt.
  local got
  host_result() { echo "RESULT $1 $2 $3" >>"$results"; }
  if [ "$rc" = 0 ]; then
    for name in "${host_checks[@]}"; do
      if decrypt_image "$W/$name.img" "$W/$name.plain" "${PASS[${name#rev-}]}" 2>"$W/$name.err"; then
        got=$(sha512 "$W/$name.plain")
        if [ "$got" = "$want" ]; then
          host_result "$name-host" PASS "decryptor=$DECRYPTOR got=$got want=$want"
        else
          host_result "$name-host" FAIL "decryptor=$DECRYPTOR got=$got want=$want"
        fi
      else
        host_result "$name-host" FAIL "decrypt_image failed: $(tail -n 3 "$W/$name.err" | tr '\n' ' ')"
      fi
    done
    # grown image: [0,N) == payload, [N,2N) == payload2
    if decrypt_image "$W/grow.img" "$W/grow.plain" "${PASS[$gsrc]}" 2>"$W/grow.err"; then
      local h1 h2
      h1=$(sha512_range "$W/grow.plain" 0 "$plen")
      h2=$(sha512_range "$W/grow.plain" "$plen" "$plen")
      if [ "$h1" = "$want" ] && [ "$h2" = "$want2" ]; then
        host_result grow-longhorn-host PASS "head=$h1 want=$want past-end=$h2 want2=$want2"
      else
        host_result grow-longhorn-host FAIL "head=$h1 want=$want past-end=$h2 want2=$want2"
      fi
    else
      host_result grow-longhorn-host FAIL "decrypt_image failed: $(tail -n 3 "$W/grow.err" | tr '\n' ' ')"
    fi
    # negative control for the host decryptor
    cp --sparse=always "$W/rev-256-4096-pbkdf2.img" "$W/neg-flip-host.img"
    flip_byte "$W/neg-flip-host.img" $((LUKS_HDR + 4096 + 7))
    if decrypt_image "$W/neg-flip-host.img" "$W/neg-flip-host.plain" "${PASS[256-4096-pbkdf2]}" 2>/dev/null &&
      got=$(sha512 "$W/neg-flip-host.plain") && [ "$got" = "$want" ]; then
      host_result neg-flip-host FAIL "corruption NOT detected got=$got want=$want"
    else
      host_result neg-flip-host PASS "expected mismatch detected got=${got:-decrypt-failed} want=$want"
    fi
  fi

  # Every expected case must have reported.
  for name in "${expected[@]}"; do
    grep -q "^RESULT $name " "$results" || echo "RESULT $name FAIL no result reported" >>"$results"
  done
  cat "$results"
  local npass nfail
  npass=$(grep -c '^RESULT [^ ]* PASS' "$results" || true)
  nfail=$(grep -c '^RESULT [^ ]* FAIL' "$results" || true)
  vm_log "total $(($(date +%s) - t0))s"
  echo "$npass passed, $nfail failed"
  [ "$rc" = 0 ] || exit 2
  [ "$nfail" = 0 ] || exit 1
  # all green: drop the ~400 MB of images unless asked to keep them
  [ "${VM_KEEP_WORK:-0}" = 1 ] || rm -f "$W"/*.img "$W"/*.plain "$W"/*.yaml "$W"/*.err
}

main "$@"
