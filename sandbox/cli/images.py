"""Image commands: import, ls (images), rm (rmi), tag, inspect, prune, pull, push, save, load,
login and logout.

The engine (sandbox.images.store) is imported inside each command, so registering these
commands costs nothing at start-up.
"""

from __future__ import annotations

import contextlib
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


def parse_bool(option: str, value: str | None) -> bool | None:
    """--tls-verify=false style values; None when the option was not given."""
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    from sandbox.errors import UsageError

    raise UsageError(f"invalid {option} {value!r}", hint=f"use {option}=true or {option}=false")


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
        "Digest": image.digest,
        "RepoDigests": list(image.repo_digests),
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


def _alias_help(group: typer.Typer, name: str) -> str:
    """A top-level alias shows the same help (examples included) as `sandbox image NAME`."""
    info = next(c for c in group.registered_commands if c.name == name)
    return f"{info.help}\n\nSame as 'sandbox image {name}'."


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

    _register_registry_commands(app, image)
    app.add_typer(image, name="image")
    app.command("images", help=_alias_help(image, "ls"))(ls)
    app.command("rmi", help=_alias_help(image, "rm"))(rm)
    app.command("tag", help=_alias_help(image, "tag"))(tag)
    app.command("import", help=_alias_help(image, "import"))(import_)


