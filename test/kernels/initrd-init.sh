#!/bin/busybox sh
# /init of the test-kernels initrd: load the modules the root needs (the list and
# order were resolved on the host from modules.dep), mount /dev/vda, switch_root
# into the guest init the harness put in the root image.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
  echo "kspan-initrd: $*"
  echo o >/proc/sysrq-trigger
  sleep 60
}
# the harness's accelerator probe: the kernel came this far, that is enough
if grep -q kspan.probe /proc/cmdline; then
  echo "kspan-initrd: probe ok"
  echo o >/proc/sysrq-trigger
  sleep 60
fi
for m in $(cat /modules.load); do
  insmod "/modules/$m" 2>/dev/null || echo "kspan-initrd: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1))
  [ $i -gt 200 ] && fail "no /dev/vda"
  sleep 0.1
done
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount /dev/vda"
[ -x /newroot/kspan-kernels/guest-init.sh ] || fail "no /kspan-kernels/guest-init.sh in the root"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /kspan-kernels/guest-init.sh
