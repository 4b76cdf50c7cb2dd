#!/bin/sh
# Minimal case: checks that dm-crypt, cryptsetup and the drives are there.
if grep -q crypt /proc/crypto && [ -e /dev/mapper/control ] && cryptsetup --version >/dev/null; then
  echo "RESULT smoke PASS $(cryptsetup --version) drives=$(cd /dev/disk && echo *)"
else
  echo "RESULT smoke FAIL mapper/control or cryptsetup missing"
fi
grep -E '^name *: (xts|__xts)' /proc/crypto | tr '\n' ' '; echo
ls /dev/disk /dev/mapper
cut -d' ' -f1 </proc/modules | tr '\n' ' '; echo
