#!/usr/bin/env bash
# The demo: builds bifs and runs its main job end to end on a small demo store.
# Makes an image and a Longhorn-style Secret, encrypts into LUKS2, checks the result with the
# real cryptsetup, decrypts it back and compares.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked 2>&1 | tail -n 1
BIFS=$PWD/target/release/bifs
DEMO=${DEMO_DIR:-$PWD/build/demo}
rm -rf "$DEMO" && mkdir -p "$DEMO" && cd "$DEMO"

step() { printf '\n== %s\n' "$*"; }

step "a 64 MiB disk image: 24 MiB of data, then a 40 MiB hole"
head -c $((24 << 20)) /dev/urandom > parrot.raw
truncate -s 64M parrot.raw

step "a Secret as Longhorn's docs write it (argon2i, cheap cost for the demo)"
umask 077
cat > longhorn-crypto.yaml <<'YAML'
apiVersion: v1
kind: Secret
metadata:
  name: longhorn-crypto
  namespace: longhorn-system
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

step "bifs encrypt: LUKS2, exactly 16 MiB larger"
"$BIFS" encrypt --secret longhorn-crypto.yaml parrot.raw parrot-encrypted.img
ls -l parrot.raw parrot-encrypted.img

step "the real cryptsetup reads our header and opens our keyslot"
cryptsetup luksDump parrot-encrypted.img | sed -n '1,/^Keyslots:/p'
printf '%s' "Simple passphrase" | cryptsetup open --test-passphrase --key-file - parrot-encrypted.img
echo "cryptsetup open --test-passphrase: OK"

step "bifs inspect"
"$BIFS" inspect parrot-encrypted.img | tail -n 3

step "bifs decrypt: the plaintext back, holes kept"
"$BIFS" decrypt --secret longhorn-crypto.yaml parrot-encrypted.img parrot-decrypted.raw
cmp parrot.raw parrot-decrypted.raw
sha512sum parrot.raw parrot-decrypted.raw | awk '{print substr($1,1,32)"…  "$2}'
echo "allocated: $(du -k parrot-decrypted.raw | cut -f1) KiB of $(( $(stat -c %s parrot-decrypted.raw) / 1024 )) KiB"

step "refusals"
if "$BIFS" encrypt --secret longhorn-crypto.yaml parrot-encrypted.img again.img; then
  echo "encrypting an encrypted image was not refused" >&2; exit 1
fi
echo "demo: all steps passed"
