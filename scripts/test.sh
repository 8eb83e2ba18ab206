#!/usr/bin/env bash
# Set up and run sandbox's test suite: `bash scripts/test.sh [SESSION...] [-- PYTEST-ARGS...]`.
#
# SESSIONs are nox sessions (default: lint typecheck tests). The exit status is the tests'.
#
# As root (CI runs it so, through .ci/run), it prepares the machine and then runs everything as
# an unprivileged user, because rootless is the product and root proves nothing about it:
#   1. installs the Debian packages the tests use (apt-get update first), when any is missing;
#   2. makes /dev/net/tun and /dev/fuse mode 0666, as mainstream distributions ship them;
#   3. creates the test user (SANDBOX_TEST_USER, default sbtest) with subordinate id ranges,
#      and sbnosub without any (tests/nosubids runs as that user after the main run);
#   4. builds the test images that need root: a Debian bookworm rootfs tarball by debootstrap,
#      cached at /var/cache/sandbox-tests/debian-bookworm.tar (rebuilt only when missing);
#   5. stages a copy of this tree in /var/tmp/sandbox-ci/src, owned by the test user;
#   6. runs this script there as the test user, with a clean environment.
# As any other user, it tells what the machine lacks (the tests skip with the same reasons),
# creates .venv with Debian's python3, installs the project with its dev extras, and runs nox
# in that venv (nox --no-venv: no second environment, no second download).
#
# Environment: CI, SANDBOX_REQUIRE_FEATURES (features whose skips are failures; .ci/run sets
# it), SANDBOX_TEST_USER, SANDBOX_TEST_DEBIAN_TARBALL, SANDBOX_TEST_TIMEOUT (default 75m).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
test_user=${SANDBOX_TEST_USER:-sbtest}
nosub_user=sbnosub   # a user without subordinate ids, for tests/nosubids
cache_dir=/var/cache/sandbox-tests
debian_tarball=${SANDBOX_TEST_DEBIAN_TARBALL:-$cache_dir/debian-bookworm.tar}
stage=/var/tmp/sandbox-ci
apt_packages=(uidmap slirp4netns passt fuse-overlayfs busybox-static debootstrap docker-registry
              skopeo umoci podman runc bubblewrap libseccomp2 python3-venv zstd xz-utils iperf3
              hyperfine git qemu-system-x86 qemu-utils gcc libc6-dev)

step() { echo "==> $*"; }
warn() { echo "warning: $*" >&2; }

missing_packages() {
    local p
    for p in "${apt_packages[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' \
            || echo "$p"
    done
}

# --------------------------------------------------------------------------------------------
# root: prepare the machine, then run as the test user

install_packages() {
    local missing
    missing=$(missing_packages)
    if [[ -z $missing ]]; then
        step "all ${#apt_packages[@]} Debian packages the tests use are installed"
        return
    fi
    step "installing Debian packages:" $missing
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086  # one word per package
    apt-get install -y -q --no-install-recommends $missing </dev/null
}

open_devices() {
    local dev
    for dev in /dev/net/tun /dev/fuse; do
        if [[ -c $dev ]]; then
            step "making $dev mode 0666 (slirp4netns, pasta and fuse-overlayfs open it as a user)"
            chmod 0666 "$dev"
        else
            warn "$dev does not exist; the tests that need it will skip (or fail in CI)"
        fi
    done
}

