"""``cityedge release``: build bundles, run the signed release repository (keys, publish, withdraw,
list, status, re-sign). The operator's guide is docs/ota-repository.md."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet.releases.errors import ReleaseError

RepoOpt = Annotated[
    Path, typer.Option("--repo", help="Release repository folder (served by `fleet serve --releases`).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


class _RichReporter:
    """Draws the current step on stderr (a bar when its size is known, else a spinner)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task: Any = None

    def start(self, what: str, total: int | None = None) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(what, total=total)

    def advance(self, amount: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, amount)


@contextmanager
def _reporting(enabled: bool = True) -> Iterator[_RichReporter | None]:
    if not enabled:
        yield None
        return
    reporter = _RichReporter()
    with reporter.progress:
        yield reporter


def _run(action: Any) -> Any:
    try:
        return action()
    except ReleaseError as exc:
        raise _fail(str(exc)) from exc


def _emit(result: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(result, indent=2) if as_json else text)


def build_cmd(
    version: Annotated[str, typer.Option("--version", help="Release version, e.g. 1.4.2.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle file to write (an uncompressed tar).")],
    models: Annotated[
        list[str] | None, typer.Option("--models", help="Model registry name (repeatable).")
    ] = None,
    firmware: Annotated[
        Path | None, typer.Option("--firmware", help="I/O board firmware build (cityedge firmware build).")
    ] = None,
    file: Annotated[
        list[str] | None, typer.Option("--file", help="SLOTPATH=LOCALPATH: one more file (repeatable).")
    ] = None,
    project_wheel: Annotated[
        bool, typer.Option("--project-wheel/--no-project-wheel", help="Include this checkout's wheel.")
    ] = True,
    with_deps: Annotated[bool, typer.Option("--with-deps", help="Include dependency wheels (slow).")] = False,
    platform: Annotated[str, typer.Option("--platform", help="Device platform, e.g. linux_aarch64.")] = "any",
    notes: Annotated[str, typer.Option("--notes", help="Release notes.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Build a release bundle: manifest plus content-addressed files."""
    from fleet.releases.bundle import build_bundle

    sources: list[tuple[str, Path]] = []
    for pair in file or []:
        slot, sep, local = pair.partition("=")
        if not sep or not slot or not local:
            raise _fail(f"--file {pair!r} must be SLOTPATH=LOCALPATH, e.g. apps/kiosk.toml=./kiosk.toml")
        sources.append((slot, Path(local)))
    with _reporting(not as_json) as reporter:
        manifest = _run(
            lambda: build_bundle(
                version,
                out,
                sources=sources,
                project_wheel=project_wheel,
                with_deps=with_deps,
                models=models or [],
                firmware=firmware,
                notes=notes,
                platform=platform,
                reporter=reporter,
            )
        )
    summary = {
        "bundle": str(out),
        "version": manifest.version,
        "build_time": manifest.build_time,
        "files": len(manifest.files),
        "objects": len(manifest.objects()),
        "total_bytes": manifest.total_bytes,
    }
    _emit(
        summary,
        as_json,
        f"{out}: release {manifest.version}, {len(manifest.files)} files, {manifest.total_bytes} bytes",
    )


def keys_init_cmd(
    repo: RepoOpt,
    offline_keys: Annotated[
        Path, typer.Option("--offline-keys", help="Where root and targets keys go (e.g. a USB stick).")
    ],
    root_threshold: Annotated[int, typer.Option(help="Root signatures needed.")] = 1,
    root_keys: Annotated[int, typer.Option(help="Root keys to create.")] = 1,
    targets_threshold: Annotated[int, typer.Option(help="Targets signatures needed.")] = 1,
    targets_keys: Annotated[int, typer.Option(help="Targets keys to create.")] = 1,
    root_days: Annotated[float, typer.Option(help="Root metadata lifetime (days).")] = 365,
    targets_days: Annotated[float, typer.Option(help="Targets metadata lifetime (days).")] = 90,
    snapshot_days: Annotated[float, typer.Option(help="Snapshot metadata lifetime (days).")] = 7,
    timestamp_hours: Annotated[float, typer.Option(help="Timestamp metadata lifetime (hours).")] = 24,
    as_json: JsonOpt = False,
) -> None:
    """Create the repository and its keys (root/targets offline, snapshot/timestamp online)."""
    from fleet.releases.meta import Expiry
    from fleet.releases.repo import init_repo

    expiry = Expiry(
        root=timedelta(days=root_days),
        targets=timedelta(days=targets_days),
        snapshot=timedelta(days=snapshot_days),
        timestamp=timedelta(hours=timestamp_hours),
    )
    result = _run(
        lambda: init_repo(
            repo,
            offline_keys,
            root_threshold=root_threshold,
            root_keys=root_keys,
            targets_threshold=targets_threshold,
            targets_keys=targets_keys,
            expiry=expiry,
        )
    )
    lines = [f"repository created in {repo}; devices trust {result['root']} (install it at provisioning)"]
    lines += [f"  {role} key: {path}" for role, paths in result["keys"].items() for path in paths]
    lines.append(f"unplug {offline_keys} and keep it safe: root and targets keys are offline keys")
    _emit(result, as_json, "\n".join(lines))


def keys_rotate_cmd(
    repo: RepoOpt,
    role: Annotated[str, typer.Option("--role", help="root, targets, snapshot or timestamp.")],
    root_key: Annotated[list[Path], typer.Option("--root-key", help="Current root key file (repeatable).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="New private key file (root and targets; outside the repository)."),
    ] = None,
    retire: Annotated[str | None, typer.Option("--retire", help="Key id (prefix) to replace.")] = None,
    role_key: Annotated[
        list[Path] | None, typer.Option("--role-key", help="Other current keys of the role (threshold > 1).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Replace a role's key through a new root version."""
    from fleet.releases.repo import rotate

    result = _run(lambda: rotate(repo, role, root_key, out, retire=retire, role_keys=role_key or []))
    _emit(
        result,
        as_json,
        f"{role} key {result['retired'][:12]} replaced by {result['keyid'][:12]} ({result['key_file']}); "
        f"root is now version {result['root_version']}",
    )


def publish_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle file from `release build`.")],
    repo: RepoOpt,
    targets_key: Annotated[list[Path], typer.Option("--targets-key", help="Targets key file (repeatable).")],
    as_json: JsonOpt = False,
) -> None:
    """Publish a bundle: copy its files and sign new targets, snapshot and timestamp."""
    from fleet.releases.repo import publish

    with _reporting(not as_json) as reporter:
        result = _run(lambda: publish(repo, bundle, targets_key, reporter=reporter))
    text = f"release {result['version']} published ({result['objects_copied']} new objects)"
    if not result["changed"]:
        text = f"release {result['version']} was already published with this content: nothing changed"
    _emit(result, as_json, text)


def withdraw_cmd(
    version: Annotated[str, typer.Argument(help="Release version to withdraw.")],
    repo: RepoOpt,
    targets_key: Annotated[list[Path], typer.Option("--targets-key", help="Targets key file (repeatable).")],
    as_json: JsonOpt = False,
) -> None:
    """Withdraw a release (e.g. a vulnerable one): devices no longer find it."""
    from fleet.releases.repo import withdraw

    result = _run(lambda: withdraw(repo, version, targets_key))
    _emit(result, as_json, f"release {version} withdrawn (targets version {result['targets_version']})")


def list_cmd(repo: RepoOpt, as_json: JsonOpt = False) -> None:
    """List the published releases."""
    from fleet.releases.repo import list_releases

    rows = _run(lambda: list_releases(repo))
    lines = [
        f"{r['version']:<16} {r['build_time'] or '':<26} {r['files'] or 0:>5} files "
        f"{r['total_bytes'] or 0:>12} bytes"
        for r in rows
    ]
    _emit(rows, as_json, "\n".join(lines) or "no releases published")


def status_cmd(repo: RepoOpt, as_json: JsonOpt = False) -> None:
    """Show each role's version, expiry, threshold and key ids."""
    from fleet.releases.repo import expiry_warnings, status

    result = _run(lambda: status(repo))
    lines = [
        f"{role:<10} v{info['version']:<5} expires {info['expires']}  "
        f"{info['threshold']}-of-{len(info['keyids'])} {'online' if info['online'] else 'offline'}  "
        f"keys {' '.join(k[:12] for k in info['keyids'])}"
        for role, info in result.items()
    ]
    lines += [f"warning: {note}" for note in _run(lambda: expiry_warnings(repo))]
    _emit(result, as_json, "\n".join(lines))


def resign_cmd(
    repo: RepoOpt,
    role: Annotated[str, typer.Option("--role", help="root or targets.")],
    key: Annotated[list[Path], typer.Option("--key", help="Key file of that role (repeatable).")],
    as_json: JsonOpt = False,
) -> None:
    """Sign a new version of root or targets with a fresh expiry (before it expires)."""
    from fleet.releases.repo import resign

    result = _run(lambda: resign(repo, role, key))
    _emit(result, as_json, f"{role} re-signed: version {result['version']}")


def register(app: typer.Typer) -> None:
    release = typer.Typer(
        name="release",
        help="Signed releases: build bundles and run the TUF release repository.",
        no_args_is_help=True,
    )
    release.command("build")(build_cmd)
    release.command("publish")(publish_cmd)
    release.command("withdraw")(withdraw_cmd)
    release.command("list")(list_cmd)
    release.command("status")(status_cmd)
    release.command("resign")(resign_cmd)
    keys = typer.Typer(
        name="keys", help="Create and rotate the repository's signing keys.", no_args_is_help=True
    )
    keys.command("init")(keys_init_cmd)
    keys.command("rotate")(keys_rotate_cmd)
    release.add_typer(keys, name="keys")
    app.add_typer(release, name="release")
