"""The demo's security set-up: a city PKI that knows the demo camera's key (so its evidence is
verified at arrival), and an admin API token for the person running the demo (printed once with a
sign-in link; the fleet refuses every request without a credential, on loopback too).

Demo only: the PKI's root key and the token file live in the demo's data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

CAMERA = "cam-demo-0001"
TOKEN_FILE = "admin-token"


def pki_dir(data_dir: Path) -> Path:
    return data_dir / "pki"


def prepare_pki(data_dir: Path) -> Path:
    """A city PKI (once) and a certificate for the demo camera's evidence key."""
    from agent.devicekey import load_or_create_key
    from fleet.pki import CityPKI
    from hw.keystore import build_csr

    directory = pki_dir(data_dir)
    pki = CityPKI.load(directory) if (directory / "pki.json").exists() else CityPKI.init(directory)
    camera_dir = data_dir / CAMERA
    camera_dir.mkdir(parents=True, exist_ok=True)
    key = load_or_create_key(camera_dir / "device_key.pem")
    if not any(c.subject == CAMERA and c.kind == "device" and not c.revoked for c in pki.certificates()):
        pki.sign_device_csr(build_csr(key, CAMERA), CAMERA)
    return directory


def prepare_admin_token(db_url: str, data_dir: Path) -> tuple[str, Path]:
    """An admin token for this demo run, kept in DATA_DIR/admin-token (0600) for scripts."""
    from fleet.auth.tokens import create_token

    path = data_dir / TOKEN_FILE
    token = create_token(db_url, "admin", f"demo-admin-{os.getpid()}", "7d")
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token, path
