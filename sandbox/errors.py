"""Errors and exit codes: the one table that maps failures to the CI contract.

Library code raises a SandboxError carrying what failed, on what, and a hint saying how to
fix it. Only the CLI prints errors (cli/main.py turns them into one line and an exit code).
This module imports nothing else from sandbox.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit statuses of `sandbox`, as podman and the OCI runtimes use them."""

    OK = 0
    ENGINE = 125  # sandbox itself failed (bad option, missing image, kernel refused, ...)
    CANNOT_EXECUTE = 126  # the command exists but could not be executed
    NOT_FOUND = 127  # the command was not found in the container
    SIGNAL_BASE = 128  # a command killed by signal N makes sandbox exit 128 + N


def exit_code_for_wait_status(status: int) -> int:
    """The exit code `sandbox run` reports for a waitpid() status of the container's PID 1."""
    import os

    if os.WIFSIGNALED(status):
        return ExitCode.SIGNAL_BASE + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return ExitCode.ENGINE


class SandboxError(Exception):
    """A failure the user can act on.

    message: what failed, in one line ("cannot import busybox.tar").
    context: on what, or why (the kernel's words, the file, the setting).
    hint: how to fix it ("add 'alice:100000:65536' to /etc/subuid").
    """

    exit_code: int = ExitCode.ENGINE

    def __init__(self, message: str, *, context: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.context = context
        self.hint = hint

    def __str__(self) -> str:
        text = self.message
        if self.context:
            text += f": {self.context}"
        return text


class UsageError(SandboxError):
    """Options that contradict each other or name something that does not exist."""


class ConfigError(SandboxError):
    """A settings file that cannot be read or has unknown keys or wrong types."""


class HostError(SandboxError):
    """The machine lacks something a container needs (user namespaces, subordinate ids, ...)."""


class ImageError(SandboxError):
    """An image that is missing, unreadable or malformed."""


class ImageNotFound(ImageError):
    """No image by that name or id in the local store."""


class LayerError(ImageError):
    """A layer tarball that cannot be unpacked safely."""


class RegistryError(ImageError):
    """A registry that cannot be reached or answers with an error or malformed data."""


class AuthError(RegistryError):
    """A registry refused our credentials (or wants some and we have none)."""


class DigestError(ImageError):
    """Content whose sha256 is not the digest that named it (corrupt or tampered)."""


class ContainerError(SandboxError):
    """A container that is missing, in the wrong state, or failed to start."""


class ContainerNotFound(ContainerError):
    """No container by that name or id."""


class ExecError(SandboxError):
    """The container's command could not be executed (exit 126) or found (exit 127)."""

    def __init__(
        self, message: str, *, exit_code: int, context: str | None = None, hint: str | None = None
    ):
        super().__init__(message, context=context, hint=hint)
        self.exit_code = exit_code
