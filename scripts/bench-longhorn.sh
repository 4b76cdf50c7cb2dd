#!/usr/bin/env bash
# A node as Longhorn's download client sees it (issue 19), timed on this machine:
#   - a Secret added while `bifs serve` runs: time until its encrypt view is prepared (/readyz);
#   - a fresh (image, Secret) pair with Longhorn's documented Secret (examples/longhorn:
#     argon2i, no cost keys, so bifs's fixed 1 GiB, 4 passes, 4 lanes): HEAD latency and
#     first-byte latency of the GET, on a server that just started, then once prepared;
#   - a restart with the state kept: time until ready (one key derivation per pair again);
#   - SIGTERM while a derivation runs: time until the process is gone.
#
#   scripts/bench-longhorn.sh            # prints Markdown table rows (bench.sh appends them)
#   BENCH_LH_MIB=256 scripts/bench-longhorn.sh
#
# Longhorn v1.7 gives the HEAD 4 s and a download about 55 s before its first byte
# (docs/longhorn.md). Numbers on a shared machine are noise: compare runs side by side.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIFS=${BIFS:-$ROOT/target/release/bifs}
MIB=${BENCH_LH_MIB:-64}
DIR=$(mktemp -d /tmp/bifs-bench-longhorn.XXXXXX)
PID=
log() { echo "bench-longhorn: $*" >&2; }
cleanup() {
  [[ -n $PID ]] && kill "$PID" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
[[ -x $BIFS ]] || (cd "$ROOT" && cargo build --release --bins -q)

mkdir -p "$DIR/store" "$DIR/secrets"
head -c $((MIB * 1048576)) /dev/urandom >"$DIR/store/disk.img"
DOCS=$ROOT/examples/longhorn/longhorn-crypto.yaml
VIEW=views/encrypt/longhorn-system/longhorn-crypto/disk.img
export BIFS_LOG=info

now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN {printf "%.2f", e-s}'; }
start_serve() { # start_serve STATE_DIR
  "$BIFS" serve --store "$DIR/store" --secrets "$DIR/secrets" --state "$1" --listen 127.0.0.1:0 \
    >"$DIR/serve.out" 2>>"$DIR/serve.log" &
  PID=$!
  for _ in $(seq 200); do grep -q "listening on" "$DIR/serve.out" 2>/dev/null && break; sleep 0.05; done
  URL=$(sed -n 's/.*listening on //p' "$DIR/serve.out")
  [[ -n $URL ]] || { log "bifs serve did not start"; cat "$DIR/serve.log" >&2; exit 1; }
}
stop_serve() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }
wait_ready() { # wait_ready: seconds until /readyz answers 200 (up to 10 minutes)
  local s; s=$(now)
  for _ in $(seq 6000); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz") == 200 ]] && { since "$s"; return; }
    sleep 0.1
  done
  log "not ready after 10 minutes"; curl -s "$URL/readyz" >&2; exit 1
}
head_secs() { curl -s -o /dev/null -I -w '%{time_total}' "$URL/$VIEW"; }
first_byte_secs() { curl -s -o /dev/null -w '%{time_starttransfer}' "$URL/$VIEW"; }

# 1. A Secret added at run time.
start_serve "$DIR/state-a"
wait_ready >/dev/null
log "adding Longhorn's documented Secret to a running server"
cp "$DOCS" "$DIR/secrets/.partial" && s=$(now) && mv "$DIR/secrets/.partial" "$DIR/secrets/longhorn-crypto.yaml"
# Until the first byte of the new view arrives (404 until the server has read the Secret; the
# GET then waits for the header). /readyz would say 200 at once: it was ready before.
for _ in $(seq 6000); do
  [[ $(curl -s -o /dev/null -r 0-0 -w '%{http_code}' "$URL/$VIEW") == 206 ]] && break
  sleep 0.1
done
ADDED=$(since "$s")
stop_serve

# 2. A fresh pair on a server that just started (new state: nothing persisted).
log "fresh (image, Secret) pair"
start_serve "$DIR/state-b"
HEAD_FRESH=$(head_secs)
FIRST_FRESH=$(first_byte_secs)
wait_ready >/dev/null
HEAD_READY=$(head_secs)
FIRST_READY=$(first_byte_secs)
stop_serve

# 3. A restart with the state kept.
log "restart with the state kept"
start_serve "$DIR/state-b"
RESTART=$(wait_ready)
stop_serve

# 4. SIGTERM during the derivation.
log "SIGTERM while the header is being prepared"
start_serve "$DIR/state-c"
sleep 1
grep -q "encrypt view prepared" "$DIR/serve.log" && log "(the derivation ended before the signal)"
s=$(now); kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; TERM_SECS=$(since "$s"); PID=

KDF="argon2i, 1 GiB, 4 passes, 4 lanes"
echo "| Longhorn: Secret added at run time → its encrypt view prepared ($KDF; ${MIB} MiB image) (s) | - | $ADDED | - | < 55 (first byte of a download) |"
echo "| Longhorn: HEAD of a fresh pair, server just started (s) | - | $HEAD_FRESH | - | < 4 (v1.7 HEAD deadline) |"
echo "| Longhorn: first byte of a fresh pair's GET, server just started (s) | - | $FIRST_FRESH | - | < 55 |"
echo "| Longhorn: HEAD / first byte once prepared (s) | - | $HEAD_READY / $FIRST_READY | - | < 4 |"
echo "| Longhorn: restart with the state kept → ready (s) | - | $RESTART | - | - |"
echo "| Longhorn: SIGTERM during the derivation → exited (s) | - | $TERM_SECS | - | < 2 |"
