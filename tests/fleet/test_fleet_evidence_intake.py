"""Evidence checked at arrival: the pure decision (``check_arrival``) and the writer around it."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.evidence import (
    DeviceKey,
    DeviceKeys,
    EvidenceError,
    EvidenceIntake,
    EvidenceRefused,
    EvidenceSignatureError,
    EvidenceStore,
    EvidenceUnavailable,
    check_arrival,
)
from fleet.inbound import Received
from fleet.stats import IngestStats
from fleet.store import Store
from fleet.writer import BatchWriter
from protocol.signing import sign
from protocol.timefmt import format_ts
from protocol.topics import Topics

DEVICE = "cam-hn-in-0001"
NOW = datetime(2027, 5, 1, 12, tzinfo=timezone.utc)
IMAGE = b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9"
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def device_key(
    key: Ed25519PrivateKey, serial: int = 1, days_left: float = 300, around: datetime = NOW
) -> DeviceKey:
    since, until = around - timedelta(days=30), around + timedelta(days=days_left)
    return DeviceKey(serial, f"fp{serial}", key.public_key(), since, until)


def keys(*entries: DeviceKey, issued: int | None = None, revoked: bool = False) -> DeviceKeys:
    count = len(entries) if issued is None else issued
    return DeviceKeys(DEVICE, issued=count, revoked=revoked, keys=entries)


def envelope(key: Ed25519PrivateKey = KEY, *, at: datetime = NOW, kid: str = DEVICE) -> dict[str, Any]:
    image = {
        "role": "vehicle",
        "sha256": hashlib.sha256(IMAGE).hexdigest(),
        "bytes": len(IMAGE),
        "store": "inline",
        "data": base64.b64encode(IMAGE).decode("ascii"),
    }
    body = {
        "id": uuid.uuid4().hex,
        "seq": 7,
        "ts": format_ts(at),
        "device": DEVICE,
        "kind": "traffic.violation",
        "data": {
            "camera": "cam-1",
            "rule": "wrong_way",
            "plate": {"text": "29-B1 123.45"},
            "images": [image],
        },
    }
    return sign(body, key, kid)


def nothing(_sha: str) -> bytes | None:
    return None


def test_a_valid_violation_is_accepted_with_its_certificate() -> None:
    report = check_arrival(envelope(), keys(device_key(OTHER, 1), device_key(KEY, 2)), nothing)
    assert report.serial == 2 and report.fingerprint == "fp2"
    assert report.images == [
        {"role": "vehicle", "sha256": hashlib.sha256(IMAGE).hexdigest(), "bytes": len(IMAGE)}
    ]
    assert report.blobs == {hashlib.sha256(IMAGE).hexdigest(): IMAGE}


def test_refusals_say_why() -> None:
    with pytest.raises(EvidenceRefused, match="no certificate from the city PKI"):
        check_arrival(envelope(), keys(), nothing)
    with pytest.raises(EvidenceRefused, match="is revoked"):
        check_arrival(envelope(), keys(issued=2, revoked=True), nothing)
    with pytest.raises(EvidenceRefused, match="older inventory"):
        check_arrival(envelope(), keys(issued=1), nothing)
    with pytest.raises(EvidenceSignatureError, match="not signed with its certified key"):
        check_arrival(envelope(OTHER), keys(device_key(KEY)), nothing)
    with pytest.raises(EvidenceSignatureError, match="signed as 'cam-hn-in-0002'"):
        check_arrival(envelope(kid="cam-hn-in-0002"), keys(device_key(KEY)), nothing)
    late = envelope(at=NOW + timedelta(days=2))
    with pytest.raises(
        EvidenceRefused, match="no certificate of cam-hn-in-0001 was valid at the event's time"
    ):
        check_arrival(late, keys(device_key(KEY, days_left=1)), nothing)
    # evidence signed while the certificate was valid still counts when it arrives later
    assert check_arrival(envelope(), keys(device_key(KEY, days_left=0.5)), nothing).serial == 1


MUTATIONS = ["ts", "seq", "rule", "plate", "sha256", "image", "base64", "sig", "drop-image"]


def mutate(env: dict[str, Any], how: str, n: int) -> dict[str, Any]:
    out = copy.deepcopy(env)
    image = out["data"]["images"][0]
    if how == "ts":
        out["ts"] = format_ts(NOW + timedelta(milliseconds=n + 1))
    elif how == "seq":
        out["seq"] += n + 1
    elif how == "rule":
        out["data"]["rule"] += "x" * (n % 3 + 1)
    elif how == "plate":
        out["data"]["plate"]["text"] = out["data"]["plate"]["text"][::-1] + str(n)
    elif how == "sha256":
        image["sha256"] = hashlib.sha256(IMAGE + bytes([n % 256])).hexdigest()
    elif how == "image":
        raw = bytearray(IMAGE)
        raw[n % len(raw)] ^= 1 << (n % 8)
        image["data"] = base64.b64encode(bytes(raw)).decode("ascii")
    elif how == "base64":
        image["data"] = image["data"][:-4] + "\n" + image["data"][-4:]
    elif how == "sig":
        value = bytearray(base64.b64decode(out["sig"]["value"]))
        value[n % len(value)] ^= 1
        out["sig"]["value"] = base64.b64encode(bytes(value)).decode("ascii")
    else:
        out["data"]["images"] = []
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(how=st.sampled_from(MUTATIONS), n=st.integers(min_value=0, max_value=10_000))
def test_any_change_after_signing_is_refused(how: str, n: int) -> None:
    changed = mutate(envelope(), how, n)
    with pytest.raises(EvidenceError):
        check_arrival(changed, keys(device_key(KEY)), nothing)


class FlakyDirectory:
    """A PKI inventory that cannot be reached for the first ``down`` lookups."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.calls = 0

    def keys(self, device: str) -> DeviceKeys:
        self.calls += 1
        if self.calls <= self.down:
            raise EvidenceUnavailable("the PKI inventory cannot be read: connection refused")
        return keys(device_key(KEY, around=datetime.now(timezone.utc)))


def test_the_writer_waits_for_the_pki_and_acknowledges_only_after_deciding(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    store.create_schema()
    directory = FlakyDirectory(down=3)
    images = EvidenceStore(tmp_path / "evidence")
    stats = IngestStats()
    writer = BatchWriter(store, stats, backoff_max_s=0.05, evidence=EvidenceIntake(directory, images))
    acked = threading.Event()
    good = envelope(at=datetime.now(timezone.utc))
    topic = Topics().event(DEVICE, "traffic.violation")
    item = writer.prepare(
        Received(topic, json.dumps(good).encode(), datetime.now(timezone.utc), ack=acked.set)
    )
    writer.commit([item])
    assert acked.is_set() and directory.calls == 4 and stats.db_retries == 3
    record = store.evidence(good["id"])
    assert record is not None and record["cert_serial"] == "1" and record["device"] == DEVICE
    (row,) = store.events(DEVICE)
    assert "data" not in row["data"]["images"][0] and row["sig"] == good["sig"]
    assert images.get(hashlib.sha256(IMAGE).hexdigest()) == IMAGE
    store.dispose()
