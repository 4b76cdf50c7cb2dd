#!/bin/sh
# Guest side of scripts/dm-crypt-vm.sh (busybox sh). Reads /params/plan, one
# step per line; disks are /dev/disk/<serial> (the image basename):
#   check NAME DISK PASS WANT match|mismatch
#       open read-only; PASS iff sha512(mapping) == WANT (match) or != WANT (mismatch)
#   wrongpass NAME DISK PASS
#       PASS iff opening with PASS fails
#   format NAME DISK SRCDISK KEYSIZE SECTOR KDF PASS WANT
#       luksFormat DISK, open, dd SRCDISK into the mapping, check, close
#   verify NAME DISK SECRET WANT match|mismatch
#       `bifs verify` with real dm-crypt (/params/SECRET); PASS iff it succeeds and reports
#       plaintext SHA-512 WANT (match), or iff it fails (mismatch)
#   grow NAME DISK PASS N WANT SRCDISK WANT2
#       DISK was grown past its image; open rw: first N bytes == WANT; write
#       SRCDISK at byte N; close; reopen ro: first N == WANT, [N, N+len) == WANT2
# Prints "RESULT NAME PASS|FAIL details" per step.

result() { echo "RESULT $1 $2 $3 uptime=$(cut -d' ' -f1 /proc/uptime)"; }
sha() { sha512sum | cut -d' ' -f1; }
keyfile() { printf '%s' "$1" >/tmp/key; }
kdf_args() {
  case $1 in
    pbkdf2) echo "--pbkdf pbkdf2 --pbkdf-force-iterations 1000" ;;
    argon2i | argon2id) echo "--pbkdf $1 --pbkdf-memory 32 --pbkdf-force-iterations 4" ;;
    *) echo "--pbkdf $1" ;;
  esac
}
closeall() { cryptsetup close m >/dev/null 2>&1 || true; }

step_check() { # NAME DISK PASS WANT EXPECT
  keyfile "$3"
  if ! err=$(cryptsetup open --readonly --key-file /tmp/key "/dev/disk/$2" m 2>&1); then
    result "$1" FAIL "open failed: $err"
    return
  fi
  size=$(blockdev --getsize64 /dev/mapper/m)
  got=$(sha </dev/mapper/m)
  closeall
  if [ "$5" = mismatch ]; then
    if [ "$got" != "$4" ]; then
      result "$1" PASS "expected mismatch detected size=$size got=$got want=$4"
    else
      result "$1" FAIL "corruption NOT detected size=$size got=$got want=$4"
    fi
  elif [ "$got" = "$4" ]; then
    result "$1" PASS "size=$size got=$got want=$4"
  else
    result "$1" FAIL "size=$size got=$got want=$4"
  fi
}

step_verify() { # NAME DISK SECRET WANT EXPECT
  out=$(/bin/bifs --log warn verify --method dm-crypt --secret "/params/$3" --against /dev/disk/payload "/dev/disk/$2" 2>&1)
  rc=$?
  got=$(echo "$out" | sed -n 's/^plaintext SHA-512: //p')
  method=$(echo "$out" | sed -n 's/^method: \([a-z-]*\).*/\1/p')
  if [ "$5" = mismatch ]; then
    if [ $rc -ne 0 ]; then
      result "$1" PASS "bifs verify failed as expected: $(echo "$out" | tail -n 1)"
    else
      result "$1" FAIL "bifs verify accepted a corrupted image got=$got"
    fi
  elif [ $rc -eq 0 ] && [ "$got" = "$4" ]; then
    result "$1" PASS "bifs verify method=$method got=$got want=$4"
  else
    result "$1" FAIL "bifs verify rc=$rc method=$method got=$got want=$4 $(echo "$out" | tail -n 3 | tr '\n' ' ')"
  fi
}

