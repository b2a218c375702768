"""``cityedge agent ota status|check|init``: the updater from a terminal on the device.

``status`` and ``check`` ask the running agent through its local API (``status`` falls back to the
files when the agent is down). ``init`` prepares a slot root at provisioning: it fetches a release
through the same TUF client, fetcher and installer as an update, installs it into slot ``a``,
points ``current`` at it, stores the root of trust and copies the launcher beside the slots.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.errors import LocalApiError
from agent.localapi import LocalApiClient
from agent.ota import launcher as boot
from agent.ota.errors import OtaError
from agent.ota.wiring import TRUST_FILE
from agent.state import read_json

DataDir = Annotated[Path, typer.Option("--data-dir", help="The agent's data directory.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"cityedge agent ota: {message}", err=True)
    return typer.Exit(code)


def _print(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info, indent=1, sort_keys=True, default=str))
        return
    running = info.get("running") or {}
    state = info.get("state") or {}
    target = state.get("target") or {}
    lines = [
        f"running: {running.get('version', '?')} (slot {running.get('slot') or '-'})",
        f"desired: {(info.get('desired') or {}).get('version', '-')}",
        f"phase:   {state.get('phase', '?')}" + (f" -> {target.get('version')}" if target else ""),
    ]
    if state.get("bytes_total"):
        lines.append(f"download: {state.get('bytes_done', 0)} of {state['bytes_total']} bytes")
    if state.get("waiting"):
        lines.append(f"waiting: {state['waiting']}")
    if state.get("blocked"):
        blocked = state["blocked"]
        lines.append(f"not retried: {blocked.get('version')} ({blocked.get('reason')})")
    last = state.get("last") or info.get("last_boot_outcome")
    if last:
        lines.append(
            f"last: {last.get('outcome')} {last.get('from')} -> {last.get('to')} {last.get('reason') or ''}"
        )
    if info.get("locks"):
        lines.append(f"locks: {', '.join(info['locks'])}")
    typer.echo("\n".join(lines))


def status(data_dir: DataDir, as_json: AsJson = False) -> None:
    """What the updater is doing (from the running agent, or from its files when it is down)."""
    try:
        info = dict(LocalApiClient(data_dir, timeout=10).call("ota_status"))
    except LocalApiError as exc:
        stored = read_json(data_dir / "ota.json")
        info = {"agent": f"not answering ({exc})", "state": stored.get("state") or {}}
    _print(info, as_json)


def check(
    data_dir: DataDir,
    force: Annotated[
        bool, typer.Option("--force", help="Ignore locks, windows and an earlier failure.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Fetch the repository's metadata now and start the desired update if one is due."""
    try:
        info = dict(LocalApiClient(data_dir, timeout=120).call("ota_check", timeout=120, force=force))
    except LocalApiError as exc:
        raise _fail(str(exc)) from None
    _print(info, as_json)


def init(
    root: Annotated[Path, typer.Option("--root", help="Slot root to prepare, e.g. /opt/cityedge.")],
    repository: Annotated[
        str, typer.Option("--repository", help="The fleet's TUF URL, e.g. http://fleet:8080/tuf/.")
    ],
    trusted_root: Annotated[
        Path, typer.Option("--trusted-root", help="root.json of the city's release repository.")
    ],
    version: Annotated[str, typer.Option("--version", help="Release to install first.")],
    data_dir: DataDir = Path("/var/lib/cityedge/agent"),
) -> None:
    """Install the first release into slot a and set up the launcher (provisioning)."""
    from agent.ota.fetch import ObjectFetcher
    from agent.ota.slots import SlotInstaller
    from agent.ota.tufclient import ReleaseClient
    from protocol.release import manifest_target

    base = repository if repository.endswith("/") else repository + "/"
    try:
        trust = trusted_root.read_bytes()
        (root / "slots").mkdir(parents=True, exist_ok=True)
        client = ReleaseClient(base, data_dir / "tuf" / "metadata", data_dir / "tuf" / "targets", trust)
        client.refresh()
        manifest, raw = client.manifest(manifest_target(version))
        if manifest.version != version:
            raise _fail(f"the repository's target for {version} holds {manifest.version}")
        installer = SlotInstaller(root)
        fetcher = ObjectFetcher(base + "targets/", timeout_s=30.0, retries=5, stop=threading.Event())
        staging = root / "staging" / "objects"
        for sha, length in sorted(installer.missing_objects(manifest).items()):
            fetcher.fetch(sha, length, staging / sha)
        slot_dir = installer.install(manifest, raw)
        boot.switch_current(root, slot_dir.name)
        installer.discard_staging()
        (root / TRUST_FILE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trusted_root, root / TRUST_FILE)
        shutil.copyfile(Path(boot.__file__), root / "launcher.py")
        if not (root / boot.BOOT_FILE).exists():
            boot.write_boot(root, {"pending": None, "last": None})
    except OtaError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot prepare {root}: {exc.strerror or exc}") from None
    typer.echo(
        f"installed {version} in {slot_dir}; start the device with: "
        f"python3 {root}/launcher.py --root {root} -- --config ..."
    )


def register(agent_app: typer.Typer) -> None:
    ota = typer.Typer(name="ota", help="Over-the-air updates on this device.", no_args_is_help=True)
    ota.command("status")(status)
    ota.command("check")(check)
    ota.command("init")(init)
    agent_app.add_typer(ota, name="ota")
