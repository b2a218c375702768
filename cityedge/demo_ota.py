"""The demo's update: a release repository with two releases, one device under the launcher, and
the fleet told to move it to the second release once it is online.

Release 0.1.0 carries the project's wheel, a notes file and the cabinet I/O board's firmware; 0.1.1
changes the notes and the firmware's version, so the device downloads a few small objects (content
addressing), passes its health gate, flashes its (simulated) I/O board and commits. The
repository's offline keys live beside it in the demo's data directory, which is fine for a demo only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

DEVICE = "gw-demo-0001"
FIRST, SECOND = "0.1.0", "0.1.1"
WAIT_ONLINE_S = 180.0
SIM_SELECT = "id=*-sim-*"
SIM_OTA = ("--ota-fail", "0.03", "--ota-rollback", "0.02", "--ota-offline", "0.02",
           "--ota-seconds", "5..30", "--ota-offline-seconds", "10..40")  # fmt: skip
"""How the demo's simulated devices take an update: realistic times, a few failures (hil/sim/ota.py)."""


def repo_dir(data_dir: Path) -> Path:
    return data_dir / "releases" / "repo"


def prepare_releases(data_dir: Path) -> Path:
    """Create the repository and publish both releases (once; later starts reuse them)."""
    from fleet.releases.bundle import build_bundle
    from fleet.releases.repo import init_repo, publish
    from provisioning.firmware import build_firmware, firmware_version

    base = data_dir / "releases"
    repo, keys = repo_dir(data_dir), base / "offline-keys"
    if not (repo / "metadata" / "1.root.json").exists():
        init_repo(repo, keys)
    targets_key = sorted(keys.glob("targets-*.pem"))
    for version in (FIRST, SECOND):
        bundle = base / f"cityedge-{version}.tar"
        if not bundle.exists():
            notes = base / "src" / version / "NOTES.txt"
            notes.parent.mkdir(parents=True, exist_ok=True)
            notes.write_text(f"cityedge demo release {version}\n")
            fw_version = firmware_version() + ("" if version == FIRST else "+demo")
            firmware = base / "src" / version / "firmware"
            build_firmware(firmware, version=fw_version)
            build_bundle(
                version,
                bundle,
                sources=[("NOTES.txt", notes)],
                firmware=firmware,
                notes=f"demo release {version} (I/O board firmware {fw_version})",
            )
        publish(repo, bundle, targets_key)
    return repo


def ota_agent_argv(cli: tuple[str, ...], broker_url: str, http: str, data_dir: Path) -> list[str]:
    """Install the first release through the fleet's repository, then the launcher's command line."""
    root, agent_data = data_dir / DEVICE / "root", data_dir / DEVICE / "data"
    repository = f"http://{http}/tuf/"
    if not (root / "current").exists():
        trusted = repo_dir(data_dir) / "metadata" / "1.root.json"
        subprocess.run(
            [*cli, "agent", "ota", "init", "--root", str(root), "--repository", repository,
             "--trusted-root", str(trusted), "--version", FIRST, "--data-dir", str(agent_data)],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    config = data_dir / DEVICE / "agent.toml"
    config.write_text(
        "# Demo only: the demo fleet sends unsigned desired state.\n"
        "[commands]\nrequire_signature = false\n"
        f'[ota]\nenabled = true\nrepository_url = "{repository}"\nroot = "{root}"\nhealth_timeout_s = 60\n'
        '[iobus]\nport = "simulated"\nheartbeat_s = 1.0\n'
    )
    return [sys.executable, str(root / "launcher.py"), "--root", str(root), "--", "--config", str(config),
            "--device-id", DEVICE, "--role", "generic", "--broker", broker_url,
            "--data-dir", str(agent_data)]  # fmt: skip


def roll_out_later(http: str, stop: threading.Event, token_file: Path | None = None) -> threading.Thread:
    """Once the device is online in the fleet, set its desired release to the second one.

    The requests carry ``Authorization: Bearer`` with the API token in ``token_file`` (mode 0600;
    a release-manager or admin token: the fleet refuses requests without one)."""

    def work() -> None:
        from fleet.client import read_token_file

        headers = {"Authorization": f"Bearer {read_token_file(token_file)}"} if token_file else {}
        deadline = time.monotonic() + WAIT_ONLINE_S
        while not stop.wait(1.0) and time.monotonic() < deadline:
            probe = urllib.request.Request(f"http://{http}/api/devices/{DEVICE}", headers=headers)
            try:
                with urllib.request.urlopen(probe, timeout=3) as resp:
                    device = json.load(resp)
            except (OSError, urllib.error.URLError, ValueError):
                continue
            if not device.get("online"):
                continue
            body = json.dumps({"version": SECOND}).encode()
            request = urllib.request.Request(
                f"http://{http}/api/devices/{DEVICE}/release",
                data=body,
                method="PUT",
                headers={"Content-Type": "application/json", **headers},
            )
            try:
                with urllib.request.urlopen(request, timeout=5):
                    return
            except (OSError, urllib.error.URLError):
                continue

    thread = threading.Thread(target=work, name="demo-rollout", daemon=True)
    thread.start()
    return thread


def rollout_lines(cli: str, http: str, token_file: Path) -> list[str]:
    """The commands that roll the second release out over the simulated devices in waves, and
    watch it (the rollout halts by itself when too many of a wave fail)."""
    api = f"--api http://{http} --token-file {token_file}"
    return [
        f"Roll {SECOND} out over the simulated devices in waves (halts itself on failures):",
        f"  {cli} rollout start --release {SECOND} --select '{SIM_SELECT}' --waves 10%,50%,100% "
        f"--max-failure 10% --min-executed 3 --soak 30s {api}",
        f"  {cli} rollout status {api}",
    ]
