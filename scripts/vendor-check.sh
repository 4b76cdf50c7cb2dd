#!/usr/bin/env bash
# vendor/cpufeatures must be exactly crates.io's cpufeatures 0.3.1 with vendor/cpufeatures.diff
# applied (vendor/README.md says why it is patched). Downloads the upstream crate with cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSION=0.3.1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/probe/src"
cat > "$work/probe/Cargo.toml" <<TOML
[package]
name = "vendor-probe"
version = "0.0.0"
edition = "2021"
[dependencies]
cpufeatures = "=$VERSION"
TOML
echo 'fn main() {}' > "$work/probe/src/main.rs"
(cd "$work/probe" && cargo fetch -q)
upstream=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cpufeatures-$VERSION | head -1)
mkdir "$work/patched"
cp -r "$upstream/src" "$upstream/Cargo.toml" "$upstream/LICENSE-APACHE" "$upstream/LICENSE-MIT" "$work/patched/"
(cd "$work/patched" && git apply --unsafe-paths -p1 "$ROOT/vendor/cpufeatures.diff")
if diff -r "$work/patched" vendor/cpufeatures; then
    echo "vendor-check: vendor/cpufeatures = cpufeatures $VERSION + vendor/cpufeatures.diff"
else
    echo "vendor-check: vendor/cpufeatures differs from cpufeatures $VERSION + vendor/cpufeatures.diff (above)" >&2
    exit 1
fi
