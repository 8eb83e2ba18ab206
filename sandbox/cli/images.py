"""`sandbox image import|ls|rm`, `sandbox images` and `sandbox rmi`: the local image store.

The engine (sandbox.images.store) is imported inside each command, so registering these
commands costs nothing at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from sandbox.images.store import Image, ImageStore


def _store() -> ImageStore:
    from sandbox import config
    from sandbox.images.store import ImageStore
    from sandbox.rootless import idmap

    settings = config.load()
    return ImageStore(settings.storage_root, idmap.for_current_user(settings.userns))


def human_size(size: int) -> str:
    """Sizes as podman prints them: decimal units, three significant digits ("2.21 MB")."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.3g} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def image_json(image: Image) -> dict[str, Any]:
    return {
        "Id": image.id,
        "Names": list(image.names),
        "Created": image.created,
        "Size": image.size,
        "Layers": list(image.layers),
    }


def list_images(quiet: bool, format_: str, no_trunc: bool) -> None:
    from sandbox.cli import render
    from sandbox.errors import UsageError
    from sandbox.images import reference

    if format_ not in ("table", "json"):
        raise UsageError(f"unknown --format {format_!r}", hint="use table or json")
    images = sorted(_store().images(), key=lambda i: i.created, reverse=True)
    if format_ == "json":
        render.json_out([image_json(i) for i in images])
        return
    if quiet:
        for image in images:
            print(image.id if no_trunc else image.short_id)
        return
    rows = []
    for image in images:
        shown_id = f"sha256:{image.id}" if no_trunc else image.short_id
        names = image.names or ("<none>:<none>",)
        for name in names:
            if name == "<none>:<none>":
                repository, tag = "<none>", "<none>"
            else:
                repository, tag = reference.split_name(name)
            rows.append(
                (repository, tag, shown_id, render.ago(image.created), human_size(image.size))
            )
    render.table(("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"), rows)


def remove_images(images: list[str], force: bool) -> None:
    from sandbox import config
    from sandbox.cli.main import print_error
    from sandbox.errors import SandboxError
    from sandbox.runtime import container

    settings = config.load()
    store = _store()
    failed = 0
    for name in images:
        try:
            image = store.lookup(name)
            if len(image.names) <= 1 or image.id.startswith(name):
                # The image itself would go: its containers need it for their root.
                container.release_image(settings, image.id, force=force)
            untagged, deleted = store.remove(name, force=force)
        except SandboxError as error:
            print_error(error)
            failed = error.exit_code
            continue
        for untagged_name in untagged:
            print(f"Untagged: {untagged_name}")
        for image_id in deleted:
            print(f"Deleted: {image_id}")
    if failed:
        raise typer.Exit(failed)


def register(app: typer.Typer) -> None:
    image = typer.Typer(
        name="image", help="Manage local images.", no_args_is_help=True, rich_markup_mode=None
    )

    @image.command(
        "import",
        help="Create an image from a root filesystem tarball.\n\n"
        "The tarball may be plain or compressed with gzip, xz, bzip2 "
        "or zstd. Prints the new image's id.\n\nExamples:\n\n"
        "  sandbox image import rootfs.tar.gz mydistro:1.0",
    )
    def import_(
        tarball: Path = typer.Argument(..., help="A tar archive of a root filesystem."),
        name: str | None = typer.Argument(
            None, help="NAME[:TAG]; 'busybox' is stored as localhost/busybox:latest."
        ),
        message: str = typer.Option(
            "imported from tarball",
            "--message",
            "-m",
            help="A comment recorded in the image's history.",
        ),
    ) -> None:
        image = _store().import_rootfs(tarball, name, comment=message)
        print(image.id)

    @image.command(
        "ls",
        help="List images.\n\nExamples:\n\n  sandbox image ls\n\n  sandbox images --format json",
    )
    def ls(
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only image ids."),
        format_: str = typer.Option("table", "--format", help="table or json."),
        no_trunc: bool = typer.Option(False, "--no-trunc", help="Print full image ids."),
    ) -> None:
        list_images(quiet, format_, no_trunc)

    @image.command(
        "rm",
        help="Remove images (untag a name when the image has others).\n\n"
        "Examples:\n\n  sandbox image rm busybox\n\n"
        "  sandbox rmi -f 1a2b3c",
    )
    def rm(
        images: list[str] = typer.Argument(..., help="Names or ids."),
        force: bool = typer.Option(
            False, "--force", "-f", help="Remove an image named by id even if it has several names."
        ),
    ) -> None:
        remove_images(images, force)

    @image.command(
        "tag", help="Add names to an image.\n\nExamples:\n\n  sandbox tag busybox busybox:stable"
    )
    def tag(
        source: str = typer.Argument(..., help="The image's name or id."),
        names: list[str] = typer.Argument(..., help="New NAME[:TAG]s."),
    ) -> None:
        store = _store()
        for name in names:
            store.tag(source, name)

    app.add_typer(image, name="image")
    app.command("images", help="List images (same as 'sandbox image ls').")(ls)
    app.command("rmi", help="Remove images (same as 'sandbox image rm').")(rm)
    app.command("tag", help="Add names to an image (same as 'sandbox image tag').")(tag)
