#!/usr/bin/env bash
# Quick start on a fresh Debian or Ubuntu machine: `bash scripts/quickstart.sh`.
#
#   1. installs the system packages sandbox uses (with sudo when not root);
#   2. gives the user subordinate ids and usable /dev/net/tun and /dev/fuse, if they lack them;
#   3. creates .venv in this repository with Debian's python3 and installs sandbox into it;
#   4. builds a busybox rootfs tarball from busybox-static and imports it as the image `busybox`;
#   5. runs a first container: sandbox run --rm busybox sh -c 'echo hello from $(hostname); ...'
#
# Run as root through sudo, the sandbox steps run as the user who called sudo (SUDO_USER):
# rootless containers are the point. Run as root directly, they run as root, which works with a
# single-id mapping (sandbox says so with a warning).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$repo/.venv
packages=(uidmap slirp4netns passt fuse-overlayfs busybox-static python3-venv
          gcc libc6-dev)  # gcc: the small native monitor of detached containers (sandbox/libexec)

step() { echo "==> $*"; }
die() { echo "error: $*" >&2; exit 1; }

# Who runs sandbox, and how we get root for the system steps.
run_user=$(id -un)
sudo=()
if [[ $(id -u) -eq 0 ]]; then
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then
        run_user=$SUDO_USER
    fi
elif command -v sudo >/dev/null; then
    sudo=(sudo)
fi

as_root() {
    if [[ $(id -u) -ne 0 && ${#sudo[@]} -eq 0 ]]; then
        die "this step needs root and sudo is not installed: run as root: $*"
    fi
    "${sudo[@]}" "$@"
}

as_user() {
    if [[ $run_user == "$(id -un)" ]]; then
        "$@"
        return
    fi
    # runuser keeps root's environment: give the user their own home and runtime directory.
    local uid home runtime
    uid=$(id -u "$run_user")
    home=$(getent passwd "$run_user" | cut -d: -f6)
    runtime=/run/user/$uid
    [[ -d $runtime ]] || runtime=""
    runuser -u "$run_user" -- env -u XDG_DATA_HOME -u XDG_CONFIG_HOME \
        HOME="$home" USER="$run_user" LOGNAME="$run_user" XDG_RUNTIME_DIR="$runtime" "$@"
}

command -v dpkg-query >/dev/null && command -v apt-get >/dev/null \
    || die "this quick start is for Debian and Ubuntu; elsewhere install: ${packages[*]}"

# 1. packages ------------------------------------------------------------------------------------
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' \
        || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    step "installing system packages: ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}"
else
    step "system packages already installed: ${packages[*]}"
fi

# 2. subordinate ids and devices --------------------------------------------------------------
if [[ $run_user != root ]]; then
    for kind in uid gid; do
        if ! grep -q "^$run_user:" "/etc/sub$kind" 2>/dev/null; then
            start=$(cat /etc/subuid /etc/subgid 2>/dev/null | awk -F: 'BEGIN { e = 100000 }
                    NF == 3 && $2 + $3 > e { e = $2 + $3 } END { print e }')
            step "granting $run_user subordinate ${kind}s $start-$((start + 65535)) in /etc/sub$kind"
            as_root usermod "--add-sub${kind}s" "$start-$((start + 65535))" "$run_user"
        fi
    done
fi
for dev in /dev/net/tun /dev/fuse; do
    if [[ -c $dev ]] && ! as_user test -r "$dev" -a -w "$dev"; then
        step "making $dev mode 0666, as mainstream distributions ship it (networking, fuse)"
        as_root chmod 0666 "$dev"
    fi
done

# 3. venv --------------------------------------------------------------------------------------
if [[ $run_user != "$(id -un)" ]] && ! as_user test -w "$repo"; then
    step "$run_user cannot write $repo; running the sandbox steps as $(id -un) instead"
    run_user=$(id -un)
fi
python=/usr/bin/python3
[[ -x $python ]] || python=$(command -v python3)
if [[ ! -x $venv/bin/python ]]; then
    step "creating the virtual environment $venv with $python"
    as_user "$python" -m venv "$venv"
else
    step "reusing the virtual environment $venv"
fi
step "installing sandbox into $venv"
(cd "$repo" && as_user "$venv/bin/python" -m pip install -q -e .)

# 4. image ---------------------------------------------------------------------------------------
work=$(as_user mktemp -d)
trap 'rm -rf "$work"' EXIT
step "building a busybox rootfs tarball from /bin/busybox (busybox-static)"
as_user "$venv/bin/python" "$repo/tests/support/images.py" busybox "$work/busybox.tar" >/dev/null
step "importing it as the image busybox: sandbox image import $work/busybox.tar busybox"
as_user "$venv/bin/sandbox" image import "$work/busybox.tar" busybox

# 5. first container -----------------------------------------------------------------------------
step "running a first container as $run_user:"
echo "    sandbox run --rm busybox sh -c 'echo hello from \$(hostname); cat /proc/self/uid_map'"
# shellcheck disable=SC2016  # $(hostname) is for the container's shell
as_user "$venv/bin/sandbox" run --rm busybox sh -c 'echo hello from $(hostname); cat /proc/self/uid_map'
step "done. Next: source $venv/bin/activate, then try: sandbox run --rm -it busybox sh"
