#!/bin/bash
# Runs inside the VM (sandbox-tests.service, as root): waits for the test user's systemd
# manager, runs tests/vm/inside as that user with its user bus, and writes the JUnit report
# and the exit status as a tar onto the third disk (/dev/vdc) for the host.
set -u
uid=1001
mkdir -p /tmp/results
for _ in $(seq 300); do [[ -S /run/user/$uid/bus ]] && break; sleep 1; done
echo "SANDBOX-VM: user bus $(ls -l /run/user/$uid/bus 2>&1)"
echo "SANDBOX-VM: delegated $(cat /sys/fs/cgroup/user.slice/user-$uid.slice/user@$uid.service/cgroup.controllers 2>&1)"
# A small disk the test user owns, for tests/vm/inside/test_full_disk.py: ext4 on a loop
# device rather than a tmpfs, because it behaves as the disk a user fills does (blocks, inodes,
# delayed allocation, a device to name) and carries user.* xattrs, which the overlay
# (userxattr) and the layer unpacker need: tmpfs has them only from Linux 6.6 (the VM runs 6.1).
modprobe loop 2>/dev/null
small=/mnt/small
truncate -s 128M /var/tmp/small.img && mkfs.ext4 -q -F -m 0 -L sbsmall /var/tmp/small.img \
    && mkdir -p $small && mount -o loop /var/tmp/small.img $small \
    && chown $uid:$uid $small && chmod 0700 $small
echo "SANDBOX-VM: small disk $(df -h $small 2>&1 | tail -n 1)"
runuser -u sbtest -- env -i HOME=/home/sbtest USER=sbtest LOGNAME=sbtest \
    PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin XDG_RUNTIME_DIR=/run/user/$uid \
    DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/$uid/bus PYTHONPATH=/mnt/host \
    PYTHONDONTWRITEBYTECODE=1 CI=true TMPDIR=/tmp SANDBOX_VM_GUEST=1 \
    SANDBOX_TEST_SMALL_DISK=$small SANDBOX_TEST_REGISTRY_BINARY=/mnt/host/bin/docker-registry \
    SANDBOX_REQUIRE_FEATURES=userns,subids,newuidmap,busybox,cgroup2,native_monitor,registry \
    /opt/venv/bin/python -m pytest -p no:cacheprovider -rA -q --rootdir=/mnt/host \
    --junitxml=/tmp/junit.xml /mnt/host/tests/vm/inside 2>&1
status=$?
cp /tmp/junit.xml /tmp/results/junit.xml 2>/dev/null
echo "$status" >/tmp/results/status
tar -C /tmp/results -cf /dev/vdc . && sync
echo "SANDBOX-VM-EXIT $status"
