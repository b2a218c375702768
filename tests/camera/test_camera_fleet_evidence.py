"""The fleet evidence store router, and the camera's HTTP uploader against a real server."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from agent.camera.errors import EvidenceError
from agent.camera.sink import HttpEvidenceStore
from fleet.broker import free_port
from fleet.evidence import EvidenceStore, evidence_router

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 20 + b"\xff\xd9"
SHA = hashlib.sha256(JPEG).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> EvidenceStore:
    return EvidenceStore(tmp_path / "evidence", max_bytes=64 * 1024)


def test_router_stores_content_addressed_and_refuses_mismatches(store: EvidenceStore) -> None:
    app = FastAPI()
    app.include_router(evidence_router(store))
    client = TestClient(app)
    first = client.post(f"/api/evidence/{SHA}", content=JPEG, headers={"content-type": "image/jpeg"})
    assert first.status_code == 201 and first.json() == {"sha256": SHA, "bytes": len(JPEG), "created": True}
    assert client.post(f"/api/evidence/{SHA}", content=JPEG).status_code == 200, "idempotent re-upload"
    wrong = client.post(f"/api/evidence/{'0' * 64}", content=JPEG)
    assert wrong.status_code == 400 and "sha256 mismatch" in wrong.json()["detail"]
    assert client.post("/api/evidence/not-a-hash", content=JPEG).status_code == 422
    assert client.post(f"/api/evidence/{hashlib.sha256(b'').hexdigest()}", content=b"").status_code == 400
    big = b"x" * (65 * 1024)
    assert client.post(f"/api/evidence/{hashlib.sha256(big).hexdigest()}", content=big).status_code == 413
    got = client.get(f"/api/evidence/{SHA}")
    assert got.status_code == 200 and got.content == JPEG and got.headers["content-type"] == "image/jpeg"
    assert client.get(f"/api/evidence/{'1' * 64}").status_code == 404
    assert store.get(SHA) == JPEG and store.path(SHA).parent.name == SHA[:2]


@pytest.fixture
def server(store: EvidenceStore) -> Iterator[str]:
    app = FastAPI()
    app.include_router(evidence_router(store))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_camera_uploads_to_the_fleet_store(server: str, store: EvidenceStore) -> None:
    uploader = HttpEvidenceStore(server, retries=1, timeout_s=5)
    uploader.put(SHA, JPEG)
    uploader.put(SHA, JPEG)
    assert store.get(SHA) == JPEG
    delays: list[float] = []
    refused = HttpEvidenceStore(server, retries=3, timeout_s=5, sleep=delays.append)
    with pytest.raises(EvidenceError, match="HTTP 400"):
        refused.put("2" * 64, JPEG)
    assert delays == [], "a body the store refuses is not retried"


def test_uploader_retries_with_backoff_then_reports() -> None:
    delays: list[float] = []
    port = free_port()  # nothing listens here
    uploader = HttpEvidenceStore(f"http://127.0.0.1:{port}", retries=3, timeout_s=2, sleep=delays.append)
    with pytest.raises(EvidenceError, match="failed after 4 attempt"):
        uploader.put(SHA, JPEG)
    assert delays == [0.5, 1.0, 2.0]
