#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked 2>&1 | tail -n 3
cargo test --release --locked 2>&1
