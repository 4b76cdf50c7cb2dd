#!/bin/sh
# /init of the harness initramfs (busybox sh). Loads modules, names the virtio
# drives, runs /case.sh, prints "VMHARNESS DONE rc=N" and powers off.
export PATH=/bin:/sbin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mkdir -p /run/cryptsetup /run/lock /tmp /dev/disk /dev/mapper /dev/shm
mount -t tmpfs tmpfs /tmp
echo "VMHARNESS INIT kernel=$(uname -r)"

while read -r m; do
  if ! err=$(insmod "/lib/modules/$m" 2>&1); then
    echo "VMHARNESS WARN insmod $m: $err"
  fi
done </etc/modules.load

# shellcheck disable=SC1091
[ -f /params/env ] && . /params/env

ndrives() { set -- /sys/block/vd*; [ -e "$1" ] && echo $# || echo 0; }
n=${VM_NDRIVES:-0}
i=0
while [ "$(ndrives)" -lt "$n" ] && [ $i -lt 100 ]; do
  sleep 0.1
  i=$((i + 1))
done
for b in /sys/block/vd*; do
  [ -e "$b" ] || continue
  s=$(cat "$b/serial" 2>/dev/null)
  [ -n "$s" ] && ln -sf "/dev/${b##*/}" "/dev/disk/$s"
done
echo "VMHARNESS BOOTED drives=$(ndrives)/$n"

rc=0
sh /case.sh || rc=$?
sync
echo "VMHARNESS DONE rc=$rc"
poweroff -f