step_wrongpass() { # NAME DISK PASS
  keyfile "$3"
  if cryptsetup open --readonly --key-file /tmp/key "/dev/disk/$2" m >/dev/null 2>&1; then
    closeall
    result "$1" FAIL "open with a wrong passphrase succeeded"
  else
    result "$1" PASS "open with a wrong passphrase failed as expected"
  fi
}

step_format() { # NAME DISK SRCDISK KEYSIZE SECTOR KDF PASS WANT
  keyfile "$7"
  # shellcheck disable=SC2046
  if ! err=$(cryptsetup luksFormat -q --type luks2 --cipher aes-xts-plain64 \
    --hash sha256 --key-size "$4" --sector-size "$5" $(kdf_args "$6") \
    --key-file /tmp/key "/dev/disk/$2" 2>&1); then
    result "$1" FAIL "luksFormat failed: $err"
    return
  fi
  if ! err=$(cryptsetup open --key-file /tmp/key "/dev/disk/$2" m 2>&1); then
    result "$1" FAIL "open failed: $err"
    return
  fi
  size=$(blockdev --getsize64 /dev/mapper/m)
  dd if="/dev/disk/$3" of=/dev/mapper/m bs=65536 conv=fsync 2>/dev/null
  got=$(sha </dev/mapper/m)
  closeall
  if [ "$got" = "$8" ]; then
    result "$1" PASS "guest-written size=$size got=$got want=$8"
  else
    result "$1" FAIL "guest-written size=$size got=$got want=$8"
  fi
}

step_grow() { # NAME DISK PASS N WANT SRCDISK WANT2
  name=$1 disk=$2 n=$4 want=$5 src=$6 want2=$7
  keyfile "$3"
  if ! err=$(cryptsetup open --key-file /tmp/key "/dev/disk/$disk" m 2>&1); then
    result "$name" FAIL "open failed: $err"
    return
  fi
  size=$(blockdev --getsize64 /dev/mapper/m)
  len=$(blockdev --getsize64 "/dev/disk/$src")
  bs=4096
  head1=$(head -c "$n" /dev/mapper/m | sha)
  if [ $((n + len)) -gt "$size" ]; then
    closeall
    result "$name" FAIL "mapping too small: size=$size need=$((n + len))"
    return
  fi
  dd if="/dev/disk/$src" of=/dev/mapper/m bs=$bs seek=$((n / bs)) conv=notrunc,fsync 2>/dev/null
  closeall
  if ! err=$(cryptsetup open --readonly --key-file /tmp/key "/dev/disk/$disk" m 2>&1); then
    result "$name" FAIL "reopen failed: $err"
    return
  fi
  head2=$(head -c "$n" /dev/mapper/m | sha)
  tail2=$(dd if=/dev/mapper/m bs=$bs skip=$((n / bs)) count=$((len / bs)) 2>/dev/null | sha)
  closeall
  if [ "$head1" = "$want" ] && [ "$head2" = "$want" ] && [ "$tail2" = "$want2" ]; then
    result "$name" PASS "size=$size head=$head2 want=$want past-end=$tail2 want2=$want2"
  else
    result "$name" FAIL "size=$size head-before=$head1 head-after=$head2 want=$want past-end=$tail2 want2=$want2"
  fi
}

while read -r op a1 a2 a3 a4 a5 a6 a7 a8 <&3; do
  case $op in
    '' | '#'*) ;;
    check) step_check "$a1" "$a2" "$a3" "$a4" "$a5" ;;
    wrongpass) step_wrongpass "$a1" "$a2" "$a3" ;;
    verify) step_verify "$a1" "$a2" "$a3" "$a4" "$a5" ;;
    format) step_format "$a1" "$a2" "$a3" "$a4" "$a5" "$a6" "$a7" "$a8" ;;
    grow) step_grow "$a1" "$a2" "$a3" "$a4" "$a5" "$a6" "$a7" ;;
    *) result "$a1" FAIL "unknown plan step $op" ;;
  esac
done 3</params/plan
