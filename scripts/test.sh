#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test suite:
# the cargo tests (unit + real cryptsetup/qemu-img/FUSE interop), a bounded libFuzzer run of
# each parser (scripts/fuzz.sh) and the real dm-crypt round trips in a qemu guest (this
# machine's kernel has no device-mapper).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked 2>&1 | tail -n 3
cargo test --release --locked 2>&1
echo "== fuzzing (libFuzzer on stable; FUZZ_SECONDS=${FUZZ_SECONDS:-15} per target)"
FUZZ_SECONDS=${FUZZ_SECONDS:-15} bash scripts/fuzz.sh 2>&1
echo "== real dm-crypt round trips (qemu guest)"
BIFS_BIN="$PWD/target/release/bifs" bash scripts/dm-crypt-vm.sh 2>&1 | grep -v ' INFO \| WARN ' 