def _register_registry_commands(app: typer.Typer, image: typer.Typer) -> None:
    @image.command(
        "pull",
        help="Pull an image from a registry.\n\nShort names resolve through aliases and "
        "unqualified-search-registries in ~/.config/sandbox/registries.yaml; never a prompt."
        "\n\nExamples:\n\n  sandbox pull debian:bookworm\n\n"
        "  sandbox pull --tls-verify=false 127.0.0.1:5000/library/busybox",
    )
    def pull(
        name: str = typer.Argument(..., help="REGISTRY/PATH[:TAG][@DIGEST] or a short name."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
        tls_verify: str = typer.Option(
            None, "--tls-verify", help="false: allow plain HTTP and unverified TLS."
        ),
        platform: str = typer.Option(None, "--platform", help="OS/ARCH[/VARIANT] to pull."),
    ) -> None:
        from sandbox.images import pull as pulling

        result = pulling.pull(
            _store(),
            name,
            tls_verify=parse_bool("--tls-verify", tls_verify),
            platform=platform,
            progress=pulling.progress_mode(quiet),
        )
        print(result.id)

    @image.command(
        "push",
        help="Push an image to a registry.\n\nExamples:\n\n"
        "  sandbox push myimage 127.0.0.1:5000/me/myimage:1.0 --tls-verify=false",
    )
    def push(
        source: str = typer.Argument(..., help="The image's name or id."),
        dest: str = typer.Argument(None, help="REGISTRY/PATH[:TAG]; default: SOURCE."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
        tls_verify: str = typer.Option(
            None, "--tls-verify", help="false: allow plain HTTP and unverified TLS."
        ),
    ) -> None:
        from sandbox.images import push as pushing

        pushing.push(
            _store(),
            source,
            dest or source,
            tls_verify=parse_bool("--tls-verify", tls_verify),
            quiet=quiet,
        )

    @image.command(
        "inspect",
        help="Show images' config, layers and digests as JSON.\n\n"
        "Examples:\n\n  sandbox image inspect debian",
    )
    def inspect(images: list[str] = typer.Argument(..., help="Names or ids.")) -> None:
        import json

        store = _store()
        out = []
        for name in images:
            found = store.lookup(name)
            config: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                config = json.loads(store.blob_path("sha256:" + found.id).read_bytes())
            out.append(
                {
                    **image_json(found),
                    "Architecture": config.get("architecture"),
                    "Os": config.get("os"),
                    "Config": config.get("config") or {},
                    "RootFS": config.get("rootfs") or {},
                    "History": config.get("history") or [],
                }
            )
        print(json.dumps(out, indent=4))

    @image.command(
        "prune",
        help="Remove images without a name (-a: every image no container uses) and "
        "what killed pulls left behind.\n\nExamples:\n\n  sandbox image prune\n\n"
        "  sandbox image prune -a",
    )
    def prune(
        all_: bool = typer.Option(False, "--all", "-a", help="Also images that have names."),
    ) -> None:
        from sandbox import config
        from sandbox.runtime.state import ContainerStore

        store = _store()
        settings = config.load()
        used = {c.image_id for c in ContainerStore(settings.containers_root).list()}
        for found in store.images():
            if found.id in used or (found.names and not all_):
                continue
            store.remove(found.id, force=True)
            print(found.id)
        store.cleanup()

    @image.command(
        "save",
        help="Write an image to an archive.\n\nExamples:\n\n"
        "  sandbox save -o debian.tar debian\n\n"
        "  sandbox save --format oci-archive -o debian.oci.tar debian",
    )
    def save(
        name: str = typer.Argument(..., help="The image's name or id."),
        output: Path = typer.Option(..., "--output", "-o", help="The archive to write."),
        format_: str = typer.Option(
            "docker-archive", "--format", help="docker-archive or oci-archive."
        ),
    ) -> None:
        from sandbox.images import image_archive

        image_archive.save(_store(), name, output, format_)

    @image.command(
        "load",
        help="Load images from a docker-archive, an OCI archive or an OCI layout directory."
        "\n\nExamples:\n\n  sandbox load -i debian.tar",
    )
    def load(
        input_: Path = typer.Option(..., "--input", "-i", help="Archive or OCI layout dir."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only image ids."),
    ) -> None:
        from sandbox.images import image_archive

        for loaded in image_archive.load(_store(), input_):
            if quiet:
                print(loaded.id)
            else:
                print(f"Loaded image: {', '.join(loaded.names) or loaded.id}")

    @app.command(
        "login",
        help="Store credentials for a registry (0600, in podman's auth.json).\n\n"
        'Examples:\n\n  echo "$TOKEN" | sandbox login -u me --password-stdin ghcr.io',
    )
    def login(
        registry: str = typer.Argument(..., help="REGISTRY[:PORT]"),
        username: str = typer.Option(None, "--username", "-u", help="User name."),
        password: str = typer.Option(None, "--password", "-p", help="Password (prefer stdin)."),
        password_stdin: bool = typer.Option(
            False, "--password-stdin", help="Read the password from standard input."
        ),
        tls_verify: str = typer.Option(
            None, "--tls-verify", help="false: allow plain HTTP and unverified TLS."
        ),
    ) -> None:
        import getpass
        import sys

        from sandbox.errors import UsageError
        from sandbox.images import auth
        from sandbox.images.registries import Endpoint
        from sandbox.images.registry import Client

        if username is None:
            if not sys.stdin.isatty():
                raise UsageError("login needs --username", hint="sandbox login -u NAME REGISTRY")
            username = input("Username: ")
        if password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        elif password is None:
            password = getpass.getpass("Password: ")
        insecure = parse_bool("--tls-verify", tls_verify) is False
        credentials = auth.Credentials(username, password)
        client = Client(Endpoint(registry, "", insecure=insecure))
        client._credentials = credentials
        client.check()
        auth.store(registry, credentials)
        print("Login Succeeded!")

    @app.command(
        "logout",
        help="Forget the credentials stored for a registry.\n\nExamples:\n\n"
        "  sandbox logout ghcr.io",
    )
    def logout(registry: str = typer.Argument(..., help="REGISTRY[:PORT]")) -> None:
        from sandbox.errors import UsageError
        from sandbox.images import auth

        if not auth.remove(registry):
            raise UsageError(f"not logged in to {registry}")
        print(f"Removed login credentials for {registry}")

    for command, function in (
        ("pull", pull),
        ("push", push),
        ("save", save),
        ("load", load),
    ):
        app.command(command, help=_alias_help(image, command))(function)
