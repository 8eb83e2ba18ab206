"""The OCI runtime spec: config.json in and out (spec.py), bundles, and sandbox-runtime, the
runc-compatible command line (runtime_cli.py over runtime.py)."""