create_test_user() {
    if ! id -u "$test_user" >/dev/null 2>&1; then
        step "creating the unprivileged test user $test_user (useradd -m)"
        useradd -m -s /bin/bash "$test_user"
    fi
    local file kind
    for file in /etc/subuid /etc/subgid; do
        kind=${file#/etc/sub}   # uid or gid
        if grep -q "^$test_user:" "$file" 2>/dev/null; then
            step "$test_user has subordinate ${kind}s: $(grep "^$test_user:" "$file" | head -1)"
        else
            local start
            start=$(free_subid_start)
            step "adding subordinate ${kind}s $start-$((start + 65535)) for $test_user to $file"
            usermod "--add-sub${kind}s" "$start-$((start + 65535))" "$test_user"
        fi
    done
}

free_subid_start() {
    # The first id above every range already granted in /etc/subuid and /etc/subgid.
    cat /etc/subuid /etc/subgid 2>/dev/null \
        | awk -F: 'BEGIN { end = 100000 } NF == 3 && $2 + $3 > end { end = $2 + $3 }
                   END { print end }'
}

debian_mirror() {
    # The first non-security Debian mirror apt uses here, else deb.debian.org.
    local mirror=""
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        mirror=$(awk '/^URIs:/ { print $2 }' /etc/apt/sources.list.d/debian.sources \
                 | grep -v -- '-security' | head -1 || true)
    fi
    if [[ -z $mirror && -r /etc/apt/sources.list ]]; then
        mirror=$(awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list)
    fi
    echo "${mirror:-http://deb.debian.org/debian}"
}

build_debian_tarball() {
    if [[ -s $debian_tarball ]]; then
        step "reusing the Debian rootfs tarball $debian_tarball"
        return
    fi
    local mirror tmp
    mirror=$(debian_mirror)
    tmp=$(mktemp -d /var/tmp/sandbox-debootstrap.XXXXXX)
    step "building a Debian bookworm minbase rootfs with debootstrap from $mirror (1-2 minutes)"
    if ! debootstrap --variant=minbase bookworm "$tmp/root" "$mirror" >"$tmp/log" 2>&1; then
        tail -n 30 "$tmp/log" >&2
        rm -rf "$tmp"
        echo "error: debootstrap failed (log above)" >&2
        return 1
    fi
    step "packing it into $debian_tarball (numeric owners; no device nodes, no apt archives)"
    mkdir -p "$(dirname "$debian_tarball")"
    tar --numeric-owner -C "$tmp/root" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        --exclude='./var/cache/apt/archives/*.deb' --exclude='./debootstrap' \
        -cf "$debian_tarball.tmp" .
    chmod 0644 "$debian_tarball.tmp"
    mv "$debian_tarball.tmp" "$debian_tarball"
    rm -rf "$tmp"
    step "Debian rootfs tarball: $(du -h "$debian_tarball" | cut -f1)"
}

build_vm_image() {
    # The systemd VM the cgroup tests boot (tests/vm); cached, keyed by its package list.
    if SANDBOX_TEST_VM_IMAGE=$(bash "$repo/scripts/vm-image.sh"); then
        export SANDBOX_TEST_VM_IMAGE
    else
        warn "the VM image could not be built; tests/vm will fail in CI"
    fi
}

create_nosubids_user() {
    if ! id -u "$nosub_user" >/dev/null 2>&1; then
        step "creating $nosub_user, a user without subordinate ids (useradd -m)"
        useradd -m -s /bin/bash "$nosub_user"
    fi
    # useradd grants ranges: take them away again, that is the point of this user.
    sed -i "/^$nosub_user:/d" /etc/subuid /etc/subgid
}

run_nosubids_tests() {
    # doctor fails and names the /etc/subuid line; run falls back to a single-id mapping.
    local home dir=$stage/nosubids
    local path_var=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    home=$(getent passwd "$nosub_user" | cut -d: -f6)
    install -d -o "$nosub_user" -m 0700 "$dir" "$dir/tmp" "$dir/run"
    step "running tests/nosubids as $nosub_user (no subordinate ids)"
    (cd "$stage/src" && timeout --kill-after=30 10m runuser -u "$nosub_user" -- env -i \
        "HOME=$home" "USER=$nosub_user" "LOGNAME=$nosub_user" "LANG=C.UTF-8" "PATH=$path_var" \
        "TMPDIR=$dir/tmp" "XDG_RUNTIME_DIR=$dir/run" "CI=${CI:-}" \
        "SANDBOX_REQUIRE_FEATURES=${SANDBOX_REQUIRE_FEATURES:-}" "SANDBOX_TEST_NOSUBIDS=1" \
        "$stage/src/.venv/bin/python" -m pytest -p no:cacheprovider -ra tests/nosubids </dev/null)
}

stage_tree() {
    # A copy the test user owns: the checkout may sit under a 0700 directory such as /root.
    step "staging the tree in $stage/src for $test_user"
    rm -rf "$stage"
    mkdir -p "$stage"
    chmod 0755 "$stage"
    install -d -o "$test_user" -g "$(id -gn "$test_user")" -m 0755 "$stage/src"
    install -d -o "$test_user" -g "$(id -gn "$test_user")" -m 0700 "$stage/tmp" "$stage/run"
    if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # Tracked and untracked-but-not-ignored files: what a commit of this tree would hold.
        (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
            | while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done \
            | tar --null -T - -cf -) | tar -C "$stage/src" -xf -
    else
        tar -C "$repo" --exclude=./.venv --exclude=./.nox --exclude=./.git \
            --exclude='__pycache__' --exclude='*.egg-info' -cf - . | tar -C "$stage/src" -xf -
    fi
    chown -R "$test_user:$(id -gn "$test_user")" "$stage/src"
}

run_as_test_user() {
    local home path_var=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    home=$(getent passwd "$test_user" | cut -d: -f6)
    local -a env=(
        "HOME=$home" "USER=$test_user" "LOGNAME=$test_user" "SHELL=/bin/bash" "LANG=C.UTF-8"
        "PATH=$path_var" "TMPDIR=$stage/tmp" "XDG_RUNTIME_DIR=$stage/run"
        "CI=${CI:-}" "SANDBOX_REQUIRE_FEATURES=${SANDBOX_REQUIRE_FEATURES:-}"
        "SANDBOX_TEST_DEBIAN_TARBALL=$debian_tarball" "SANDBOX_TEST_STAGED=1"
        "SANDBOX_TEST_VM_IMAGE=${SANDBOX_TEST_VM_IMAGE:-}"
    )
    # Pass through how this machine reaches PyPI (proxies, mirrors, certificates), if set.
    local var
    for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CERT PIP_DEFAULT_TIMEOUT \
               PIP_DISABLE_PIP_VERSION_CHECK http_proxy https_proxy no_proxy HTTP_PROXY \
               HTTPS_PROXY NO_PROXY; do
        [[ -n ${!var:-} ]] && env+=("$var=${!var}")
    done
    step "running the tests as $test_user: bash scripts/test.sh $*"
    local status=0
    # `timeout` makes sure a hung test ends in a report before CI's own limit kills everything.
    (cd "$stage/src" && timeout --kill-after=60 "${SANDBOX_TEST_TIMEOUT:-75m}" \
        runuser -u "$test_user" -- env -i "${env[@]}" bash scripts/test.sh "$@" </dev/null) \
        || status=$?
    if [[ $status -eq 124 ]]; then
        echo "error: the tests did not finish within ${SANDBOX_TEST_TIMEOUT:-75m}" >&2
    fi
    return "$status"
}

# --------------------------------------------------------------------------------------------
# any user: report what is missing, set up the venv, run nox

report_host() {
    if command -v dpkg-query >/dev/null; then
        local missing
        missing=$(missing_packages)
        if [[ -n $missing ]]; then
            warn "missing Debian packages (tests that need them will skip):" $missing
            warn "install them with: sudo apt-get install" $missing
        fi
    fi
    local user
    user=$(id -un)
    local file
    for file in /etc/subuid /etc/subgid; do
        grep -qE "^($user|$(id -u)):" "$file" 2>/dev/null \
            || warn "no subordinate ids for $user in $file (add '$user:100000:65536' as root)"
    done
    for file in /dev/net/tun /dev/fuse; do
        [[ -r $file && -w $file ]] || warn "$file is not usable by $user (as root: chmod 0666 $file)"
    done
    if [[ -r $debian_tarball ]]; then
        export SANDBOX_TEST_DEBIAN_TARBALL=$debian_tarball
    fi
    [[ -n ${SANDBOX_TEST_DEBIAN_TARBALL:-} ]] \
        || warn "no Debian rootfs tarball (run this script as root once to build $debian_tarball)"
}

python_for_venv() {
    # Debian's interpreter: the one every user can run (root's own may live under /root).
    if [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3; else command -v python3; fi
}

setup_venv() {
    local venv=$repo/.venv python
    python=$(python_for_venv)
    if [[ ${SANDBOX_TEST_STAGED:-} == 1 || ! -x $venv/bin/python ]]; then
        step "creating the virtual environment $venv with $python"
        rm -rf "$venv"
        "$python" -m venv "$venv"
    else
        step "reusing the virtual environment $venv"
    fi
    step "installing sandbox with its dev extras into $venv (pip install -e '.[dev]')"
    (cd "$repo" && "$venv/bin/python" -m pip install -q -e '.[dev]')
}

run_nox() {
    local -a sessions=() pytest_args=()
    while [[ $# -gt 0 ]]; do
        if [[ $1 == -- ]]; then shift; pytest_args=("$@"); break; fi
        sessions+=("$1"); shift
    done
    [[ ${#sessions[@]} -gt 0 ]] || sessions=(lint typecheck tests)
    step "environment: CI=${CI:-} SANDBOX_REQUIRE_FEATURES=${SANDBOX_REQUIRE_FEATURES:-}" \
         "SANDBOX_TEST_DEBIAN_TARBALL=${SANDBOX_TEST_DEBIAN_TARBALL:-}"
    step "running nox sessions ${sessions[*]} as $(id -un) in $repo"
    cd "$repo"
    export PATH="$repo/.venv/bin:$PATH" VIRTUAL_ENV="$repo/.venv"
    # --no-venv: the sessions run in .venv, which already holds everything they need.
    # nox runs every session and exits non-zero if any failed.
    local -a cmd=(nox --no-venv -s "${sessions[@]}")
    [[ ${#pytest_args[@]} -eq 0 ]] || cmd+=(-- "${pytest_args[@]}")
    "${cmd[@]}"
}

main() {
    if [[ $(id -u) -eq 0 ]]; then
        install_packages
        open_devices
        create_test_user
        create_nosubids_user
        build_debian_tarball
        build_vm_image
        stage_tree
        local status=0
        run_as_test_user "$@" || status=$?
        # With the default sessions (or "tests"), the suite for a user without subids too.
        if [[ $# -eq 0 || " $* " == *" tests "* ]]; then
            run_nosubids_tests || [[ $status -ne 0 ]] || status=1
        fi
        return "$status"
    else
        report_host
        setup_venv
        run_nox "$@"
    fi
}

main "$@"
