"""``python -m bench`` (``make bench``): run every benchmark in turn; each prints its own figures.

``python -m bench NAME ...`` runs only those (e.g. ``agent_enqueue fleet_ingest``).
"""

from __future__ import annotations

import subprocess
import sys

ALL = (
    "agent_enqueue",
    "agent_throughput",
    "agent_idle",
    "fleet_ingest",
    "fleet_auth",
    "fleet_devices",
    "fleet_scale",
    "rollout_wave",
    "tls_connect",
    "command_verify",
    "camera_detector",
    "camera_motion",
    "camera_pipeline",
    "camera_dense",
    "kiosk_ui",
    "kiosk_docpage",
    "ota_verify",
    "ota_install",
    "ota_patch",
    "iobus_roundtrip",
)


def main(argv: list[str]) -> int:
    names = argv or list(ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ALL)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        if subprocess.call([sys.executable, "-m", f"bench.{name}"]) != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
