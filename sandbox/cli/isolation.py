"""Drawing the isolation report (sandbox/runtime/isolation.py) as a box, with rich.

rich is imported here and only here, inside render(): nothing else on the command line pays
for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandbox.runtime.isolation import Report


def _id_map(rows: tuple[tuple[int, int, int], ...]) -> str:
    if not rows:
        return "(unreadable)"
    return ", ".join(
        f"{inside}-{inside + size - 1} -> {outside}-{outside + size - 1}"
        if size > 1
        else f"{inside} -> {outside}"
        for inside, outside, size in rows
    )


def render(report: Report, *, stderr: bool = False) -> None:
    from rich import box
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    ns = Table(box=box.SIMPLE_HEAD, expand=False, pad_edge=False)
    ns.add_column("namespace")
    ns.add_column("inode", justify="right")
    ns.add_column("isolation")
    for n in report.namespaces:
        if n.shared_with_host is None:
            ns.add_row(n.kind, "?", Text(n.error or "unknown", style="yellow"))
        elif n.shared_with_host:
            ns.add_row(n.kind, str(n.inode), Text("shared with the host", style="bold red"))
        else:
            ns.add_row(n.kind, str(n.inode), Text("own", style="green"))

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("uid map", _id_map(report.uid_map))
    facts.add_row("gid map", _id_map(report.gid_map))
    cg = report.cgroup
    facts.add_row("cgroup", Text(cg.note, style="green" if cg.own else "yellow"))
    for limit in cg.limits:
        mark = Text("enforced", style="green") if limit.enforced else Text("not enforced")
        facts.add_row("", Text.assemble(f"{limit.limits}: {limit.value} ({limit.file}) ", mark))
    seccomp = report.seccomp
    if report.seccomp == "filter":
        seccomp += f", {report.seccomp_filters} filter(s)"
    if report.seccomp_profile:
        seccomp += f"; profile {report.seccomp_profile} (as requested)"
    facts.add_row(
        "seccomp", Text(seccomp, style="green" if report.seccomp != "disabled" else "yellow")
    )
    facts.add_row(
        "no_new_privs",
        Text("set", style="green") if report.no_new_privs else Text("not set", style="yellow"),
    )
    for label, names in report.capabilities.items():
        shown = ", ".join(n.removeprefix("CAP_").lower() for n in names) or "(none)"
        facts.add_row(f"caps {label}", f"{shown} [{report.capabilities_hex.get(label, '')}]")
    facts.add_row("masked paths", ", ".join(report.masked_paths) or Text("(none)", style="yellow"))
    facts.add_row("read-only paths", ", ".join(report.readonly_paths) or "(none)")
    network = report.network_mode or "(not recorded)"
    if report.ports:
        network += "; ports " + ", ".join(report.ports)
    facts.add_row("network", network)
    facts.add_row("interfaces", ", ".join(report.interfaces) or "(unreadable)")
    body: list[object] = [ns, facts]
    if report.errors:
        body.append(Text("could not read: " + "; ".join(report.errors), style="red"))
    panel = Panel(
        Group(*body),  # type: ignore[arg-type]
        title=f"container {report.container} (PID 1 = host pid {report.pid})",
        subtitle="read from /proc and cgroup files of the live container",
        expand=False,
    )
    Console(highlight=False, stderr=stderr).print(panel)
