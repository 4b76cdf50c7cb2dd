#!/usr/bin/env bash
# Coverage-guided fuzzing of bifs' parsers with libFuzzer, on the stable toolchain.
#
# cargo-fuzz needs nightly only for sanitizers; libFuzzer's coverage instrumentation is plain
# LLVM passes that stable rustc accepts (-Cpasses=sancov-module + -Cllvm-args), so this script
# passes the same flags cargo-fuzz would and builds fuzz/ as an ordinary crate. libfuzzer-sys
# compiles libFuzzer itself with the system C++ compiler. Overflow checks and debug assertions
# are on (fuzz/Cargo.toml), so an arithmetic wrap-around is a crash too.
#
#   scripts/fuzz.sh                      # every target FUZZ_SECONDS (default 15) each
#   FUZZ_SECONDS=600 scripts/fuzz.sh qcow2   # one target, longer, by hand
#
# Seeds: fuzz/seeds/TARGET (committed, small: real images cut to their headers, made by
# scripts/fuzz-seeds.sh with cryptsetup and qemu-img). Findings go to fuzz/corpus/TARGET
# (not committed) and crashes to fuzz/artifacts/TARGET/; any crash fails the script, which
# then prints how to reproduce it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH=${FUZZ_SECONDS:-15}
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(luks2 luks1 qcow2 manifest)

export RUSTFLAGS="${RUSTFLAGS:-} --cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cdebug-assertions -Coverflow-checks"
# A target dir of its own: instrumented objects must not mix with the normal build's.
export CARGO_TARGET_DIR="$ROOT/fuzz/target"
# An explicit --target (the host's) keeps RUSTFLAGS off build scripts and proc macros, which
# would otherwise be instrumented too and fail to link without libFuzzer (as cargo-fuzz does).
HOST=$(rustc -vV | sed -n 's/^host: //p')
BIN="$CARGO_TARGET_DIR/$HOST/release"
echo "== fuzz: building ${TARGETS[*]} (libFuzzer, coverage-instrumented, stable rustc)"
(cd fuzz && cargo build --release --locked --target "$HOST" $(printf -- '--bin %s ' "${TARGETS[@]}") 2>&1 | tail -n 2)

failed=0
summary=()
for t in "${TARGETS[@]}"; do
  corpus="fuzz/corpus/$t"; seeds="fuzz/seeds/$t"; artifacts="fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts" "$seeds"
  # Room for both LUKS header copies and one keyslot's material; qcow2 seeds are small.
  case $t in luks1|luks2) max_len=262144 ;; manifest) max_len=16384 ;; *) max_len=65536 ;; esac
  log=$(mktemp)
  # -rss_limit_mb: a hostile header that makes us allocate past 2 GiB is a finding.
  # -timeout: one input taking longer than 10 s is a hang, also a finding.
  set +e
  "$BIN/$t" "$corpus" "$seeds" \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -max_len="$max_len" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
  summary+=("$(printf '%-9s %10s executions, %6s coverage points, exit %s' "$t" "${execs:-?}" "${cov:-?}" "$rc")")
  if [[ $rc -ne 0 ]]; then
    failed=1
    echo "== fuzz: $t FAILED (exit $rc); last lines of its log:"
    tail -n 40 "$log"
    echo "   reproduce: $BIN/$t $artifacts/<crash-file>"
  fi
  rm -f "$log"
done
echo "== fuzz summary (${SECONDS_EACH}s per target)"
printf '  %s\n' "${summary[@]}"
if [[ $failed -ne 0 ]]; then
  echo "fuzz: 0 passed, ${#TARGETS[@]} failed"
  exit 1
fi
