"""``cityedge models list|verify|add``: inspect and extend the model registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from models.registry import (
    REGISTRY_FILE,
    InputSpec,
    ModelError,
    ModelSpec,
    Registry,
    default_models_dir,
    file_sha256,
)

_REGISTRY_OPT = typer.Option(None, "--registry", help="Registry TOML file (default: the packaged one).")
_DIR_OPT = typer.Option(
    None, "--models-dir", help="Models folder (default: $CITYEDGE_MODELS_DIR or ../shared/models)."
)
_JSON_OPT = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _load(registry: Path | None, models_dir: Path | None) -> Registry:
    try:
        return Registry.load(registry, models_dir=models_dir)
    except ModelError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _summary(reg: Registry, name: str) -> dict[str, Any]:
    spec = reg.spec(name)
    try:
        location: str | None = str(reg.location(name))
    except ModelError:
        location = None
    return {
        "name": name,
        "task": spec.task,
        "file": spec.file,
        "base": spec.base,
        "path": location,
        "sha256": spec.sha256,
        "input": spec.input.model_dump(mode="json"),
        "labels": len(spec.labels),
        "licence": spec.licence,
        "source": spec.source,
    }


def _list(
    registry: Path | None = _REGISTRY_OPT, models_dir: Path | None = _DIR_OPT, as_json: bool = _JSON_OPT
) -> None:
    """List registered models."""
    reg = _load(registry, models_dir)
    rows = [_summary(reg, name) for name in reg.names()]
    if as_json:
        typer.echo(json.dumps({"models_dir": str(reg.models_dir), "models": rows}, indent=2))
        return
    for row in rows:
        size = f"{row['input']['width']}x{row['input']['height']}"
        typer.echo(f"{row['name']:<12} {row['task']:<17} {size:<8} {row['licence']:<11} {row['sha256'][:12]}")
        typer.echo(f"             {row['path']}")


def _verify(
    names: list[str] = typer.Argument(None, help="Models to check (default: all)."),
    registry: Path | None = _REGISTRY_OPT,
    models_dir: Path | None = _DIR_OPT,
    as_json: bool = _JSON_OPT,
) -> None:
    """Check that each model file exists and matches its pinned sha256 (exit 1 if any does not)."""
    reg = _load(registry, models_dir)
    try:
        reports = [reg.verify(name) for name in (names or reg.names())]
    except ModelError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps({"ok": all(r["ok"] for r in reports), "models": reports}, indent=2))
    else:
        for report in reports:
            typer.echo(
                f"{'ok  ' if report['ok'] else 'FAIL'} {report['name']}: {report['error'] or report['path']}"
            )
    if not all(r["ok"] for r in reports):
        raise typer.Exit(1)


def _add(
    name: str = typer.Argument(..., help="Registry name (letters, digits, '_')."),
    file: Path = typer.Option(..., "--file", help="The model file; must be inside the models folder."),
    task: str = typer.Option(
        "detection", "--task", help="detection, text_detection, text_recognition, text_direction."
    ),
    licence: str = typer.Option(..., "--licence", help="Licence of the weights (SPDX id)."),
    source: str = typer.Option(..., "--source", help="Where the file comes from."),
    width: int = typer.Option(416, "--width", help="Input width."),
    height: int = typer.Option(416, "--height", help="Input height."),
    colour: str = typer.Option("BGR", "--colour", help="BGR, RGB or GRAY."),
    labels_from: str | None = typer.Option(
        None, "--labels-from", help="Copy labels from this registered model."
    ),
    registry: Path | None = _REGISTRY_OPT,
    models_dir: Path | None = _DIR_OPT,
    as_json: bool = _JSON_OPT,
) -> None:
    """Register a model file: pins its sha256 and appends an entry to the registry file."""
    target = registry or REGISTRY_FILE
    reg = _load(target, models_dir)
    base_dir = (models_dir or default_models_dir()).resolve()
    path = file.resolve()
    try:
        relative = path.relative_to(base_dir)
    except ValueError:
        typer.echo(f"error: {file} is not inside the models folder {base_dir}; put it there first", err=True)
        raise typer.Exit(2) from None
    if name in reg.specs:
        typer.echo(f"error: a model named {name!r} is already registered", err=True)
        raise typer.Exit(2)
    if not path.is_file():
        typer.echo(f"error: {file} does not exist", err=True)
        raise typer.Exit(2)
    try:
        labels = reg.spec(labels_from).labels if labels_from else []
        spec = ModelSpec.model_validate(
            {
                "name": name,
                "file": relative.as_posix(),
                "sha256": file_sha256(path),
                "task": task,
                "input": InputSpec.model_validate({"width": width, "height": height, "colour": colour}),
                "labels": labels,
                "licence": licence,
                "source": source,
            }
        )
    except (ValueError, ModelError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    _append(target, spec)
    if as_json:
        typer.echo(json.dumps({"added": spec.model_dump(mode="json"), "registry": str(target)}, indent=2))
    else:
        typer.echo(f"added {name} ({spec.sha256}) to {target}")


def _append(path: Path, spec: ModelSpec) -> None:
    import tomli_w

    entry = spec.model_dump(mode="json", exclude={"name", "input", "card"}, exclude_none=True)
    text = tomli_w.dumps({"models": {spec.name: entry}})
    text += tomli_w.dumps({"models": {spec.name: {"input": spec.input.model_dump(mode="json")}}})
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    separator = (
        "" if not existing or existing.endswith("\n\n") else ("\n" if existing.endswith("\n") else "\n\n")
    )
    path.write_text(existing + separator + text, encoding="utf-8")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Model registry: list, verify (sha256) and add models.", no_args_is_help=True)
    group.command("list")(_list)
    group.command("verify")(_verify)
    group.command("add")(_add)
    app.add_typer(group, name="models")
