"""``fleet.audit``: each check on purpose-built PKI states, and the CLI's exit code."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from fleet.audit import has_high, run_audit
from fleet.pki import CityPKI
from fleet.pki_cli import build_app
from hw.keystore import FileKeyStore
from protocol.timefmt import utc_now


def _enrol(pki: CityPKI, tmp_path: Path, device: str, days: int = 365) -> FileKeyStore:
    store = FileKeyStore.create(tmp_path / "keys" / f"{device}.pem", algorithm="p256")
    pki.sign_device_csr(store.csr(device), device, days=days)
    return store


def _checks(findings: list) -> set[tuple[str, str, str]]:  # type: ignore[type-arg]
    return {(f.check, f.severity, f.subject) for f in findings}


def test_healthy_pki_has_no_findings(city_pki: CityPKI, tmp_path: Path) -> None:
    _enrol(city_pki, tmp_path, "kiosk-hn-0001")
    city_pki.issue_service_identity("fleet-ingest")
    assert run_audit(city_pki, connected=["kiosk-hn-0001"]) == []


def test_expiring_certificates(city_pki: CityPKI, tmp_path: Path, pki_in_the_past: Any) -> None:
    past = pki_in_the_past(city_pki, 5)
    _enrol(past, tmp_path, "soon-0001", days=10)  # 5 days left
    _enrol(past, tmp_path, "later-0001", days=25)  # 20 days left
    _enrol(past, tmp_path, "gone-0001", days=2)  # expired
    _enrol(past, tmp_path, "renewed-0001", days=8)
    _enrol(city_pki, tmp_path / "r", "renewed-0001")  # renewed since: no finding
    got = _checks(run_audit(city_pki))
    assert got == {
        ("cert-expiring", "high", "soon-0001"),
        ("cert-expiring", "medium", "later-0001"),
        ("cert-expired", "medium", "gone-0001"),
    }


def test_revoked_but_connected(city_pki: CityPKI, tmp_path: Path) -> None:
    for device in ("stolen-0001", "back-0001", "fine-0001"):
        _enrol(city_pki, tmp_path, device)
    city_pki.revoke("stolen-0001", "stolen")
    city_pki.revoke("back-0001", "lost")
    _enrol(city_pki, tmp_path / "again", "back-0001")  # found and re-enrolled
    connected = ["stolen-0001", "back-0001", "fine-0001", "ghost-0001"]
    findings = run_audit(city_pki, connected=lambda: iter(connected))
    assert _checks(findings) == {
        ("revoked-but-connected", "high", "stolen-0001"),
        ("unknown-connected", "medium", "ghost-0001"),
    }
    assert has_high(findings)


def test_shared_and_weak_keys_in_the_inventory(city_pki: CityPKI, tmp_path: Path) -> None:
    _enrol(city_pki, tmp_path, "clone-a-0001")
    [record] = city_pki.certificates()
    # Legacy certificates imported from the pilot's PKI, which did not refuse these:
    city_pki.inventory.add(replace(record, serial=record.serial + 1, subject="clone-b-0001"))
    city_pki.inventory.add(
        replace(record, serial=record.serial + 2, subject="old-0001", fingerprint="ff", key_type="rsa-1024")
    )
    got = _checks(run_audit(city_pki))
    assert ("shared-key", "high", "clone-a-0001,clone-b-0001") in got
    assert ("weak-key", "high", "old-0001") in got


def test_ca_expiring(tmp_path: Path) -> None:
    pki = CityPKI.init(tmp_path / "pki", root_days=300, issuing_days=20)
    assert _checks(run_audit(pki)) == {
        ("ca-expiring", "high", "issuing-ca"),
        ("ca-expiring", "medium", "root-ca"),
    }


def test_crl_checks(city_pki: CityPKI, tmp_path: Path) -> None:
    _enrol(city_pki, tmp_path, "stolen-0001")
    broker_copy = tmp_path / "broker-crl.pem"
    shutil.copy(city_pki.directory / "crl.pem", broker_copy)
    city_pki.revoke("stolen-0001", "stolen")  # the broker copy is now outdated
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a crl")
    paths = [city_pki.directory / "crl.pem", broker_copy, garbage, tmp_path / "absent.pem"]
    got = _checks(run_audit(city_pki, crl_paths=paths))
    assert got == {
        ("crl-outdated", "high", str(broker_copy)),
        ("crl-invalid", "high", str(garbage)),
        ("crl-missing", "high", str(tmp_path / "absent.pem")),
    }
    later = _checks(run_audit(city_pki, now=utc_now() + timedelta(days=8)))
    assert ("crl-stale", "high", str(city_pki.directory / "crl.pem")) in later
    soon = _checks(run_audit(city_pki, now=utc_now() + timedelta(days=6, hours=12)))
    assert ("crl-stale", "medium", str(city_pki.directory / "crl.pem")) in soon


def test_audit_cli_exit_code_and_json(city_pki: CityPKI, tmp_path: Path) -> None:
    runner = CliRunner()
    pki_dir = str(city_pki.directory)
    _enrol(city_pki, tmp_path, "stolen-0001")
    ok = runner.invoke(build_app(), ["audit", "--pki", pki_dir, "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output) == []
    city_pki.revoke("stolen-0001", "stolen")
    connected = tmp_path / "online.txt"
    connected.write_text("stolen-0001\n")
    bad = runner.invoke(build_app(), ["audit", "--pki", pki_dir, "--json", "--connected", str(connected)])
    assert bad.exit_code == 1
    [finding] = json.loads(bad.output)
    assert finding["check"] == "revoked-but-connected" and finding["severity"] == "high"
    text = runner.invoke(build_app(), ["audit", "--pki", pki_dir, "--connected", "-"], input="stolen-0001\n")
    assert text.exit_code == 1 and "revoked but still connected" in text.output
