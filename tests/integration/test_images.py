"""`sandbox image import`, `images`, `rmi` end to end, as an unprivileged user."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import pwd
from pathlib import Path

import pytest

from sandbox.rootless.idmap import SUBGID, SUBUID, read_subids
from tests.helpers import SandboxEnv, ok

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")


def _compressed(tarball: Path, kind: str, dest: Path) -> Path:
    data = tarball.read_bytes()
    if kind == "gz":
        dest.write_bytes(gzip.compress(data, compresslevel=1))
    elif kind == "xz":
        dest.write_bytes(lzma.compress(data, preset=0))
    elif kind == "zst":
        import zstandard

        dest.write_bytes(zstandard.ZstdCompressor(level=1).compress(data))
    else:
        dest.write_bytes(data)
    return dest


def _layers(env: SandboxEnv) -> list[Path]:
    layers = env.data_home / "sandbox" / "storage" / "layers"
    return (
        sorted(p for p in layers.iterdir() if not p.name.startswith(".")) if layers.exists() else []
    )


@pytest.mark.parametrize("kind", ["tar", "gz", "xz", "zst"])
def test_import_detects_compression_and_runs(
    fresh_sandbox_env: SandboxEnv, tmp_path: Path, busybox_tarball: Path, kind: str
) -> None:
    # A misleading file name: detection goes by the magic bytes.
    source = _compressed(busybox_tarball, kind, tmp_path / "rootfs.bin")
    image_id = ok(fresh_sandbox_env.run("image", "import", source, "bb:v1")).strip()
    assert len(image_id) == 64
    out = ok(fresh_sandbox_env.run("run", "--rm", "bb:v1", "sh", "-c", "echo imported"))
    assert out == "imported\n"


def test_images_lists_json_and_quiet(fresh_sandbox_env: SandboxEnv, busybox_tarball: Path) -> None:
    run = fresh_sandbox_env.run
    # `import` is podman's top-level form of `image import`.
    image_id = ok(run("import", busybox_tarball, "example/tool:1.0")).strip()
    table = ok(run("images"))
    assert "localhost/example/tool" in table and "1.0" in table and image_id[:12] in table
    assert ok(run("images", "-q")).split() == [image_id[:12]]
    listed = json.loads(ok(run("images", "--format", "json")))
    assert listed[0]["Id"] == image_id
    assert listed[0]["Names"] == ["localhost/example/tool:1.0"]
    assert listed[0]["Size"] > 0
    assert ok(run("run", "--rm", image_id[:12], "true")) == ""
    assert ok(run("run", "--rm", "example/tool:1.0", "true")) == ""


def test_owners_land_on_subordinate_ids(
    fresh_sandbox_env: SandboxEnv, busybox_tarball: Path
) -> None:
    """busybox's /etc/shadow is 0:42 in the tarball: inside it stays 0:42, on disk it is the
    user's uid and the 42nd subordinate gid."""
    ok(fresh_sandbox_env.run("image", "import", busybox_tarball, "bb"))
    inside = ok(fresh_sandbox_env.run("run", "--rm", "bb", "stat", "-c", "%u:%g", "/etc/shadow"))
    assert inside.strip() == "0:42"
    (layer,) = _layers(fresh_sandbox_env)
    st = os.lstat(layer / "diff" / "etc" / "shadow")
    name = pwd.getpwuid(os.getuid()).pw_name
    (subgid_start, _), *_ = read_subids(SUBGID, name, os.getuid())
    assert (st.st_uid, st.st_gid) == (os.getuid(), subgid_start + 41)
    assert read_subids(SUBUID, name, os.getuid())


def test_same_layer_is_stored_once_and_rmi_removes_it(
    fresh_sandbox_env: SandboxEnv, tmp_path: Path, busybox_tarball: Path
) -> None:
    run = fresh_sandbox_env.run
    ok(run("image", "import", busybox_tarball, "one"))
    ok(run("image", "import", _compressed(busybox_tarball, "gz", tmp_path / "b.tgz"), "two"))
    assert len(_layers(fresh_sandbox_env)) == 1
    ok(run("rmi", "one"))
    assert len(_layers(fresh_sandbox_env)) == 1
    assert ok(run("images", "-q")) != ""
    ok(run("rmi", "two"))
    assert _layers(fresh_sandbox_env) == []
    assert ok(run("images", "-q")) == ""
    missing = run("rmi", "two")
    assert missing.returncode == 125 and "Traceback" not in missing.stderr


