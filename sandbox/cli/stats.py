"""`sandbox stats`: CPU, memory, pids, block and network I/O of running containers."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "stats",
        help="Show resource usage of running containers (from their cgroups).\n\n"
        "Examples:\n\n  sandbox stats\n\n  sandbox stats --no-stream --format json web",
    )
    def stats(
        containers: list[str] = typer.Argument(None, help="Names or ids (default: all running)."),
        no_stream: bool = typer.Option(False, "--no-stream", help="One sample, then exit."),
        format_: str = typer.Option("table", "--format", help="table or json."),
        interval: float = typer.Option(1.0, "--interval", help="Seconds between samples."),
    ) -> None:
        import sys
        import time

        from sandbox import config
        from sandbox.cli import render
        from sandbox.errors import UsageError
        from sandbox.runtime import stats as engine
        from sandbox.runtime.state import ContainerStore

        if format_ not in ("table", "json"):
            raise UsageError(f"unknown --format {format_!r}", hint="use table or json")
        store = ContainerStore(config.load().containers_root)
        chosen = [store.lookup(n) for n in containers] if containers else None
        before: dict[str, engine.Sample] = {}
        first = True
        while True:
            running = [c for c in (chosen or store.list()) if c.status == "running"]
            samples = [engine.sample(c) for c in running]
            if first:
                # CPU % needs two samples: take the first a short moment before the second.
                before = {s.id: s for s in samples}
                time.sleep(min(interval, 0.5))
                samples = [engine.sample(c) for c in running]
                first = False
            if format_ == "json":
                render.json_out([s.as_json(before.get(s.id)) for s in samples])
            else:
                if sys.stdout.isatty() and not no_stream:
                    print("\x1b[H\x1b[2J", end="")
                rows = [
                    (
                        s.id[:12],
                        s.name,
                        f"{s.cpu_percent(before.get(s.id)):.2f}%",
                        f"{_size(s.memory)} / {_size(s.memory_limit) if s.memory_limit else '-'}",
                        f"{_size(s.net_rx)} / {_size(s.net_tx)}",
                        f"{_size(s.block_read)} / {_size(s.block_write)}",
                        str(s.pids),
                    )
                    for s in samples
                ]
                render.table(
                    ("ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "NET IO", "BLOCK IO", "PIDS"),
                    rows,
                )
            sys.stdout.flush()
            if no_stream:
                return
            before = {s.id: s for s in samples}
            time.sleep(interval)


def _size(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.4g}{unit}"
        value /= 1000
    return f"{value:.4g}TB"
