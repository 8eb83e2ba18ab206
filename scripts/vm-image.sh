#!/usr/bin/env bash
# Build (once) the Debian bookworm VM image the cgroup tests boot: `bash scripts/vm-image.sh`.
#
# As root. Prints the image directory on stdout (disk.img, vmlinuz, initrd.img, wheels/). It is
# cached under /var/cache/sandbox-tests/vm/KEY, KEY a hash of the package list, the wheel list
# and this script, so changing any of them builds a new image. The VM has systemd, a lingering
# test user (uid 1001, subordinate ids) whose user manager gets cgroup v2 controllers delegated,
# and a oneshot unit that runs /mnt/host/tests/vm/inside.sh from the host's tree and powers off.
# Debian's cloud kernel has no 9p, so the tree comes in as a second disk (ext4 labelled sbhost,
# made with mke2fs -d by the host test) and the results go out as a tar on a third (/dev/vdc). PyPI is reachable from the host only: the Python dependencies go
# in as a wheelhouse built here.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SANDBOX_VM_CACHE:-/var/cache/sandbox-tests/vm}
packages=(systemd systemd-sysv dbus dbus-user-session libpam-systemd linux-image-cloud-amd64
          initramfs-tools udev kmod uidmap slirp4netns python3 python3-venv busybox-static
          procps gcc libc6-dev)  # gcc: the native monitor of detached containers (sandbox/libexec)
wheels=(jeepney "typer>=0.28,<0.29" rich pyyaml zstandard pytest)
key=$( { printf '%s\n' "${packages[@]}" "${wheels[@]}"; cat "${BASH_SOURCE[0]}"; } \
       | sha256sum | cut -c1-16)
out=$cache/$key
step() { echo "==> $*" >&2; }

if [[ -s $out/disk.img && -s $out/vmlinuz ]]; then
    step "reusing the VM image $out"
    echo "$out"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || { echo "error: building the VM image needs root" >&2; exit 1; }
mirror=${SANDBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
    m=$(awk '/^URIs:/ { print $2 }' /etc/apt/sources.list.d/debian.sources | grep -v -- -security \
        | head -1 || true)
    [[ -n $m ]] && mirror=$m
fi
tmp=$(mktemp -d /var/tmp/sandbox-vm.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
step "debootstrap bookworm with ${packages[*]} (about 2 minutes)"
include=$(IFS=,; echo "${packages[*]}")
debootstrap --variant=minbase --include="$include" bookworm "$root" "$mirror" >"$tmp/log" 2>&1 \
    || { tail -n 30 "$tmp/log" >&2; exit 1; }

step "configuring the guest: test user, lingering, delegation, the test unit"
echo sandbox-vm >"$root/etc/hostname"
chroot "$root" useradd -m -u 1001 -s /bin/bash sbtest
echo "sbtest:100000:65536" >"$root/etc/subuid"
echo "sbtest:100000:65536" >"$root/etc/subgid"
mkdir -p "$root/var/lib/systemd/linger"
touch "$root/var/lib/systemd/linger/sbtest"
mkdir -p "$root/etc/systemd/system/user@.service.d"
printf '[Service]\nDelegate=cpu cpuset io memory pids\n' \
    >"$root/etc/systemd/system/user@.service.d/delegate.conf"
printf 'LABEL=sbhost /mnt/host ext4 ro,nofail 0 0\n' >"$root/etc/fstab"
mkdir -p "$root/mnt/host"
cat >"$root/etc/systemd/system/sandbox-tests.service" <<'UNIT'
[Unit]
Description=sandbox cgroup tests
Wants=user@1001.service
After=user@1001.service mnt-host.mount
RequiresMountsFor=/mnt/host

[Service]
Type=oneshot
ExecStart=/bin/bash /mnt/host/tests/vm/inside.sh
ExecStopPost=/bin/systemctl --no-block poweroff
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=1200
UNIT
# The unit has no [Install] section; the host also names it on the kernel command line.
ln -sf /etc/systemd/system/sandbox-tests.service \
    "$root/etc/systemd/system/multi-user.target.wants/sandbox-tests.service"
chroot "$root" systemctl mask getty@tty1.service serial-getty@ttyS0.service \
    systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
step "the Python wheelhouse and a venv inside the guest"
mkdir -p "$root/opt/wheels"
python3 -m pip download -q -d "$root/opt/wheels" "${wheels[@]}" >&2
chroot "$root" python3 -m venv /opt/venv
chroot "$root" /opt/venv/bin/pip install -q --no-index --find-links /opt/wheels \
    "${wheels[@]}" >&2
mkdir -p "$tmp/out"
cp "$root"/boot/vmlinuz-* "$tmp/out/vmlinuz"
cp "$root"/boot/initrd.img-* "$tmp/out/initrd.img"
rm -rf "$root"/var/cache/apt/archives/*.deb
step "mke2fs -d: the root filesystem into disk.img"
mke2fs -q -t ext4 -L root -d "$root" "$tmp/out/disk.img" 3G
chmod -R a+rX "$tmp/out"
mkdir -p "$cache"
rm -rf "$out"
mv "$tmp/out" "$out"
# Images of older package lists or scripts are never used again.
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
step "VM image: $out ($(du -sh "$out" | cut -f1))"
echo "$out"
