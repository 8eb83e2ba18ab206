"""sandbox: a rootless container engine for Linux."""

__version__ = "0.1.0"
