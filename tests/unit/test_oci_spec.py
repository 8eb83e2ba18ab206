"""ContainerSpec -> config.json -> ContainerSpec round-trips; foreign configs are read or refused
by field name."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from sandbox import spec
from sandbox.errors import UsageError
from sandbox.oci import spec as oci
from sandbox.rootless.cgroups.resources import Resources
from sandbox.rootless.idmap import IdMapping, IdRange

MAPPING = IdMapping(
    (IdRange(0, 1000, 1), IdRange(1, 100000, 65536)),
    (IdRange(0, 1000, 1), IdRange(1, 100000, 65536)),
)
SINGLE = IdMapping((IdRange(0, 1000, 1),), (IdRange(0, 1000, 1),), single_reason="no subids")

# Each option with the values a combination may draw (None: leave the default).
CHOICES: dict[str, list[Any]] = {
    "tty": [False, True],
    "interactive": [False, True],
    "env": [(), ("A=1", "B=two words")],
    "workdir": [None, "/srv"],
    "user": [None, "1000:1000", "nobody", "0"],
    "hostname": [None, "box"],
    "tmpfs": [(), ("/scratch:size=1m",)],
    "read_only": [False, True],
    "init": [False, True],
    "network": [None, "none", "host"],
    "cap_add": [(), ("NET_ADMIN",), ("ALL",)],
    "cap_drop": [(), ("CHOWN", "KILL")],
    "privileged": [False, True],
    "security_opt": [(), ("no-new-privileges",), ("seccomp=unconfined",), ("mask=/opt/x",)],
    "ulimits": [(), ("nofile=100:200",), ("nproc=50", "core=0")],
    "resources": [
        Resources(),
        Resources(memory=1 << 28, memory_swap=-1, pids_limit=64),
        Resources(cpu_quota=50_000, cpu_weight=200, cpuset_cpus="0", io_weight=300),
    ],
    "restart": ["no", "on-failure:3"],
    "umask": [None, "077", "0002"],
}


def _combinations(count: int) -> list[dict[str, Any]]:
    rng = random.Random(11)
    combos = []
    for _ in range(count):
        combos.append({k: rng.choice(v) for k, v in CHOICES.items()})
    return combos


def _build(
    tmp_path: Path, combo: dict[str, Any], root: spec.Root, mapping: IdMapping
) -> spec.ContainerSpec:
    """Every generated combination is a valid one: spec.build refusing it fails the test."""
    options = spec.RunOptions(
        "img", ("sh", "-c", "echo hi"), volumes=(f"{tmp_path}:/data:ro",), **combo
    )
    return spec.build(
        options,
        container_id="c" * 64,
        name="web",
        image_config={"Env": ["IMG=1"], "StopSignal": "SIGINT"},
        image_id="d" * 64,
        root=root,
        mapping=mapping,
        etc_dir=tmp_path / "etc",
        cgroup_mount=bool(combo["resources"].limits()),
    )


def _round_trip(built: spec.ContainerSpec, tmp_path: Path) -> spec.ContainerSpec:
    text = json.dumps(oci.to_config(built))  # what is written is plain JSON
    ctx = oci.Context(bundle=tmp_path, container_id="x", mapping=SINGLE)
    return oci.from_config(json.loads(text), ctx)


@pytest.mark.parametrize("number", range(40))
def test_specs_from_many_option_combinations_round_trip(tmp_path: Path, number: int) -> None:
    combo = _combinations(40)[number]
    roots = [
        spec.Root(
            "overlay",
            tmp_path / "m",
            (tmp_path / "l1", tmp_path / "l2"),
            tmp_path / "u",
            tmp_path / "w",
        ),
        spec.Root("dir", tmp_path),
        spec.Root("vfs", tmp_path / "r", (tmp_path / "l1",)),
    ]
    built = _build(tmp_path, combo, roots[number % 3], MAPPING if number % 4 else SINGLE)
    again = _round_trip(built, tmp_path)
    assert again == built
    # The compiled filters are not compared by ==: they must be the same program.
    assert again.security.seccomp_filter == built.security.seccomp_filter


def test_config_fields_are_the_spec_shape(tmp_path: Path) -> None:
    combo = dict(
        _combinations(1)[0],
        user="1000:1000",
        tty=True,
        security_opt=(),
        privileged=False,
        cap_add=(),
        cap_drop=(),
        ulimits=("nofile=100:200",),
        network="none",
        umask="027",
    )
    built = _build(tmp_path, combo, spec.Root("dir", tmp_path), MAPPING)
    config = oci.to_config(built)
    assert config["ociVersion"].startswith("1.")
    process = config["process"]
    assert process["user"] == {"uid": 1000, "gid": 1000, "umask": 0o027}
    assert process["terminal"] is True
    assert "CAP_CHOWN" in process["capabilities"]["bounding"]
    assert process["capabilities"]["ambient"] == []
    assert {"type": "RLIMIT_NOFILE", "hard": 200, "soft": 100} in process["rlimits"]
    linux = config["linux"]
    assert {"type": "user"} in linux["namespaces"] and {"type": "network"} in linux["namespaces"]
    assert linux["uidMappings"][1] == {"containerID": 1, "hostID": 100000, "size": 65536}
    seccomp = linux["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO" and seccomp["defaultErrnoRet"] == 38
    assert "SCMP_ARCH_X86_64" in seccomp["architectures"]
    assert all("includes" not in rule for rule in seccomp["syscalls"])
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    assert any(m["destination"] == "/etc/hosts" for m in config["mounts"])


def _foreign(**linux: Any) -> dict[str, Any]:
    config = oci.template(rootless=True)
    config["linux"].update(linux)
    return config


def test_a_foreign_config_is_read(tmp_path: Path) -> None:
    config = _foreign(sysctl={"net.ipv4.ping_group_range": "0 0"})
    config["process"]["oomScoreAdj"] = 100
    config["process"]["user"]["additionalGids"] = [5, 6]
    config["linux"]["namespaces"].append({"type": "ipc", "path": "/proc/1/ns/ipc"})
    config["linux"]["namespaces"] = [
        n for n in config["linux"]["namespaces"] if not (n["type"] == "ipc" and "path" not in n)
    ]
    config["mounts"].append({"destination": "/m", "type": "cgroup", "source": "cgroup"})
    got = oci.from_config(config, oci.Context(tmp_path, "abc", SINGLE))
    assert got.root == spec.Root("dir", tmp_path / "rootfs", readonly=True)
    assert got.process.args == ("sh",) and got.process.user == "0:0"
    assert got.sysctl == (("net.ipv4.ping_group_range", "0 0"),)
    assert got.oom_score_adj == 100 and got.additional_gids == (5, 6)
    assert got.namespace_paths == (("ipc", "/proc/1/ns/ipc"),)
    assert "ipc" not in got.namespaces and "net" in got.namespaces
    assert got.mapping.uids == (IdRange(0, os.getuid(), 1),)
    assert got.mounts[-1].type == "bind" and got.mounts[-1].source == "/sys/fs/cgroup"
    assert got.security.no_new_privileges and got.security.seccomp == "unconfined"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), "linux.namespaces[7].type"),
        (
            lambda c: c["linux"].update(devices=[{"path": "/dev/sda", "type": "b"}]),
            "linux.devices[0]",
        ),
        (lambda c: c["linux"].update(intelRdt={"closID": "x"}), "linux.intelRdt"),
        (
            lambda c: c["process"]["capabilities"].update(ambient=["CAP_KILL"]),
            "process.capabilities.ambient",
        ),
        (
            lambda c: c["linux"].update(resources={"hugepageLimits": [{"pageSize": "2MB"}]}),
            "linux.resources.hugepageLimits",
        ),
        (lambda c: c["linux"].update(seccomp={"defaultAction": "SCMP_ACT_NOPE"}), "linux.seccomp"),
        (lambda c: c.update(ociVersion="0.9"), "ociVersion"),
        (lambda c: c["process"].update(args=[]), "process.args"),
        (
            lambda c: c["linux"]["namespaces"][-1].update(path="/proc/1/ns/user"),
            "linux.namespaces[6].path",
        ),
        (lambda c: c.update(hostname="h", linux={**c["linux"], "namespaces": []}), "hostname"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_field(
    tmp_path: Path, change: Any, field: str
) -> None:
    config = oci.template(rootless=True)
    change(config)
    with pytest.raises(UsageError) as error:
        oci.from_config(config, oci.Context(tmp_path, "abc", SINGLE))
    assert field in error.value.message


def test_a_foreign_seccomp_profile_is_compiled_and_kept(tmp_path: Path) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {
                "names": ["mkdir"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 13,
                "args": [{"index": 1, "value": 448, "op": "SCMP_CMP_EQ"}],
            }
        ],
    }
    config = _foreign(seccomp=profile)
    got = oci.from_config(config, oci.Context(tmp_path, "abc", SINGLE, seccomp_dir=tmp_path / "s"))
    assert got.security.seccomp_filter and got.security.seccomp_flags
    assert got.security.seccomp == str(tmp_path / "s" / "seccomp.json")
    out = oci.to_config(got)["linux"]["seccomp"]
    assert out["syscalls"] == profile["syscalls"] and out["flags"] == profile["flags"]
    assert out["defaultErrnoRet"] == 1


def test_template_is_readable(tmp_path: Path) -> None:
    for rootless in (True, False):
        got = oci.from_config(oci.template(rootless=rootless), oci.Context(tmp_path, "x", SINGLE))
        assert got.process.terminal and got.root.readonly
