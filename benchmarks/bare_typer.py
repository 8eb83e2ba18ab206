"""The floor for `sandbox --version`: a bare typer app with one command and a --version option.

Scenario 2 of the benchmark runs `python bare_typer.py --version` against `sandbox --version`,
so the ratio is the cost of sandbox's own CLI (its commands, its imports) over typer's.
"""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False)


def _version(value: bool) -> None:
    if value:
        print("bare 0.0.0")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
) -> None:
    """A bare typer app."""


@app.command()
def hello() -> None:
    """The one command."""
    print("hello")


if __name__ == "__main__":
    app()
