"""Pulling from (and pushing to) a real registry on 127.0.0.1, as an unprivileged user.

The registry is Debian's docker-registry, started once per session; it is filled with images
built here (tests/support/oci.py) and copied in with skopeo: a Debian root as one gzip layer,
busybox-based images with a zstd layer and whiteouts, two images sharing a base layer, a
two-platform index, and a 200 MB incompressible layer for the kill-and-retry test.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import helpers
from tests.helpers import SandboxEnv
from tests.support import oci
from tests.support.registry import Registry, RegistryUnavailable

pytestmark = pytest.mark.needs("userns")

BIG_LAYER = 200 * 1000 * 1000
# These tests are about images; the container's network (slirp4netns) is tested elsewhere.
NO_NET = ("--network", "none")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    try:
        server = Registry(tmp_path_factory.mktemp("registry")).start()
    except RegistryUnavailable as e:
        helpers.missing("registry", str(e))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def layout(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory, busybox_tarball: Path
) -> oci.Layout:
    """The small test images, pushed: multi:1 (gzip base, plain and zstd layers with
    whiteouts), shared:1 (the same base + one layer), multiarch:1 (amd64 + arm64),
    corrupt:1 (its own layer, corrupted by one test), badgzip:1 (a layer whose digest is
    right but whose gzip stream is cut short, as a broken upload would leave it)."""
    out = oci.Layout(tmp_path_factory.mktemp("layout"))
    base = out.layer_from_file(busybox_tarball, "gzip")
    added = out.layer(
        oci.tar_bytes(
            [("etc/removed", b"x"), ("data", None), ("data/a", b"a"), ("data/keep", b"k")]
        ),
        "tar",
    )
    whiteouts = out.layer(
        oci.tar_bytes(
            [("etc/.wh.removed", b""), ("data", None), ("data/.wh..wh..opq", b""), ("data/b", b"b")]
        ),
        "zstd",
    )
    out.tag(out.image([base, added, whiteouts], config={"Cmd": ["ls", "/data"]}), "multi")
    extra = out.layer(oci.tar_bytes([("shared", b"yes\n")]), "gzip")
    out.tag(out.image([base, extra]), "shared")
    arches = [
        out.image([base, out.layer(oci.tar_bytes([("arch", f"{a}\n".encode())]))], architecture=a)
        for a in ("amd64", "arm64")
    ]
    out.tag(out.index(arches), "multiarch")
    own = out.layer(oci.tar_bytes([("corrupt", os.urandom(4096))]), "gzip")
    out.tag(out.image([base, own]), "corrupt")
    cut_tar = oci.tar_bytes([("cut", os.urandom(256 * 1024))])
    cut = oci.compress(cut_tar, "gzip")
    cut_layer = (
        out.blob(cut[: len(cut) // 2], oci.LAYER_TYPES["gzip"]),
        "sha256:" + hashlib.sha256(cut_tar).hexdigest(),
    )
    out.tag(out.image([base, cut_layer]), "badgzip")
    for tag, dest in (
        ("multi", "library/multi:1"),
        ("shared", "library/shared:1"),
        ("multiarch", "library/multiarch:1"),
        ("corrupt", "library/corrupt:1"),
        ("badgzip", "library/badgzip:1"),
    ):
        registry.push_layout(out.root, tag, dest)
    return out


@pytest.fixture(scope="session")
def debian_in_registry(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory, debian_tarball: Path
) -> str:
    """The Debian root as one gzip layer: library/debian:{bookworm,latest}, library/ubuntu."""
    out = oci.Layout(tmp_path_factory.mktemp("debian-layout"))
    descriptor = out.image(
        [out.layer_from_file(debian_tarball, "gzip")], config={"Cmd": ["/bin/bash"]}
    )
    out.tag(descriptor, "bookworm")
    for dest in ("library/debian:bookworm", "library/debian:latest", "library/ubuntu:latest"):
        registry.push_layout(out.root, "bookworm", dest)
    return f"{registry.host}/library/debian:bookworm"


@pytest.fixture(scope="session")
def big_in_registry(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory, busybox_tarball: Path
) -> str:
    """busybox + a 200 MB incompressible plain layer: library/big:1."""
    root = tmp_path_factory.mktemp("big")
    out = oci.Layout(root / "layout")
    tar = oci.random_tar(root / "big.tar", BIG_LAYER)
    base = out.layer_from_file(busybox_tarball, "gzip")
    out.tag(out.image([base, out.layer_from_file(tar, "tar")]), "big")
    tar.unlink()
    registry.push_layout(out.root, "big", "library/big:1")
    return f"{registry.host}/library/big:1"


def _ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def _files(env: SandboxEnv) -> dict[str, int]:
    """Every regular file under the store, with its size (what the disk holds)."""
    root = env.data_home / "sandbox" / "storage"
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                found[str(path.relative_to(root))] = path.stat().st_size
    return found


def test_pull_then_run_debian(sandbox: SandboxEnv, debian_in_registry: str) -> None:
    pulled = _ok(sandbox("pull", debian_in_registry, "--tls-verify=false", timeout=600))
    assert "Copying blob" in pulled.stderr  # plain progress lines without a terminal
    image_id = pulled.stdout.strip().splitlines()[-1]
    assert len(image_id) == 64
    done = _ok(sandbox("run", "--rm", *NO_NET, debian_in_registry, "cat", "/etc/debian_version"))
    assert done.stdout.strip().startswith("12")
    inspect = json.loads(_ok(sandbox("image", "inspect", debian_in_registry)).stdout)
    assert inspect[0]["Id"] == image_id
    assert inspect[0]["Config"]["Cmd"] == ["/bin/bash"]
    assert inspect[0]["RepoDigests"][0].startswith(debian_in_registry.split(":bookworm")[0] + "@")


def test_short_names_resolve_through_the_mirror(
    fresh_sandbox_env: SandboxEnv, registry: Registry, debian_in_registry: str
) -> None:
    config = fresh_sandbox_env.config_home / "sandbox"
    config.mkdir(parents=True)
    (config / "registries.yaml").write_text(
        "unqualified-search-registries: [docker.io]\n"
        "aliases: {ubuntu: docker.io/library/ubuntu}\n"
        "registries:\n"
        "  - prefix: docker.io\n"
        f'    mirrors: [{{location: "{registry.host}", insecure: true}}]\n'
        f'  - prefix: "{registry.host}"\n'
        "    insecure: true\n"
    )
    # stdin is /dev/null: a prompt would fail; none must be needed.
    for short in ("debian", "ubuntu"):
        done = _ok(
            fresh_sandbox_env.run(
                "run", "--rm", *NO_NET, short, "cat", "/etc/debian_version", timeout=600
            )
        )
        assert done.stdout.strip().startswith("12")
    names = _ok(fresh_sandbox_env.run("images", "--format", "json")).stdout
    assert "docker.io/library/debian:latest" in names
    assert "docker.io/library/ubuntu:latest" in names


def test_corrupt_blob_fails_with_digest_error_and_changes_nothing(
    fresh_sandbox_env: SandboxEnv, registry: Registry, layout: oci.Layout
) -> None:
    env = fresh_sandbox_env
    _ok(env.run("pull", "-q", f"{registry.host}/library/shared:1", "--tls-verify=false"))
    manifest = json.loads(
        next(
            (layout.blobs / m["digest"][7:]).read_bytes()
            for m in layout.manifests
            if m["annotations"]["org.opencontainers.image.ref.name"] == "corrupt"
        )
    )
    own = manifest["layers"][-1]["digest"]
    data = registry.blob_data(own)
    data.write_bytes(bytes(b ^ 0xFF for b in data.read_bytes()))
    before = _files(env)
    index_before = (env.data_home / "sandbox/storage/images.json").read_bytes()
    done = env.run("pull", f"{registry.host}/library/corrupt:1", "--tls-verify=false")
    assert done.returncode == 125, done.stderr
    assert "digest mismatch" in done.stderr and own in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert _files(env) == before
    assert (env.data_home / "sandbox/storage/images.json").read_bytes() == index_before


def test_corrupt_layer_data_with_the_right_digest_fails_cleanly(
    fresh_sandbox_env: SandboxEnv, registry: Registry, layout: oci.Layout
) -> None:
    """The layer streams into the unpacking process while it downloads: a gzip stream cut
    short (its blob digest is right) stops the pull with one line, and nothing of it stays."""
    env = fresh_sandbox_env
    _ok(env.run("pull", "-q", f"{registry.host}/library/shared:1", "--tls-verify=false"))
    before = _files(env)
    index_before = (env.data_home / "sandbox/storage/images.json").read_bytes()
    done = env.run("pull", f"{registry.host}/library/badgzip:1", "--tls-verify=false")
    assert done.returncode == 125, done.stderr
    assert "corrupt" in done.stderr and "ends too early" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert _files(env) == before
    assert (env.data_home / "sandbox/storage/images.json").read_bytes() == index_before
    assert not [
        p
        for p in (env.data_home / "sandbox/storage/layers").iterdir()
        if p.name.startswith(".tmp-")
    ]


def _pull_under_way(env: SandboxEnv, ref: str) -> subprocess.Popen[str]:
    """`sandbox pull REF` in a session of its own, returned once its first blob is coming."""
    argv = [sys.executable, "-m", "sandbox", "pull", ref, "--tls-verify=false"]
    process = subprocess.Popen(
        argv,
        env=env.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("Copying blob"):
            break
    return process


def test_pull_killed_midway_then_repeated_succeeds(
    fresh_sandbox_env: SandboxEnv, big_in_registry: str
) -> None:
    env = fresh_sandbox_env
    process = _pull_under_way(env, big_in_registry)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    downloads = env.data_home / "sandbox/storage/downloads"
    assert any(downloads.iterdir()), "the kill came after the download, not midway"
    images = _ok(env.run("images", "--format", "json")).stdout
    assert json.loads(images) == []
    _ok(env.run("pull", "-q", big_in_registry, "--tls-verify=false", timeout=600))
    done = _ok(env.run("run", "--rm", *NO_NET, big_in_registry, "wc", "-c", "/big.bin"))
    assert done.stdout.split()[0] == str(BIG_LAYER)


def test_pull_interrupted_midway_exits_130_and_leaves_nothing(
    fresh_sandbox_env: SandboxEnv, big_in_registry: str
) -> None:
    """Ctrl-C while layers download and unpack at once: the downloads are cancelled, every
    thread and the unpacking process end, and the store holds nothing of the pull."""
    env = fresh_sandbox_env
    process = _pull_under_way(env, big_in_registry)
    try:
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    storage = env.data_home / "sandbox/storage"
    assert not [
        p.name for p in (storage / "layers").iterdir() if not p.name.startswith(".lock-")
    ], err
    assert not list((storage / "blobs/sha256").iterdir())
    assert json.loads(_ok(env.run("images", "--format", "json")).stdout) == []


def test_shared_base_layer_is_stored_once_and_whiteouts_apply(
    fresh_sandbox_env: SandboxEnv, registry: Registry, layout: oci.Layout
) -> None:
    env = fresh_sandbox_env
    for name in ("multi:1", "shared:1"):
        _ok(env.run("pull", "-q", f"{registry.host}/library/{name}", "--tls-verify=false"))
    images = json.loads(_ok(env.run("images", "--format", "json")).stdout)
    layers = [set(i["Layers"]) for i in images]
    assert len(layers) == 2
    common = layers[0] & layers[1]
    assert len(common) == 1
    stored = [
        p.name
        for p in (env.data_home / "sandbox/storage/layers").iterdir()
        if not p.name.startswith(".")
    ]
    assert len(stored) == len(layers[0] | layers[1]) == 4
    assert sorted(stored).count(next(iter(common))[7:]) == 1
    multi = f"{registry.host}/library/multi:1"
    done = _ok(env.run("run", "--rm", *NO_NET, multi))  # Cmd from the image config: ls /data
    assert done.stdout.split() == ["b"]  # opaque directory: a and keep are hidden
    gone = env.run("run", "--rm", *NO_NET, multi, "cat", "/etc/removed")
    assert gone.returncode == 1 and "No such file" in gone.stderr


def test_platform_selection(sandbox: SandboxEnv, registry: Registry, layout: oci.Layout) -> None:
    name = f"{registry.host}/library/multiarch:1"
    _ok(sandbox("pull", "-q", "--platform", "linux/arm64", name, "--tls-verify=false"))
    assert _ok(sandbox("run", "--rm", *NO_NET, name, "cat", "/arch")).stdout == "arm64\n"
    _ok(sandbox("pull", "-q", name, "--tls-verify=false"))
    assert _ok(sandbox("run", "--rm", *NO_NET, name, "cat", "/arch")).stdout == "amd64\n"
    done = sandbox("pull", "--platform", "linux/s390x", name, "--tls-verify=false")
    assert done.returncode == 125
    assert "linux/s390x" in done.stderr and "linux/amd64, linux/arm64" in done.stderr


def test_unknown_image_names_what_was_tried(sandbox: SandboxEnv, registry: Registry) -> None:
    done = sandbox("pull", f"{registry.host}/library/nothing:1", "--tls-verify=false")
    assert done.returncode == 125
    assert "not found" in done.stderr and f"{registry.host}/library/nothing" in done.stderr
    assert "Traceback" not in done.stderr


def test_push_then_pull_back(
    sandbox: SandboxEnv, fresh_sandbox_env: SandboxEnv, registry: Registry, layout: oci.Layout
) -> None:
    source = f"{registry.host}/library/shared:1"
    pulled = _ok(sandbox("pull", "-q", source, "--tls-verify=false")).stdout.strip()
    dest = f"{registry.host}/pushed/shared:2"
    _ok(sandbox("push", source, dest, "--tls-verify=false"))
    back = _ok(fresh_sandbox_env.run("pull", "-q", dest, "--tls-verify=false")).stdout.strip()
    assert back == pulled
    done = _ok(fresh_sandbox_env.run("run", "--rm", *NO_NET, dest, "cat", "/shared"))
    assert done.stdout == "yes\n"
