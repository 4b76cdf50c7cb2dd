#!/usr/bin/env bash
# Makes the fuzzers' seed corpora (fuzz/seeds/TARGET) from real images: LUKS2 and LUKS1 made by
# cryptsetup and qemu-img, qcow2 images made by qemu-img/qemu-io, and the example manifests.
# Images are cut to what the parsers read (headers, one keyslot's material), so the committed
# seeds stay small. Cheap KDF costs keep each fuzz execution fast. Rerun by hand to refresh.
set -euo pipefail
cd "$(dirname "$0")/.."
S=fuzz/seeds
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p $S/luks2 $S/luks1 $S/qcow2 $S/manifest
printf 'fuzz' >"$W/pass"

# LUKS2: pbkdf2 and argon2id keyslots, 256-bit keys (keyslot material is then 125 KiB).
for kdf in pbkdf2 argon2id; do
  truncate -s 20M "$W/l2-$kdf"
  extra=(--pbkdf-force-iterations 1000)
  [[ $kdf == argon2id ]] && extra=(--pbkdf-force-iterations 4 --pbkdf-memory 32 --pbkdf-parallel 1)
  cryptsetup luksFormat -q --type luks2 --pbkdf "$kdf" "${extra[@]}" --key-size 256 \
    --key-file "$W/pass" "$W/l2-$kdf"
  head -c 32768 "$W/l2-$kdf" >"$S/luks2/$kdf-headers"
  # Both header copies plus keyslot 0's area: the unlock path to the AF merge and digest.
  head -c $((32768 + 128000)) "$W/l2-$kdf" >"$S/luks2/$kdf-keyslot0"
done
# A 64 KiB metadata area (hdr_size 0x10000) and a label/subsystem.
truncate -s 20M "$W/l2-big"
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --luks2-metadata-size 64k --label fuzz --subsystem bifs --key-file "$W/pass" "$W/l2-big"
head -c $((2 * 65536)) "$W/l2-big" >"$S/luks2/metadata-64k"

# LUKS1: qemu-img's and cryptsetup's layouts.
# qemu times its PBKDF2 benchmark with thread CPU time; a round measured as 0 ms makes it give
# up ("Unable to get accurate CPU usage"), so retry.
for _ in 1 2 3 4 5; do
  qemu-img create -q -f luks --object secret,id=s,data=fuzz -o key-secret=s,iter-time=2000 \
    -o cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha256 "$W/l1-qemu" 4M && break
done
head -c $((4096 + 256000)) "$W/l1-qemu" >"$S/luks1/qemu"
truncate -s 8M "$W/l1-cs"
cryptsetup luksFormat -q --type luks1 --pbkdf-force-iterations 1000 --key-size 256 \
  --key-file "$W/pass" "$W/l1-cs"
head -c $((4096 + 128000)) "$W/l1-cs" >"$S/luks1/cryptsetup"

# qcow2: small clusters keep the images tiny; data, zero clusters, compression, v2, ext. L2.
mk() { # name, create options, qemu-io commands...
  local name=$1 opts=$2; shift 2
  qemu-img create -q -f qcow2 -o "$opts" "$W/$name" 1M
  for c in "$@"; do qemu-io -f qcow2 -c "$c" "$W/$name" >/dev/null; done
  cp "$W/$name" "$S/qcow2/$name"
}
mk v3-data cluster_size=512 "write -P 0xaa 0 4k" "write -P 0x55 300k 1k"
mk v3-zero cluster_size=512 "write -P 0xaa 0 4k" "write -z 1k 2k"
mk v2 compat=0.10,cluster_size=512 "write -P 0x11 8k 2k"
mk v3-zstd cluster_size=4096,compression_type=zstd "write -c -P 0x22 0 4k"
mk v3-deflate cluster_size=4096 "write -c -P 0x33 4k 4k"
mk v3-extl2 cluster_size=16k,extended_l2=on "write -P 0x44 0 2k"
# A backing reference (the fuzzer renames it; it resolves next to the fuzzed file).
qemu-img create -q -f qcow2 -o cluster_size=512 -b image.qcow2 -F qcow2 "$W/overlay" 1M 2>/dev/null \
  || qemu-img create -q -f qcow2 -o cluster_size=512 -u -b image.qcow2 -F qcow2 "$W/overlay" 1M
cp "$W/overlay" "$S/qcow2/backing-self"

# Manifests: the examples (Secrets and BackingImages).
for f in examples/longhorn/*.yaml; do cp "$f" "$S/manifest/$(basename "$f")"; done
cat >"$S/manifest/secret.yaml" <<'YAML'
apiVersion: v1
kind: Secret
metadata:
  name: longhorn-crypto
  namespace: longhorn-system
stringData:
  CRYPTO_KEY_VALUE: "fuzz passphrase"
  CRYPTO_KEY_PROVIDER: secret
  CRYPTO_KEY_CIPHER: aes-xts-plain64
  CRYPTO_KEY_HASH: sha256
  CRYPTO_KEY_SIZE: "256"
  CRYPTO_PBKDF: argon2i
data:
  CRYPTO_PBKDF_MEMORY: NjQ=
  CRYPTO_PBKDF_FORCE_ITERATIONS: "NA=="
---
apiVersion: longhorn.io/v1beta2
kind: BackingImage
metadata:
  name: img
  namespace: longhorn-system
spec:
  sourceType: clone
  checksum: ""
  secret: longhorn-crypto
  secretNamespace: longhorn-system
  sourceParameters:
    backing-image: parrot
    encryption: encrypt
YAML
du -sh $S/*
