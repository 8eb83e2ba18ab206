"""`sandbox kube generate|play|down`: Kubernetes manifests (sandbox/kube.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Kubernetes manifests: generate one from a container or a job, play a Pod "
        "locally.\n\nExamples:\n\n  sandbox kube generate web > web-pod.yaml\n\n"
        "  sandbox kube generate test -f sandbox.yaml > test-job.yaml\n\n"
        "  sandbox kube play web-pod.yaml && sandbox kube down web-pod.yaml",
        no_args_is_help=True,
    )

    @group.command(
        "generate",
        help="Write a Pod (for a container) or a batch/v1 Job (for a sandbox.yaml job).\n\n"
        "A container is looked up first; otherwise NAME is a job of the project file.\n\n"
        "Examples:\n\n  sandbox kube generate web\n\n  sandbox kube generate test -o job.yaml",
    )
    def generate(
        name: str = typer.Argument(..., help="Container name or id, or a job name."),
        file: Path = typer.Option(None, "--file", "-f", help="The project file (for a job)."),
        output: Path = typer.Option(None, "--output", "-o", help="Write here, not stdout."),
    ) -> None:
        from sandbox import config, jobs, kube, project, volumes
        from sandbox.errors import ConfigError, ContainerNotFound, UsageError
        from sandbox.runtime.state import ContainerStore

        settings = config.load()
        volumes_root = volumes.root(settings.data_root)
        store = ContainerStore(settings.containers_root)
        manifest = None
        if file is None:
            try:
                record = store.lookup(name)
            except ContainerNotFound:
                record = None
            if record is not None:
                spec = store.load_spec(record.id)
                manifest = kube.generate_pod(spec, volumes_root=volumes_root)
        if manifest is None:
            try:
                path = file if file is not None else project.find()
            except ConfigError as error:
                raise UsageError(
                    f"no container named {name}, and no project file for a job",
                    context=error.message,
                    hint="'sandbox ps -a' lists containers; -f FILE names a sandbox.yaml",
                ) from error
            proj = project.load(path)
            job = proj.job(name)
            steps = [
                (s.run, proj.env + job.env + s.env, s.workdir) for s in jobs.steps_of(proj, job)
            ]
            manifest = kube.generate_job(
                jobs.run_options(proj, job), steps, name, volumes_root=volumes_root
            )
        text = kube.to_yaml(manifest)
        if output is not None:
            output.write_text(text)
        else:
            print(text, end="")

    @group.command(
        "play",
        help="Run a Pod manifest's containers, detached, named POD-CONTAINER, sharing one "
        "network namespace per pod, held by the pod's infra container POD-infra (a small "
        "pause program on the named network 'kube', created when missing, with the pod's "
        "published ports; localhost reaches between the containers, and one may exit or "
        "restart without the others losing their network).\n\nExamples:\n\n"
        "  sandbox kube play web-pod.yaml",
    )
    def play(file: Path = typer.Argument(..., help="The manifest (YAML).")) -> None:
        from sandbox import config, kube
        from sandbox.runtime import container as engine
        from sandbox.runtime import monitor
        from sandbox.runtime.state import ContainerStore

        settings = config.load()
        base = file.resolve().parent
        pods = [kube.pod_plan(pod, base=base) for pod in kube.load_manifest(file)]
        planned: list[kube.PodContainer] = []
        rootfs: Path | None = None
        for p in pods:
            if p.infra is not None:  # first: the app containers join its network namespace
                if rootfs is None:
                    rootfs = _pause_rootfs()
                    _ensure_network(settings.data_root, kube.POD_NETWORK)
                planned.append(p.infra_container(rootfs))
            planned.extend(p.containers)
        store = ContainerStore(settings.containers_root)
        started: list[str] = []
        try:
            for c in planned:
                spec, record = engine.create(settings, c.options)
                started.append(record.id)
                monitor.start(store, spec, record)
                print(f"{c.name} {record.id}")
        except BaseException:
            # All or nothing: a pod whose third container fails leaves no first two behind
            # (removed in reverse: the app containers before the infra they joined).
            for cid in reversed(started):
                engine.remove(settings, cid, force=True)
            raise

    @group.command(
        "down",
        help="Remove the containers (the app containers, then the infra container) and the "
        "emptyDir volumes `kube play FILE` created.\n\nExamples:\n\n"
        "  sandbox kube down web-pod.yaml",
    )
    def down(file: Path = typer.Argument(..., help="The manifest (YAML).")) -> None:
        from sandbox import config, kube, volumes
        from sandbox.errors import ContainerNotFound
        from sandbox.runtime import container as engine

        settings = config.load()
        for pod in kube.load_manifest(file):
            plan = kube.pod_plan(pod, base=file.resolve().parent)
            names = [c.name for c in plan.containers]
            if plan.infra is not None:  # last: it holds the namespace the others are in
                names.append(plan.infra)
            for name in names:
                try:
                    engine.remove(settings, name, force=True)
                    print(name)
                except ContainerNotFound:
                    continue
            for name in kube.empty_dir_volumes(pod):
                if volumes.path_of(settings.data_root, name).exists():
                    mapping = engine.mapping_for(settings, None, lambda _m: None)
                    volumes.remove(settings.data_root, name, mapping)

    app.add_typer(group, name="kube")


def _pause_rootfs() -> Path:
    """The infra containers' root filesystem (built on first use), or a one-line error."""
    from sandbox import libexec
    from sandbox.errors import HostError

    rootfs, why = libexec.pause_rootfs()
    if rootfs is None:
        raise HostError(
            "cannot make the pause program of a pod's infra container",
            context=why,
            hint=libexec.PAUSE_HINT,
        )
    return rootfs


def _ensure_network(data_root: Path, name: str) -> None:
    from sandbox.runtime import networks

    if not any(n.name == name for n in networks.list_networks(data_root)):
        networks.create(data_root, name)
