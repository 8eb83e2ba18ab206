"""`sandbox run`: parse options into RunOptions and hand them to the runtime."""

# No `from __future__ import annotations`: typer evaluates every option's annotation, and
# strings cost an eval each (~4 ms for run's fifty options on every start).

import typer

RUN_EXAMPLES = """
Examples:

  sandbox run --rm busybox echo hello

  sandbox run -it --rm debian bash

  sandbox run --rm -v $PWD:/src:ro -w /src busybox ls

  sandbox run --rootfs ./rootfs /bin/sh
"""


def register(app: typer.Typer) -> None:
    @app.command(
        "run",
        # -h is --hostname here, as in podman run.
        context_settings={"help_option_names": ["--help"], "allow_interspersed_args": False},
        help="Run a command in a new container." + RUN_EXAMPLES,
    )
    def run(
        ctx: typer.Context,
        image: str = typer.Argument(
            None, help="Image name or id (with --rootfs: a directory; not with --bundle)."
        ),
        command: list[str] = typer.Argument(None, help="Command and arguments."),
        remove: bool = typer.Option(False, "--rm", help="Remove the container when it exits."),
        detach: bool = typer.Option(
            False, "--detach", "-d", help="Run in the background; print the container id."
        ),
        print_isolation: bool = typer.Option(
            False,
            "--print-isolation",
            help="Once the command runs, draw what the container got (read from /proc) on stderr.",
        ),
        restart: str = typer.Option(
            "no", "--restart", help="no, always, unless-stopped or on-failure[:N] (with -d)."
        ),
        interactive: bool = typer.Option(False, "--interactive", "-i", help="Keep stdin open."),
        tty: bool = typer.Option(False, "--tty", "-t", help="Allocate a pseudo-terminal."),
        name: str = typer.Option(None, "--name", help="Name of the container."),
        env: list[str] = typer.Option([], "--env", "-e", help="Set KEY=VALUE (or copy KEY)."),
        env_file: list[str] = typer.Option([], "--env-file", help="Read KEY=VALUE lines."),
        workdir: str = typer.Option(None, "--workdir", "-w", help="Working directory inside."),
        user: str = typer.Option(None, "--user", "-u", help="USER[:GROUP], names or ids."),
        hostname: str = typer.Option(None, "--hostname", "-h", help="Container host name."),
        volume: list[str] = typer.Option([], "--volume", "-v", help="Bind HOSTPATH:PATH[:ro]."),
        tmpfs: list[str] = typer.Option([], "--tmpfs", help="Mount a tmpfs at PATH[:OPTS]."),
        read_only: bool = typer.Option(False, "--read-only", help="Read-only root filesystem."),
        entrypoint: str = typer.Option(None, "--entrypoint", help="Override the entrypoint."),
        init: bool = typer.Option(False, "--init", help="Run a reaper as PID 1."),
        rootfs: bool = typer.Option(
            False, "--rootfs", help="IMAGE is a root filesystem directory."
        ),
        bundle: str = typer.Option(
            None, "--bundle", help="Run the OCI bundle in DIR (config.json + its rootfs)."
        ),
        userns: str = typer.Option(
            None,
            "--userns",
            help="auto, subids, single (map only your own id), or keep-id (your uid inside).",
        ),
        network: str = typer.Option(
            None,
            "--network",
            "--net",
            help="slirp4netns[:allow_host_loopback=true,mtu=N] (default where installed), "
            "pasta, none, host, a network's NAME or container:NAME.",
        ),
        publish: list[str] = typer.Option(
            [], "--publish", "-p", help="Publish [IP:][HOSTPORT:]PORT[/udp]; ranges allowed."
        ),
        dns: list[str] = typer.Option([], "--dns", help="DNS server for the container."),
        dns_search: list[str] = typer.Option([], "--dns-search", help="DNS search domain."),
        add_host: list[str] = typer.Option([], "--add-host", help="Add NAME:IP to /etc/hosts."),
        egress_allow: list[str] = typer.Option(
            [],
            "--egress-allow",
            help="Allow traffic out only to CIDR[:PORT] or HOSTNAME[:PORT] (repeatable); "
            "everything else leaving the container is refused, DNS included (allowed names "
            "are pinned in /etc/hosts; 10.0.2.3:53 opens slirp4netns's resolver).",
        ),
        pull: str = typer.Option(
            "missing", "--pull", help="Pull the image: always, missing, never or newer."
        ),
        tls_verify: str = typer.Option(
            None, "--tls-verify", help="false: allow plain HTTP and unverified TLS for the pull."
        ),
        platform: str = typer.Option(None, "--platform", help="OS/ARCH[/VARIANT] to pull."),
        memory: str = typer.Option(None, "--memory", "-m", help="Memory limit (64m, 1g)."),
        memory_swap: str = typer.Option(None, "--memory-swap", help="Memory + swap; -1: no cap."),
        memory_reservation: str = typer.Option(
            None, "--memory-reservation", help="Memory protected from reclaim (memory.low)."
        ),
        cpus: str = typer.Option(None, "--cpus", help="CPUs the container may use (0.5)."),
        cpu_shares: int = typer.Option(None, "--cpu-shares", help="CPU shares (v1 scale)."),
        cpu_weight: int = typer.Option(None, "--cpu-weight", help="CPU weight, 1-10000."),
        cpuset_cpus: str = typer.Option(None, "--cpuset-cpus", help="CPUs allowed (0-2,4)."),
        pids_limit: int = typer.Option(None, "--pids-limit", help="Maximum processes."),
        blkio_weight: int = typer.Option(None, "--blkio-weight", help="Block I/O weight, 10-1000."),
        cgroups_mode: str = typer.Option(
            None, "--cgroups", help="enabled, or disabled (limits are then not enforced)."
        ),
        cap_add: list[str] = typer.Option([], "--cap-add", help="Add a capability (or ALL)."),
        cap_drop: list[str] = typer.Option([], "--cap-drop", help="Drop a capability (or ALL)."),
        privileged: bool = typer.Option(
            False, "--privileged", help="Every capability, no seccomp, no masked paths."
        ),
        security_opt: list[str] = typer.Option(
            [],
            "--security-opt",
            help="seccomp=PROFILE.json|unconfined, no-new-privileges, mask=PATHS, unmask=PATHS.",
        ),
        ulimit: list[str] = typer.Option(
            [], "--ulimit", help="Resource limit NAME=SOFT[:HARD] (nofile=1024:2048)."
        ),
        umask: str = typer.Option(
            None, "--umask", help="File mode creation mask of the command (octal; 0022)."
        ),
    ) -> None:
        from sandbox import config
        from sandbox.rootless import cgroups
        from sandbox.runtime import container
        from sandbox.spec import RunOptions

        if userns is not None and userns not in config.USERNS_MODES:
            from sandbox.errors import UsageError

            raise UsageError(
                f"invalid --userns {userns!r}", hint=f"use one of: {', '.join(config.USERNS_MODES)}"
            )
        if (image is None) == (bundle is None):
            from sandbox.errors import UsageError

            raise UsageError(
                "give an IMAGE, or --bundle DIR"
                if image is None
                else "--bundle runs the bundle's own config.json: give no IMAGE or command",
                hint="sandbox run busybox echo hi, or sandbox run --bundle ./bundle",
            )
        verify = None
        if tls_verify is not None:  # cli/images.py (typer commands) only when it is given
            from sandbox.cli.images import parse_bool

            verify = parse_bool("--tls-verify", tls_verify)
        options = RunOptions(
            image=image or bundle,
            bundle=bundle,
            command=tuple(command or ()),
            remove=remove,
            interactive=interactive,
            tty=tty,
            name=name,
            env=tuple(env),
            env_files=tuple(env_file),
            workdir=workdir,
            user=user,
            hostname=hostname,
            volumes=tuple(volume),
            tmpfs=tuple(tmpfs),
            read_only=read_only,
            entrypoint=entrypoint,
            init=init,
            rootfs=rootfs,
            userns=userns,
            detach=detach,
            restart=restart,
            network=network,
            publish=tuple(publish),
            dns=tuple(dns),
            dns_search=tuple(dns_search),
            add_host=tuple(add_host),
            egress_allow=tuple(egress_allow),
            resources=cgroups.from_options(
                memory=memory,
                memory_swap=memory_swap,
                memory_reservation=memory_reservation,
                cpus=cpus,
                cpu_shares=cpu_shares,
                cpu_weight=cpu_weight,
                cpuset_cpus=cpuset_cpus,
                pids_limit=pids_limit,
                blkio_weight=blkio_weight,
            ),
            cgroups=cgroups_mode,
            pull=pull,
            tls_verify=verify,
            platform=platform,
            cap_add=tuple(cap_add),
            cap_drop=tuple(cap_drop),
            privileged=privileged,
            security_opt=tuple(security_opt),
            ulimits=tuple(ulimit),
            umask=umask,
        )
        settings = config.load()
        if ctx.info_name == "create":
            _, record = container.create(settings, options)
            print(record.id)
            return
        if detach:
            from sandbox.runtime import monitor
            from sandbox.runtime.state import ContainerStore

            spec, record = container.create(settings, options)
            monitor.start(ContainerStore(settings.containers_root), spec, record)
            print(record.id)
            return
        on_started = None
        if print_isolation:
            from sandbox.cli import isolation as draw
            from sandbox.runtime import isolation
            from sandbox.runtime.state import Container, ContainerStore

            store = ContainerStore(settings.containers_root)

            def on_started(record: Container) -> None:
                from sandbox import codec

                spec = codec.to_json(store.load_spec(record.id))
                draw.render(isolation.read(record.id, record.name, record.pid, spec), stderr=True)

        # exiting: this process ends with the container's code (main.py's os._exit).
        code = container.run(settings, options, on_started=on_started, exiting=True)
        raise typer.Exit(code)

    # `sandbox create` takes run's options and stops once the container exists.
    app.command(
        "create",
        context_settings={"help_option_names": ["--help"], "allow_interspersed_args": False},
        help="Create a container without starting it ('sandbox start' runs it).\n\n"
        "Examples:\n\n  sandbox create --name web busybox httpd -f\n\n  sandbox start web",
    )(run)
