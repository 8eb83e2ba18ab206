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
        "network namespace per pod (on the named network 'kube', created when missing; "
        "localhost reaches between them).\n\nExamples:\n\n  sandbox kube play web-pod.yaml",
    )
    def play(file: Path = typer.Argument(..., help="The manifest (YAML).")) -> None:
        from sandbox import config, kube
        from sandbox.runtime import container as engine
        from sandbox.runtime import monitor
        from sandbox.runtime.state import ContainerStore

        settings = config.load()
        planned = [
            c
            for pod in kube.load_manifest(file)
            for c in kube.pod_run_options(pod, base=file.resolve().parent)
        ]
        store = ContainerStore(settings.containers_root)
        if any(c.options.network == kube.POD_NETWORK for c in planned):
            from sandbox.runtime import networks

            if not any(
                n.name == kube.POD_NETWORK for n in networks.list_networks(settings.data_root)
            ):
                networks.create(settings.data_root, kube.POD_NETWORK)
        started: list[str] = []
        try:
            for c in planned:
                spec, record = engine.create(settings, c.options)
                started.append(record.id)
                monitor.start(store, spec, record)
                print(f"{c.name} {record.id}")
        except BaseException:
            # All or nothing: a pod whose third container fails leaves no first two behind.
            for cid in started:
                engine.remove(settings, cid, force=True)
            raise

    @group.command(
        "down",
        help="Remove the containers (and emptyDir volumes) `kube play FILE` created.\n\n"
        "Examples:\n\n  sandbox kube down web-pod.yaml",
    )
    def down(file: Path = typer.Argument(..., help="The manifest (YAML).")) -> None:
        from sandbox import config, kube, volumes
        from sandbox.errors import ContainerNotFound
        from sandbox.runtime import container as engine

        settings = config.load()
        for pod in kube.load_manifest(file):
            for c in kube.pod_run_options(pod, base=file.resolve().parent):
                try:
                    engine.remove(settings, c.name, force=True)
                    print(c.name)
                except ContainerNotFound:
                    continue
            for name in kube.empty_dir_volumes(pod):
                if volumes.path_of(settings.data_root, name).exists():
                    mapping = engine.mapping_for(settings, None, lambda _m: None)
                    volumes.remove(settings.data_root, name, mapping)

    app.add_typer(group, name="kube")
