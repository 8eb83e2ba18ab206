"""kube generate: Pods and Jobs that validate against the Kubernetes API schema; kube play's
reading of a Pod into run options (and its refusals)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # the test extra: the Kubernetes API schema
import pytest

from sandbox import kube, project, spec
from sandbox.errors import ConfigError
from sandbox.rootless import cgroups
from sandbox.rootless.idmap import IdMapping, IdRange

REPO = Path(__file__).resolve().parents[2]
MAPPING = IdMapping((IdRange(0, 1000, 1),), (IdRange(0, 1000, 1),), single_reason="test")
SECCOMP = str(REPO / "examples" / "seccomp" / "deny-network.json")


def validate(manifest: dict[str, Any]) -> None:
    """Strict: unknown fields are errors too (the schema of the newest Kubernetes it knows)."""
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


def built(tmp_path: Path, options: spec.RunOptions) -> spec.ContainerSpec:
    return spec.build(
        options,
        container_id="ab" * 32,
        name="Web_1",
        image_config={"Cmd": ["httpd", "-f"], "Env": ["PATH=/bin"]},
        image_id=None,
        root=spec.Root("dir", tmp_path),
        mapping=MAPPING,
        etc_dir=tmp_path / "etc",
        volumes_root=tmp_path / "volumes",
    )


def test_generated_pod_validates_and_says_everything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    options = spec.RunOptions(
        "busybox",
        ("httpd", "-f", "-p", "8080"),
        env=("GREETING=hi",),
        workdir="/srv",
        user="1000:1000",
        volumes=(f"{data}:/data:ro", "cache:/cache"),
        tmpfs=("/scratch",),
        publish=("18080:8080",),
        resources=cgroups.from_options(memory="64m", cpus="1.5"),
        cap_add=("NET_ADMIN",),
        cap_drop=("CHOWN",),
        security_opt=(f"seccomp={SECCOMP}", "no-new-privileges"),
        read_only=True,
    )
    pod = kube.generate_pod(built(tmp_path, options), volumes_root=tmp_path / "volumes")
    validate(pod)
    assert pod["metadata"]["name"] == "web-1"
    c = pod["spec"]["containers"][0]
    assert c["image"] == "busybox" and c["command"] == ["httpd", "-f", "-p", "8080"]
    assert {"name": "GREETING", "value": "hi"} in c["env"]
    assert not any(e["name"] in ("HOSTNAME", "container") for e in c["env"])
    assert c["workingDir"] == "/srv"
    assert c["ports"] == [{"containerPort": 8080, "hostPort": 18080, "protocol": "TCP"}]
    assert c["resources"] == {"limits": {"memory": str(64 << 20), "cpu": "1500m"}}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    by_path = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    assert by_path["/data"]["hostPath"] == {"path": str(data)}
    assert by_path["/cache"]["persistentVolumeClaim"] == {"claimName": "cache"}
    assert by_path["/scratch"]["emptyDir"] == {"medium": "Memory"}
    assert {"/tmp", "/run"} <= set(by_path)  # --read-only's scratch tmpfs
    ro = next(m for m in c["volumeMounts"] if m["mountPath"] == "/data")
    assert ro["readOnly"] is True
    sc = c["securityContext"]
    assert sc["capabilities"] == {"add": ["NET_ADMIN"], "drop": ["CHOWN"]}
    assert sc["seccompProfile"] == {"type": "Localhost", "localhostProfile": SECCOMP}
    assert sc["runAsUser"] == 1000 and sc["runAsGroup"] == 1000 and sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True


def test_defaults_are_runtime_default_and_root(tmp_path: Path) -> None:
    pod = kube.generate_pod(
        built(tmp_path, spec.RunOptions("busybox", restart="on-failure:3")),
        volumes_root=tmp_path / "volumes",
    )
    validate(pod)
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert sc == {
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsUser": 0,
        "runAsNonRoot": False,
    }
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    host = kube.generate_pod(
        built(tmp_path, spec.RunOptions("busybox", network="host", privileged=True)),
        volumes_root=tmp_path / "volumes",
    )
    validate(host)
    assert host["spec"]["hostNetwork"] is True
    assert host["spec"]["containers"][0]["securityContext"]["privileged"] is True


def test_schema_check_is_real(tmp_path: Path) -> None:
    pod = kube.generate_pod(built(tmp_path, spec.RunOptions("busybox")), volumes_root=tmp_path)
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": "eighty"}]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(pod)


def test_generated_job_validates_and_runs_the_steps(tmp_path: Path) -> None:
    (tmp_path / "sandbox.yaml").write_text(
        "image: busybox\nenv: {A: '1'}\ncaches: {pip: /root/.cache}\n"
        "resources: {memory: 128m}\nsetup: [echo setup]\n"
        "jobs:\n  Test:\n    steps:\n      - echo one\n"
        "      - run: sh -c 'exit 3'\n        name: fails\n        workdir: /tmp\n"
        "        env: {B: two words}\n"
    )
    proj = project.load(tmp_path / "sandbox.yaml")
    from sandbox import jobs

    job = proj.job("Test")
    steps = [(s.run, proj.env + job.env + s.env, s.workdir) for s in jobs.steps_of(proj, job)]
    manifest = kube.generate_job(
        jobs.run_options(proj, job), steps, "Test", volumes_root=tmp_path / "volumes"
    )
    validate(manifest)
    assert manifest["kind"] == "Job" and manifest["metadata"]["name"] == "test"
    pod = manifest["spec"]["template"]["spec"]
    c = pod["containers"][0]
    script = c["command"][2]
    assert c["command"][:2] == ["sh", "-c"] and script.startswith("set -e\n")
    lines = script.splitlines()[1:]
    assert lines[0] == "(env A=1 sh -c 'echo setup')"
    assert lines[2] == "(cd /tmp && env A=1 'B=two words' sh -c 'sh -c '\"'\"'exit 3'\"'\"'')"
    assert c["workingDir"] == "/work" and c["resources"]["limits"]["memory"] == str(128 << 20)
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/work", "/root/.cache"} <= mounts
    assert pod["restartPolicy"] == "Never"


def test_play_reads_a_generated_pod_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    options = spec.RunOptions(
        "busybox",
        ("sleep", "60"),
        env=("A=1",),
        volumes=(f"{data}:/data:ro",),
        publish=("18080:8080",),
        cap_drop=("CHOWN",),
        user="1000",
    )
    pod = kube.generate_pod(built(tmp_path, options), volumes_root=tmp_path / "volumes")
    plan = kube.pod_plan(pod, base=tmp_path)
    (c,) = plan.containers
    o = c.options
    assert c.name == "web-1-web-1" and o.detach and o.name == c.name
    assert o.entrypoint == '["sleep", "60"]' and o.command == ()
    assert "A=1" in o.env and o.volumes == (f"{data}:/data:ro",)
    assert o.cap_drop == ("CHOWN",) and o.user == "1000"
    # The port is the pod's: its infra container publishes it, the app container joins that.
    assert o.publish == () and o.network == "container:web-1-infra"
    assert plan.publish == ("18080:8080/tcp",) and plan.infra == "web-1-infra"


def test_the_infra_container_holds_the_pods_network_and_ports(tmp_path: Path) -> None:
    pod: dict[str, Any] = {
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {"name": "a", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}]},
                {
                    "name": "b",
                    "image": "y",
                    "ports": [{"containerPort": 53, "hostPort": 5353, "protocol": "UDP"}],
                },
            ]
        },
    }
    plan = kube.pod_plan(pod, base=tmp_path)
    assert [c.options.network for c in plan.containers] == ["container:p-infra"] * 2
    infra = plan.infra_container(tmp_path / "rootfs")
    o = infra.options
    assert infra.name == o.name == "p-infra" and o.image == str(tmp_path / "rootfs") and o.rootfs
    assert o.command == ("/pause",) and o.read_only and o.detach and o.restart == "no"
    assert o.network == kube.POD_NETWORK and o.publish == ("8080:80/tcp", "5353:53/udp")
    assert o.cap_drop == ("ALL",) and "no-new-privileges" in o.security_opt
    # hostNetwork: nothing to hold, no infra container.
    pod["spec"]["hostNetwork"] = True
    plan = kube.pod_plan(pod, base=tmp_path)
    assert plan.infra is None and {c.options.network for c in plan.containers} == {"host"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"containers": "x"}, "spec.containers"),
        ({"containers": [{"name": "infra", "image": "b"}]}, "reserved: the pod's infra .* p-infra"),
        ({"containers": [{"name": "a"}]}, "image"),
        ({"containers": [{"name": "Bad_Name", "image": "b"}]}, "invalid spec.containers"),
        ({"volumes": [{"name": "v", "nfs": {}}]}, "nfs is not supported"),
        (
            {"containers": [{"name": "a", "image": "b", "env": [{"name": "X", "valueFrom": {}}]}]},
            "valueFrom",
        ),
        (
            {"containers": [{"name": "a", "image": "b", "ports": [{"containerPort": True}]}]},
            "integer",
        ),
        (
            {
                "containers": [
                    {
                        "name": "a",
                        "image": "b",
                        "securityContext": {"runAsUser": 0, "runAsNonRoot": True},
                    }
                ]
            },
            "runAsNonRoot",
        ),
    ],
)
def test_play_refuses_what_it_cannot_honour(change: dict[str, Any], message: str) -> None:
    pod: dict[str, Any] = {"metadata": {"name": "p"}, "spec": {"containers": []}}
    pod["spec"].update(change)
    with pytest.raises(ConfigError, match=message):
        kube.pod_plan(pod, base=Path("/"))


def test_load_manifest_bounds_and_kinds(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("kind: Service\n")
    with pytest.raises(ConfigError, match="cannot be played"):
        kube.load_manifest(f)
    f.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        kube.load_manifest(f)
    f.write_text("#" * (kube.MAX_MANIFEST + 1))
    with pytest.raises(ConfigError, match="larger"):
        kube.load_manifest(f)
