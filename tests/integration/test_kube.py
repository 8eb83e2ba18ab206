"""sandbox kube: generate from a real container and a real job, play a Pod, take it down."""

from __future__ import annotations

import json
import time
from pathlib import Path

import kubernetes_validate  # the test extra: the Kubernetes API schema
import pytest
import yaml

from tests.helpers import SandboxEnv

pytestmark = pytest.mark.needs("userns", "subids", "newuidmap")


def validate(manifest: dict[str, object]) -> None:
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


def test_generate_from_container_and_job(
    sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path
) -> None:
    run = sandbox_env.run
    data = tmp_path / "data"
    data.mkdir()
    done = run(
        "create",
        "--name",
        "kgen",
        "-e",
        "A=1",
        "-v",
        f"{data}:/data:ro",
        "--tmpfs",
        "/t",
        "--cap-drop",
        "CHOWN",
        "--user",
        "1000",
        busybox_image,
        "sleep",
        "5",
    )
    assert done.returncode == 0, done.stderr
    try:
        out = run("kube", "generate", "kgen")
        assert out.returncode == 0, out.stderr
        pod = yaml.safe_load(out.stdout)
        validate(pod)
        c = pod["spec"]["containers"][0]
        assert c["command"] == ["sleep", "5"] and {"name": "A", "value": "1"} in c["env"]
        assert c["securityContext"]["capabilities"] == {"drop": ["CHOWN"]}
        assert c["securityContext"]["runAsNonRoot"] is True
    finally:
        run("rm", "-f", "kgen")
    (tmp_path / "sandbox.yaml").write_text(
        f"image: {busybox_image}\njobs:\n  test:\n    steps:\n      - echo one\n"
    )
    out = run("kube", "generate", "test", "-f", tmp_path / "sandbox.yaml")
    assert out.returncode == 0, out.stderr
    job = yaml.safe_load(out.stdout)
    validate(job)
    assert job["kind"] == "Job"
    missing = run("kube", "generate", "nosuch", "-f", tmp_path / "sandbox.yaml")
    assert missing.returncode == 125 and "Traceback" not in missing.stderr


def test_play_and_down(sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path) -> None:
    run = sandbox_env.run
    manifest = tmp_path / "pod.yaml"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kp"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "containers": [
                {
                    "name": "writer",
                    "image": busybox_image,
                    "command": ["sh", "-c"],
                    "args": ["echo $MSG > /shared/f; sleep 30"],
                    "env": [{"name": "MSG", "value": "from-writer"}],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                },
                {
                    "name": "reader",
                    "image": busybox_image,
                    "command": ["sleep", "30"],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                },
            ],
        },
    }
    validate(pod)
    manifest.write_text(yaml.safe_dump(pod))
    try:
        done = run("kube", "play", manifest)
        assert done.returncode == 0, done.stderr
        names = [line.split()[0] for line in done.stdout.splitlines()]
        assert names == ["kp-writer", "kp-reader"]
        listing = json.loads(run("ps", "--format", "json").stdout)
        assert {"kp-writer", "kp-reader"} <= {
            c["Names"][0] if isinstance(c["Names"], list) else c["Names"] for c in listing
        }
        # The emptyDir is shared by the pod's containers.
        seen = ""
        for _ in range(50):
            seen = run("exec", "kp-reader", "cat", "/shared/f").stdout
            if seen:
                break
        assert seen == "from-writer\n"
    finally:
        down = run("kube", "down", manifest)
        run("network", "rm", "kube")  # the last network: its holder and slirp4netns stop
    assert down.returncode == 0, down.stderr
    assert run("ps", "-a", "--format", "json").stdout.count("kp-") == 0
    assert "kp-shared" not in run("volume", "ls").stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a}]}\n")
    refused = run("kube", "play", bad)
    assert refused.returncode == 125 and "image" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.needs("userns", "subids", "newuidmap", "slirp4netns", "tun", "nftables")
def test_a_pods_containers_reach_each_other_over_localhost(
    sandbox_env: SandboxEnv, busybox_image: str, tmp_path: Path
) -> None:
    run = sandbox_env.run
    manifest = tmp_path / "pod.yaml"
    server = (
        "mkdir -p /www && echo hello-over-localhost > /www/index.html && httpd -f -p 8080 -h /www"
    )
    client = (
        "for i in $(seq 100); do wget -qO- http://localhost:8080/ > /tmp/got && break; "
        "sleep 0.1; done; sleep 30"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "lp"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "web", "image": busybox_image, "command": ["sh", "-c", server]},
                {"name": "client", "image": busybox_image, "command": ["sh", "-c", client]},
            ],
        },
    }
    validate(pod)
    manifest.write_text(yaml.safe_dump(pod))
    try:
        done = run("kube", "play", manifest)
        assert done.returncode == 0, done.stderr
        got = ""
        for _ in range(100):
            got = run("exec", "lp-client", "cat", "/tmp/got").stdout
            if got:
                break
            time.sleep(0.1)
        assert got == "hello-over-localhost\n"
        # One network namespace: the same eth0 address seen from both containers.
        addresses = [
            run("exec", name, "ip", "-4", "-o", "addr", "show", "eth0").stdout.split()[3]
            for name in ("lp-web", "lp-client")
        ]
        assert addresses[0] == addresses[1] and addresses[0].startswith("10.89.")
    finally:
        down = run("kube", "down", manifest)
        run("network", "rm", "kube")
    assert down.returncode == 0, down.stderr
