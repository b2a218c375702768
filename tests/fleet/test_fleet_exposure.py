"""Transport and exposure: HTTPS with the city PKI's server certificate; plain HTTP refused on a
non-loopback address unless --insecure, which then warns at every start."""

from __future__ import annotations

import logging
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fleet_helpers import wait_for

from fleet.broker import MosquittoBroker, free_port
from fleet.config import FleetConfigError
from fleet.pki import CityPKI
from fleet.serve import HttpTls, check_exposure

CLI = [sys.executable, "-c", "import sys; from cityedge.cli import main; sys.argv[0] = 'cityedge'; main()"]


def test_plain_http_only_on_loopback_unless_insecure(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(host, None)
    with pytest.raises(FleetConfigError, match="without TLS: give --tls-cert and --tls-key"):
        check_exposure("0.0.0.0", None)
    with pytest.raises(FleetConfigError, match="without TLS"):
        check_exposure("10.1.2.3", HttpTls())
    with caplog.at_level(logging.WARNING, logger="fleet.serve"):
        check_exposure("0.0.0.0", HttpTls(insecure=True))
    assert "INSECURE" in caplog.text
    with pytest.raises(FleetConfigError, match="go together"):
        check_exposure("0.0.0.0", HttpTls(cert=tmp_path / "c.pem"))
    with pytest.raises(FleetConfigError, match="no such file"):
        check_exposure("0.0.0.0", HttpTls(cert=tmp_path / "c.pem", key=tmp_path / "k.pem"))


def test_serve_refuses_a_public_address_without_tls(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "fleet", "serve", "--http", f"0.0.0.0:{free_port()}", "--db", f"sqlite:///{tmp_path}/f.db",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "without TLS" in done.stderr and "--tls-cert" in done.stderr


def test_serves_https_with_the_city_pki_certificate(tmp_path: Path, broker: MosquittoBroker) -> None:
    pki = CityPKI.init(tmp_path / "pki")
    issued = subprocess.run(
        [*CLI, "fleet", "pki", "server", "--pki", str(tmp_path / "pki"), "--host", "127.0.0.1",
         "--host", "localhost", "--out", str(tmp_path / "https")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    cert, key = tmp_path / "https" / "cert.pem", tmp_path / "https" / "key.pem"
    assert key.stat().st_mode & 0o077 == 0
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "fleet", "serve", "--broker", broker.url, "--http", f"127.0.0.1:{port}",
         "--db", f"sqlite:///{tmp_path}/f.db", "--data-dir", str(tmp_path / "fleet"),
         "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    trust = ssl.create_default_context(cadata=pki.trust_bundle_pem().decode())
    try:

        def healthy() -> bool:
            try:
                return (
                    httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=2).status_code == 200
                )
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, "the fleet over HTTPS")
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not spoken on that port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        assert httpx.get(f"https://127.0.0.1:{port}/api/devices", verify=trust, timeout=5).status_code == 401
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