def _storage_entries(env: SandboxEnv) -> list[str]:
    storage = env.data_home / "sandbox" / "storage"
    if not storage.exists():
        return []
    # Empty directories are the store's skeleton; files and .tmp- entries are content.
    return sorted(
        str(p.relative_to(storage))
        for p in storage.rglob("*")
        if p.name != "storage.lock" and (not p.is_dir() or ".tmp-" in p.name)
    )


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a tarball at all\n" * 10,
        gzip.compress(b"\0" * 10)[:-4] + b"\x01\x02",
        b"",
    ],
)
def test_bad_tarball_fails_cleanly_and_leaves_the_store_as_it_was(
    fresh_sandbox_env: SandboxEnv, tmp_path: Path, content: bytes
) -> None:
    before = _storage_entries(fresh_sandbox_env)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(content)
    done = fresh_sandbox_env.run("image", "import", bad, "bad")
    assert done.returncode == 125
    assert done.stderr.startswith("Error:") and "Traceback" not in done.stderr
    assert _storage_entries(fresh_sandbox_env) in (before, ["images.json"], [])
    assert ok(fresh_sandbox_env.run("images", "-q")) == ""


def test_truncated_tarball_fails_cleanly(
    fresh_sandbox_env: SandboxEnv, tmp_path: Path, busybox_tarball: Path
) -> None:
    data = gzip.compress(busybox_tarball.read_bytes(), compresslevel=1)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    done = fresh_sandbox_env.run("image", "import", cut, "cut")
    assert done.returncode == 125 and "Traceback" not in done.stderr
    assert _layers(fresh_sandbox_env) == []
    assert ok(fresh_sandbox_env.run("images", "-q")) == ""


def test_missing_file_and_bad_name(fresh_sandbox_env: SandboxEnv, busybox_tarball: Path) -> None:
    for args in (
        ("image", "import", "/no/such/file.tar", "x"),
        ("image", "import", busybox_tarball, "UPPER/case"),
        ("run", "--rm", "never-imported", "true"),
    ):
        done = fresh_sandbox_env.run(*args)
        assert done.returncode == 125, args
        assert done.stderr.startswith("Error:") and "Traceback" not in done.stderr, args


def test_unshare_sees_subordinate_owned_files_as_root(
    fresh_sandbox_env: SandboxEnv, busybox_tarball: Path
) -> None:
    ok(fresh_sandbox_env.run("image", "import", busybox_tarball, "bb"))
    (layer,) = _layers(fresh_sandbox_env)
    shadow = layer / "diff" / "etc" / "shadow"
    out = ok(
        fresh_sandbox_env.run(
            "unshare", "sh", "-c", f"cat /proc/self/uid_map; stat -c %u:%g {shadow}"
        )
    )
    lines = out.splitlines()
    assert lines[0].split() == ["0", str(os.getuid()), "1"]
    assert lines[-1] == "0:42"
    assert fresh_sandbox_env.run("unshare", "sh", "-c", "exit 7").returncode == 7
    assert fresh_sandbox_env.run("unshare", "no-such-program").returncode == 127


def test_debian_import_keeps_shadow_group(debian_image: str, sandbox_env: SandboxEnv) -> None:
    out = ok(sandbox_env.run("run", "--rm", debian_image, "stat", "-c", "%u:%g %a", "/etc/shadow"))
    assert out.split() == ["0:42", "640"]


def test_rmi_refuses_an_image_a_container_uses(
    fresh_sandbox_env: SandboxEnv, busybox_tarball: Path
) -> None:
    run = fresh_sandbox_env.run
    ok(run("image", "import", busybox_tarball, "used"))
    ok(run("run", "--name", "user-of-image", "used", "true"))
    refused = run("rmi", "used")
    assert refused.returncode == 125 and "user-of-image" in refused.stderr
    assert ok(run("images", "-q")) != ""
    ok(run("rmi", "-f", "used"))
    assert ok(run("images", "-q")) == "" and ok(run("ps", "-aq")) == ""
    assert _layers(fresh_sandbox_env) == []


def test_load_that_fails_leaves_the_store_as_it_was(
    fresh_sandbox_env: SandboxEnv, tmp_path: Path, busybox_tarball: Path
) -> None:
    """A load stores the layer blobs first, then unpacks them: when a layer does not unpack
    to the diff_id its config names, the blobs it stored go too. A good load followed by rmi
    leaves nothing either (no layer lock files)."""
    from tests.support import oci

    run = fresh_sandbox_env.run
    ok(run("image", "import", busybox_tarball, "busybox"))
    before = _storage_entries(fresh_sandbox_env)

    bad = oci.Layout(tmp_path / "bad")
    base = bad.layer_from_file(busybox_tarball, "gzip")
    extra, _ = bad.layer(oci.tar_bytes([("extra", b"x\n")]), "gzip")
    bad.tag(bad.image([base, (extra, "sha256:" + "0" * 64)]), "localhost/bad:1")
    done = run("load", "-i", bad.root)
    assert done.returncode == 125, (done.stdout, done.stderr)
    assert "does not unpack to the layer the config names" in done.stderr
    assert "Traceback" not in done.stderr
    assert _storage_entries(fresh_sandbox_env) == before

    good = oci.Layout(tmp_path / "good")
    good.tag(
        good.image(
            [good.layer_from_file(busybox_tarball, "gzip"), good.layer(oci.tar_bytes([("g", b"")]))]
        ),
        "localhost/good:1",
    )
    ok(run("load", "-i", good.root))
    ok(run("rmi", "localhost/good:1"))
    assert _storage_entries(fresh_sandbox_env) == before
