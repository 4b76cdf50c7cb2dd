#!/usr/bin/env bash
# Boot one qemu guest and run a case script in it; see scripts/vm/README.md.
#   scripts/vm/run-guest.sh [-e KEY=VALUE]... [-f FILE]... CASE_SCRIPT [IMAGE[:ro]...]
#   scripts/vm/run-guest.sh --setup     # only install/fetch/build the cache
# Prints the guest's "RESULT <case> PASS|FAIL ..." lines; exits 0 when every
# RESULT is PASS, 1 if any is FAIL (or none was printed), 2 on boot failure/timeout.
set -euo pipefail
# shellcheck source=scripts/vm/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ "${1:-}" = --setup ]; then
  vm_setup
  vm_log "ready: kernel $VM_KVER, initramfs $VM_BASE_INITRD"
  exit 0
fi
vm_setup
out=$(mktemp)
trap 'rm -f "$out"' EXIT
rc=0
vm_run_guest "$@" >"$out" || rc=$?
cat "$out"
[ "$rc" = 0 ] || exit "$rc"
grep -q '^RESULT ' "$out" || { vm_log "no RESULT lines"; exit 1; }
if grep -q '^RESULT [^ ]* FAIL' "$out"; then exit 1; fi
exit 0
