#!/bin/busybox sh
# PID 1 of a vmtest guest (see xtask/src/vmtest/): mount the host's root,
# read-only over virtiofs, under a tmpfs overlay so the tests can write;
# mount the kernel filesystems lagtrace needs; run the plan; power off.
# Every line the host acts on starts with "vmtest: ".
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "vmtest: booted $(uname -r)"
for m in $(cat /modules/order); do
    insmod "/modules/$m.ko" || echo "vmtest: insmod $m failed"
done
fail() {
    echo "vmtest: guest-error $*"
    reboot -f
}
mount -t virtiofs -o ro host /lower || fail "cannot mount the host root over virtiofs"
mount -t tmpfs -o size=4g rw /rw || fail "tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /host ||
    fail "cannot mount the overlay"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs shm /host/dev/shm
# No tmpfs over /tmp: the overlay is writable already, and a checkout under
# the host's /tmp (a CI clone) must stay visible to the guest.
mount -t tracefs tracefs /host/sys/kernel/tracing 2>/dev/null ||
    mount -t tracefs tracefs /host/sys/kernel/debug/tracing
mount -t debugfs debugfs /host/sys/kernel/debug
mount -t bpf bpf /host/sys/fs/bpf
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2>/dev/null
ip link set lo up
hostname vmtest
# The host writes the plan's command line into the kernel command line.
cmd=$(sed -n 's/.*vmtest.cmd=\([^ ]*\).*/\1/p' /proc/cmdline)
plan=$(sed -n 's/.*vmtest.plan=\([^ ]*\).*/\1/p' /proc/cmdline)
chroot /host /bin/bash "$cmd" "$plan"
echo "vmtest: guest-done rc=$?"
reboot -f
