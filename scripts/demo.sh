#!/usr/bin/env bash
# The demo: builds bifs and runs its main job on a small demo store, end to end.
#   1. a store with a raw and a qcow2 image, and a Longhorn-style Secret;
#   2. `bifs mount` of the store; clones made with plain `cp` from the views;
#   3. the clones checked with the real cryptsetup (and bifs verify), then unmounted;
#   4. `bifs apply` of BackingImages into a Longhorn disk, and `bifs serve` of it: the views
#      over HTTP and the Backing Image page;
#   5. the same engine without FUSE: bifs encrypt / decrypt / inspect.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked 2>&1 | tail -n 1
BIFS=$PWD/target/release/bifs
DEMO=${DEMO_DIR:-$PWD/build/demo}
if mountpoint -q "$DEMO/mnt" 2>/dev/null; then fusermount3 -u "$DEMO/mnt" || fusermount3 -uz "$DEMO/mnt"; fi
rm -rf "$DEMO" && mkdir -p "$DEMO/store" "$DEMO/mnt" && cd "$DEMO"
export BIFS_LOG=${BIFS_LOG:-warn}
NS=longhorn-system SECRET=longhorn-crypto

step() { printf '\n== %s\n' "$*"; }
MOUNT_PID= SERVE_PID=
cleanup() {
  if [[ -n $MOUNT_PID ]] && kill -0 "$MOUNT_PID" 2>/dev/null; then
    "$BIFS" umount mnt 2>/dev/null || fusermount3 -uz mnt 2>/dev/null || true
    wait "$MOUNT_PID" 2>/dev/null || true
  fi
  if [[ -n $SERVE_PID ]]; then
    kill "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

step "a demo store: a 64 MiB raw disk (24 MiB data, then a hole) and a compressed qcow2 of it"
head -c $((24 << 20)) /dev/urandom > store/parrot.raw
truncate -s 64M store/parrot.raw
qemu-img convert -c -O qcow2 store/parrot.raw store/parrot.qcow2
ls -ls store

step "a Secret as Longhorn's docs write it (argon2i; a cheap cost for the demo)"
umask 077
cat > secrets.yaml <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: $SECRET
  namespace: $NS
stringData:
  CRYPTO_KEY_VALUE: "Simple passphrase"
  CRYPTO_KEY_PROVIDER: "secret"
  CRYPTO_KEY_CIPHER: "aes-xts-plain64"
  CRYPTO_KEY_HASH: "sha256"
  CRYPTO_KEY_SIZE: "256"
  CRYPTO_PBKDF: "argon2i"
  CRYPTO_PBKDF_MEMORY: "65536"
  CRYPTO_PBKDF_FORCE_ITERATIONS: "4"
YAML
umask 022
printf '%s' "Simple passphrase" > passphrase

step "bifs mount --store store --secrets secrets.yaml mnt"
"$BIFS" mount --store store --secrets secrets.yaml mnt &
MOUNT_PID=$!
for _ in $(seq 100); do mountpoint -q mnt && break; sleep 0.1; done
mountpoint -q mnt || { echo "the mount did not come up" >&2; exit 1; }
(cd mnt && find . | sort)

step "cp: an encrypted clone of the qcow2 (LUKS2 of its raw disk, no temporary raw copy)"
cp "mnt/encrypt/$NS/$SECRET/parrot.qcow2" parrot-encrypted.img
ls -l parrot-encrypted.img
cryptsetup luksDump parrot-encrypted.img | sed -n '1,/^Keyslots:/p' | grep -E 'Version|UUID|offset|cipher|sector'
cryptsetup open --test-passphrase --key-file passphrase parrot-encrypted.img
echo "cryptsetup open --test-passphrase: OK"
"$BIFS" verify --secret secrets.yaml parrot-encrypted.img --against store/parrot.qcow2 | tail -n 4

step "the encrypt view is stable: its SHA-512 now equals the copy's"
sha512sum "mnt/encrypt/$NS/$SECRET/parrot.qcow2" parrot-encrypted.img | awk '{print substr($1,1,32)"…  "$2}'

step "cp: a decrypted clone, from the encrypted image put into the store (holes kept)"
cp parrot-encrypted.img store/parrot-encrypted.img
# The view reports the stored (ciphertext) file's allocation, so ask cp to look for zeros.
cp --sparse=always "mnt/decrypt/$NS/$SECRET/parrot-encrypted.img" parrot-decrypted.raw
cmp parrot-decrypted.raw store/parrot.raw && echo "decrypted clone == parrot.raw"
echo "allocated: $(du -k parrot-decrypted.raw | cut -f1) KiB of $(( $(stat -c %s parrot-decrypted.raw) / 1024 )) KiB"

step "raw/ flattens the qcow2: same bytes as qemu-img convert"
qemu-img convert -O raw store/parrot.qcow2 qemu-flat.raw
cmp "mnt/raw/parrot.qcow2" qemu-flat.raw && echo "raw/parrot.qcow2 == qemu-img convert -O raw"

step "refusals: decrypting a plain image, a write"
cat "mnt/decrypt/$NS/$SECRET/parrot.raw" 2>&1 | head -n 1 || true
( : > "mnt/ignore/parrot.raw" ) 2>&1 | head -n 1 || true

step "bifs umount mnt"
"$BIFS" umount mnt
wait "$MOUNT_PID"
MOUNT_PID=
mountpoint -q mnt && { echo "still mounted" >&2; exit 1; } || echo "unmounted"

step "bifs apply: a Longhorn disk with the parrot and an encrypted clone of it"
mkdir -p longhorn/backing-images
cat > backing-images.yaml <<YAML
apiVersion: longhorn.io/v1beta2
kind: BackingImage
metadata:
  name: parrot
  namespace: $NS
spec:
  sourceType: download
  sourceParameters:
    url: file://$DEMO/store/parrot.raw
---
apiVersion: longhorn.io/v1beta2
kind: BackingImage
metadata:
  name: parrot-encrypted
  namespace: $NS
spec:
  sourceType: clone
  sourceParameters:
    backing-image: parrot
    encryption: encrypt
    secret: $SECRET
    secret-namespace: $NS
YAML
"$BIFS" apply -f backing-images.yaml --store longhorn --secrets secrets.yaml
"$BIFS" get --store longhorn

step "bifs serve --store longhorn --secrets secrets.yaml --listen 127.0.0.1:0 (the views over HTTP, the page)"
# Port 0: the kernel picks a free port; the first line on stdout says which.
"$BIFS" serve --store longhorn --secrets secrets.yaml --listen 127.0.0.1:0 > serve.out 2> serve.log &
SERVE_PID=$!
URL=
for _ in $(seq 100); do
  URL=$(sed -n 's|^bifs serve: listening on \(.*\)$|\1|p' serve.out | head -n 1)
  [[ -n $URL ]] && break
  kill -0 "$SERVE_PID" 2>/dev/null || break
  sleep 0.1
done
[[ -n $URL ]] || { echo "bifs serve did not start:" >&2; cat serve.log >&2; exit 1; }
URL=${URL%/}
ENC_URL="$URL/views/encrypt/$NS/$SECRET/parrot"
echo "the Backing Image page: $URL/"
echo "an encrypt view:        $ENC_URL"
SUM=$(curl -sfS "$ENC_URL.sha512")
echo "its .sha512:            ${SUM:0:32}…"
curl -sfS -o http-encrypted.img "$ENC_URL"
[[ $(sha512sum < http-encrypted.img | cut -d' ' -f1) == "$SUM" ]] \
  || { echo "the downloaded view does not match its .sha512" >&2; exit 1; }
echo "curl of the view matches its .sha512"
cryptsetup open --test-passphrase --key-file passphrase http-encrypted.img
echo "cryptsetup open --test-passphrase of the download: OK"
echo "(the server stops with the demo; to browse the page, run:"
echo "  $BIFS serve --store $DEMO/longhorn --secrets $DEMO/secrets.yaml )"

step "the same engine without FUSE: bifs encrypt / inspect / decrypt"
"$BIFS" encrypt --secret secrets.yaml store/parrot.raw one-shot.img
"$BIFS" inspect one-shot.img | tail -n 1
"$BIFS" decrypt --secret secrets.yaml one-shot.img one-shot.raw
cmp one-shot.raw store/parrot.raw && echo "one-shot round trip: identical"
if "$BIFS" encrypt --secret secrets.yaml one-shot.img again.img 2>/dev/null; then
  echo "encrypting an encrypted image was not refused" >&2; exit 1
fi
echo "encrypting an encrypted image: refused"
echo
echo "demo: all steps passed"
