#!/usr/bin/env bash
# Stand-in for the bifs CLI, implementing the two commands the harness calls,
# with host cryptsetup + luks2_decrypt.py. It documents the expected interface
# and tests the ENCRYPTOR=bifs plumbing:
#   bifs-stub.sh encrypt --secret SECRET.yaml [--sector-size N] SRC DST
#   bifs-stub.sh decrypt --secret SECRET.yaml SRC DST
# SECRET.yaml is a Kubernetes Secret with base64 `data:` keys CRYPTO_KEY_VALUE,
# CRYPTO_KEY_SIZE, CRYPTO_PBKDF, ... (Longhorn's names).
# BIFS_STUB_CORRUPT=1 makes encrypt flip a ciphertext byte (to see the harness fail).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

secret_get() { # FILE KEY
  awk -v k="$2" '$1 == k":" {print $2; exit}' "$1" | base64 -d
}

cmd=${1:?encrypt|decrypt}
shift
secret="" sector=512
while [ $# -gt 2 ]; do
  case $1 in
    --secret) secret=$2; shift 2 ;;
    --sector-size) sector=$2; shift 2 ;;
    *) echo "bifs-stub: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$secret" ] || [ $# != 2 ]; then
  echo "usage: $0 encrypt|decrypt --secret S.yaml [--sector-size N] SRC DST" >&2
  exit 2
fi
src=$1 dst=$2
key=$(mktemp)
trap 'rm -f "$key"' EXIT
secret_get "$secret" CRYPTO_KEY_VALUE >"$key"
case $cmd in
  encrypt)
    ks=$(secret_get "$secret" CRYPTO_KEY_SIZE)
    kdf=$(secret_get "$secret" CRYPTO_PBKDF)
    case $kdf in
      pbkdf2) kdfargs=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000) ;;
      *) kdfargs=(--pbkdf "$kdf" --pbkdf-memory 32 --pbkdf-force-iterations 4) ;;
    esac
    size=$(stat -c %s "$src")
    rm -f "$dst"
    truncate -s $((size + (32 << 20))) "$dst"
    dd if="$src" of="$dst" bs=1M conv=notrunc status=none
    cryptsetup reencrypt --encrypt --type luks2 -q --cipher aes-xts-plain64 --hash sha256 \
      --key-size "$ks" --sector-size "$sector" "${kdfargs[@]}" --reduce-device-size 32M \
      --key-file "$key" "$dst" >/dev/null
    truncate -s $((size + (16 << 20))) "$dst"
    if [ "${BIFS_STUB_CORRUPT:-0}" = 1 ]; then
      printf '\x55' | dd of="$dst" bs=1 seek=$(((16 << 20) + 100)) conv=notrunc status=none
    fi
    ;;
  decrypt)
    /usr/bin/python3 "$HERE/luks2_decrypt.py" "$src" "$key" "$dst"
    ;;
  *) echo "bifs-stub: unknown command $cmd" >&2; exit 2 ;;
esac
