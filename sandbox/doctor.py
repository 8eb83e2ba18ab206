"""`sandbox doctor`'s checks: the host probes of rootless/features.py, each given a severity.

features.py answers "does X work here"; this module decides what that means for a user: a
check whose probe fails is "failed" when containers cannot run properly without it (no user
namespaces, no subordinate ids) and a "warning" when sandbox runs anyway with less (no cgroup
delegation: limits are not enforced; no slirp4netns: no network). The same probes decide the
runtime's fallbacks and the test suite's skips, so the three never disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from sandbox.rootless import features

OK = "ok"
WARNING = "warning"
FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class CheckInfo:
    """How to present one probe: a title, and what its failure costs."""

    title: str
    # FAILED: a container cannot run, or runs badly (files of other owners squashed);
    # WARNING: sandbox works without it, with less (no limits, no network, a fallback).
    severity: str
    # Without it, `sandbox run` cannot start a container at all.
    blocks_run: bool = False


# In the order doctor prints them: the chain a rootless container needs, first link first.
CHECKS: dict[str, CheckInfo] = {
    "sysctls": CheckInfo("user namespace sysctls", FAILED, blocks_run=True),
    "userns": CheckInfo("unprivileged user namespaces", FAILED, blocks_run=True),
    "subids": CheckInfo("subordinate uids and gids", FAILED),
    "newuidmap": CheckInfo("newuidmap and newgidmap", FAILED),
    "xdg_runtime": CheckInfo("XDG_RUNTIME_DIR", WARNING),
    "linger": CheckInfo("lingering (user manager survives logout)", WARNING),
    "cgroup2": CheckInfo("cgroup v2", WARNING),
    "cgroup_delegation": CheckInfo("cgroup controllers delegated", WARNING),
    "user_bus": CheckInfo("systemd user bus", WARNING),
    "overlay_userns": CheckInfo("overlay in a user namespace", WARNING),
    "fuse-overlayfs": CheckInfo("fuse-overlayfs (keep-id owners, overlay fallback)", WARNING),
    "fuse": CheckInfo("/dev/fuse", WARNING),
    "storage_fs": CheckInfo("storage directory filesystem", WARNING),
    "slirp4netns": CheckInfo("slirp4netns (network)", WARNING),
    "pasta": CheckInfo("pasta (network)", WARNING),
    "tun": CheckInfo("/dev/net/tun", WARNING),
    "unprivileged_ports": CheckInfo("unprivileged ports", WARNING),
    "nested": CheckInfo("nested in another container", WARNING),
    "nftables": CheckInfo("nf_tables in a user namespace (--egress-allow)", WARNING),
    "podman": CheckInfo("podman (a peer that drives sandbox-runtime)", WARNING),
    "native_monitor": CheckInfo("native monitor (small idle detached containers)", WARNING),
    "pod_infra": CheckInfo("pause program (kube play's infra containers)", WARNING),
}


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    title: str
    status: str  # ok | warning | failed
    detail: str
    fix: str | None
    blocks_run: bool


@dataclasses.dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def failed(self) -> bool:
        return any(c.status == FAILED for c in self.checks)

    @property
    def run_possible(self) -> bool:
        return not any(c.status == FAILED and c.blocks_run for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in (OK, WARNING, FAILED)}


def _info(name: str) -> CheckInfo:
    # A probe added to features.py before it gets a line here is shown as a warning.
    return CHECKS.get(name, CheckInfo(name, WARNING))


def check(result: features.Probe) -> Check:
    info = _info(result.name)
    status = OK if result.ok else info.severity
    return Check(
        name=result.name,
        title=info.title,
        status=status,
        detail=result.detail,
        fix=None if result.ok else result.fix,
        blocks_run=info.blocks_run,
    )


def run(
    names: Sequence[str] | None = None,
    *,
    use_cache: bool = True,
    probe: Callable[..., features.Probe] = features.probe,
) -> Report:
    """Run the checks (every probe, in CHECKS order, then any probe CHECKS does not know)."""
    if names is None:
        names = [n for n in CHECKS if n in features.NAMES]
        names += [n for n in features.NAMES if n not in CHECKS]
    checks = [check(probe(name, use_cache=use_cache)) for name in names]
    return Report(tuple(checks))


def as_json(report: Report) -> dict[str, object]:
    return {
        "ok": not report.failed,
        "run_possible": report.run_possible,
        "counts": report.counts(),
        "checks": [dataclasses.asdict(c) for c in report.checks],
    }
