#!/usr/bin/env bash
# Builds the bifs node image from Debian packages only (no container registry is involved):
# a minimal Debian root filesystem made by mmdebstrap from the release and mirror apt uses
# here, the runtime libraries of the release binary, fuse3 and ca-certificates, and the binary
# itself as the entrypoint (PID 1: `bifs mount`/`bifs serve` stop cleanly on SIGTERM).
#
#   scripts/image.sh [--tag NAME] [--binary PATH] [--save FILE.tar]
#
# Prints the image's name, size and build time. Needs root, mmdebstrap, buildah (setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=localhost/bifs-node:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
BINARY=""
SAVE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) TAG=$2; shift 2 ;;
    --binary) BINARY=$2; shift 2 ;;
    --save) SAVE=$2; shift 2 ;;
    *) echo "usage: $0 [--tag NAME] [--binary PATH] [--save FILE.tar]" >&2; exit 2 ;;
  esac
done
for tool in mmdebstrap buildah podman; do
  command -v "$tool" >/dev/null || { echo "image: $tool missing (bash scripts/setup.sh)" >&2; exit 1; }
done

start=$(date +%s)
if [[ -z "$BINARY" ]]; then
  cargo build --release --bin bifs
  BINARY=target/release/bifs
fi
[[ -x "$BINARY" ]] || { echo "image: $BINARY is not an executable" >&2; exit 1; }

# The Debian release and mirror of this machine (deb822 sources first, then sources.list).
. /etc/os-release
SUITE=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [[ -z "$MIRROR" ]]; then
  MIRROR=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' \
    /etc/apt/sources.list 2>/dev/null || true)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}

# The packages that own the binary's direct libraries (DT_NEEDED), as installed here.
libs=()
for soname in $(readelf -d "$BINARY" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
  path=$(ldconfig -p | awk -v s="$soname" '$1==s && /x86-64/ {print $NF; exit}')
  [[ -n "$path" ]] || { echo "image: $soname not found by ldconfig" >&2; exit 1; }
  pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null || dpkg -S "$path")
  libs+=("${pkg%%:*}")
done
PACKAGES=$(printf '%s\n' "${libs[@]}" fuse3 ca-certificates | sort -u | paste -sd, -)

work=$(mktemp -d /var/tmp/bifs-image.XXXXXX)
ctr=""
cleanup() {
  [[ -n "$ctr" ]] && buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "image: $SUITE from $MIRROR with $PACKAGES" >&2
# essential: Debian's Essential set (no apt: nothing is installed in the image later).
# merged-usr: /usr merged by mmdebstrap's hook (usr-is-merged), not by usrmerge, which would
# pull in perl (~50 MB). Documentation, manuals, translations and glibc's iconv modules are
# left out; copyright files stay.
mmdebstrap --quiet --variant=essential --include="$PACKAGES" \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --customize-hook='rm -rf "$1"/var/cache/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
  "$SUITE" "$work/rootfs.tar" "$MIRROR"

# Debug info is for the build machine; symbols stay for backtraces.
objcopy --strip-debug "$BINARY" "$work/bifs"

ctr=$(buildah from scratch)
buildah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
buildah copy --quiet --chmod 0755 "$ctr" "$work/bifs" /usr/bin/bifs >/dev/null
buildah config \
  --entrypoint '["/usr/bin/bifs"]' --cmd '["--help"]' \
  --stop-signal SIGTERM \
  --env BIFS_LOG=info \
  --label org.opencontainers.image.title=bifs-node \
  --label org.opencontainers.image.source=https://github.com/bifs/bifs \
  --label "org.opencontainers.image.base.name=debian:$SUITE (mmdebstrap)" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$TAG" >/dev/null
ctr=""

# The image runs: the binary finds its libraries in the Debian root filesystem.
podman run --rm --runtime runc --network none \
  --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=32768:32768 \
  "$TAG" --version >&2

if [[ -n "$SAVE" ]]; then
  rm -f "$SAVE"
  podman save --format oci-archive -o "$SAVE" "$TAG"
fi
size=$(podman image inspect --format '{{.Size}}' "$TAG")
echo "image: $TAG  size $((size / 1000000)) MB ($size bytes)  built in $(( $(date +%s) - start )) s"
