"""The fleet's ``dossier`` RPC service: local registry, HTTP backend against a real server, dispatch."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from fleet.broker import free_port
from fleet.gateway import (
    DossierNotFound,
    DossierService,
    GatewayConfig,
    HttpDossierBackend,
    LocalRegistryDossierBackend,
    RegistryError,
    UpstreamUnavailable,
    build_dossier_service,
)
from fleet.rpc import RpcBadRequest, RpcDispatcher, RpcNotFound, RpcRegistry, RpcUnavailable
from kiosk_ui.parsers import parse_dossier_code
from protocol.dossier import DOSSIER_CODE_RE, STATUS_LABELS, Dossier
from protocol.topics import Topics

CODE = "000.00.01.H26-260930-0012"
UNKNOWN = "000.00.01.H26-260930-9999"
DEVICE = "kiosk-hn-btl-0001"
TOKEN = "Bearer s3cret-token"
KIOSK_BUDGET_S = 5.0

# ---------------------------------------------------------------- local registry


def test_demo_registry_finds_a_dossier_with_labels_and_steps() -> None:
    service = DossierService(LocalRegistryDossierBackend.demo())
    result = service.call("lookup", {"code": " 000.00.01.h26-260930-0012 "}, DEVICE)
    assert result["code"] == CODE and result["status"] == "processing"
    assert result["status_vi"] == "Đang xử lý" and result["status_en"] == "In progress"
    assert result["due_date"] == "2026-11-25" and result["procedure"].startswith("Cấp giấy phép")
    assert [s["status"] for s in result["steps"]] == ["done", "done", "current", "pending"]
    json.dumps(result)  # plain JSON, ready for rpc/res


def test_demo_registry_is_realistic_and_valid() -> None:
    backend = LocalRegistryDossierBackend.demo()
    assert len(backend.codes()) >= 5
    statuses = {backend.lookup(code).status for code in backend.codes()}
    assert statuses <= set(STATUS_LABELS) and len(statuses) >= 5
    for code in backend.codes():
        assert DOSSIER_CODE_RE.match(code) and parse_dossier_code(code) == code  # the kiosk accepts them


def test_unknown_codes_are_not_found() -> None:
    service = DossierService(LocalRegistryDossierBackend.demo())
    with pytest.raises(DossierNotFound) as caught:
        service.call("lookup", {"code": UNKNOWN}, DEVICE)
    assert isinstance(caught.value, RpcNotFound) and caught.value.code == "not_found"


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("lookup", {}),
        ("lookup", {"code": 12}),
        ("lookup", {"code": "DROP TABLE"}),
        ("delete", {"code": CODE}),
    ],
)
def test_bad_requests_are_rejected(method: str, params: dict[str, Any]) -> None:
    service = DossierService(LocalRegistryDossierBackend.demo())
    with pytest.raises(RpcBadRequest):
        service.call(method, params, DEVICE)


def test_a_toml_registry_loads(tmp_path: Path) -> None:
    path = tmp_path / "registry.toml"
    path.write_text(
        '[[dossiers]]\ncode = "000.00.02.H26-261001-0001"\nprocedure = "Đăng ký kết hôn"\n'
        'status = "ready"\ndue_date = "2026-10-06"\n'
        '[[dossiers.steps]]\nname = "Tiếp nhận"\ndate = "2026-10-01"\n',
        encoding="utf-8",
    )
    dossier = LocalRegistryDossierBackend(path).lookup("000.00.02.H26-261001-0001")
    assert dossier.status_vi == "Đã có kết quả, mời nhận" and dossier.steps[0].name == "Tiếp nhận"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"items": []}', "'dossiers' list"),
        ('{"dossiers": [{"code": "000.00.01.H26-260930-0001", "status": "received"}]}', "procedure"),
        ('{"dossiers": [{"code": "bad", "procedure": "x", "status": "received"}]}', "AGENCY-YYMMDD-NNNN"),
        (
            '{"dossiers": [{"code": "000.00.01.H26-260930-0001", "procedure": "x", "status": "received"},'
            '{"code": "000.00.01.H26-260930-0001", "procedure": "y", "status": "ready"}]}',
            "twice",
        ),
    ],
)
def test_bad_registry_files_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "registry.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RegistryError, match=message):
        LocalRegistryDossierBackend(path)


def test_a_missing_registry_file_is_a_registry_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read"):
        LocalRegistryDossierBackend(tmp_path / "nope.json")


# ---------------------------------------------------------------- HTTP backend, real server


class CityService(BaseHTTPRequestHandler):
    """Stand-in for the city's dossier API: /dossiers/{code}, a slow code, a failing code."""

    release: ClassVar[threading.Event] = threading.Event()
    seen_auth: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        code = parse_qs(parts.query).get("code", [""])[0] or unquote(parts.path.rsplit("/", 1)[-1])
        type(self).seen_auth.append(self.headers.get("Authorization"))
        if code.endswith("-0777"):  # slow: longer than any timeout the gateway may use
            type(self).release.wait(10)
            return self._json(200, {"procedure": "late", "status": "received"})
        if code.endswith("-0888"):  # dribbles its body one byte at a time
            body = json.dumps({"procedure": "Đăng ký khai sinh", "status": "received"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(len(body)):
                if type(self).release.wait(0.2):
                    return
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
            return
        if code.endswith("-0500"):
            return self._json(503, {"error": "maintenance"})
        if code.endswith("-0400"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>not json</html>")
            return
        if code == CODE:
            return self._json(
                200, {"procedure": "Đăng ký thường trú", "status": "processing", "due_date": "2026-12-01"}
            )
        return self._json(404, {"error": "not found"})

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


@pytest.fixture
def city_url() -> Iterator[str]:
    CityService.release = threading.Event()
    CityService.seen_auth = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), CityService)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/dossiers/{{code}}"
    finally:
        CityService.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_ok_with_auth_header(city_url: str) -> None:
    backend = HttpDossierBackend(city_url, 2.0, f"Authorization: {TOKEN}")
    try:
        dossier = backend.lookup(CODE)
    finally:
        backend.close()
    assert isinstance(dossier, Dossier) and dossier.code == CODE and dossier.due_date == "2026-12-01"
    assert CityService.seen_auth == [TOKEN]
    assert TOKEN not in repr(backend)


def test_http_query_parameter_form(city_url: str) -> None:
    backend = HttpDossierBackend(city_url.replace("/{code}", "/lookup"), 2.0)
    assert backend.lookup(CODE).procedure == "Đăng ký thường trú"
    backend.close()


def test_http_404_is_not_found(city_url: str) -> None:
    backend = HttpDossierBackend(city_url, 2.0)
    with pytest.raises(DossierNotFound):
        backend.lookup(UNKNOWN)
    backend.close()


@pytest.mark.parametrize("suffix", ["0500", "0400"], ids=["http-503", "not-json"])
def test_http_failures_are_upstream_unavailable(city_url: str, suffix: str) -> None:
    backend = HttpDossierBackend(city_url, 2.0)
    with pytest.raises(UpstreamUnavailable) as caught:
        backend.lookup(f"000.00.01.H26-260930-{suffix}")
    assert isinstance(caught.value, RpcUnavailable) and caught.value.code == "unavailable"
    backend.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("suffix", ["0777", "0888"], ids=["no-answer", "dribbled-body"])
def test_a_slow_service_is_unavailable_within_the_kiosk_budget(city_url: str, suffix: str) -> None:
    backend = HttpDossierBackend(city_url, 1.0)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="1s"):
        backend.lookup(f"000.00.01.H26-260930-{suffix}")
    elapsed = time.monotonic() - started
    backend.close()
    assert 0.9 <= elapsed < 1.3 < KIOSK_BUDGET_S


@pytest.mark.timeout(30)
def test_the_longest_allowed_timeout_still_fits_the_budget(city_url: str) -> None:
    backend = HttpDossierBackend(city_url, 4.0)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        backend.lookup("000.00.01.H26-260930-0777")
    assert time.monotonic() - started < KIOSK_BUDGET_S
    backend.close()
    with pytest.raises(ValueError, match="5 s"):
        HttpDossierBackend(city_url, 4.5)


def test_connection_refused_is_unavailable_at_once() -> None:
    backend = HttpDossierBackend(f"http://127.0.0.1:{free_port()}/dossiers/{{code}}", 3.0)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="cannot reach"):
        backend.lookup(CODE)
    assert time.monotonic() - started < 1.0
    backend.close()


# ---------------------------------------------------------------- config and the fleet's RPC dispatch


def test_config_builds_either_backend(city_url: str) -> None:
    local = build_dossier_service(GatewayConfig())
    assert isinstance(local.backend, LocalRegistryDossierBackend)
    config = GatewayConfig(backend="http", url=city_url, timeout_s=2.0, auth_header_env="CITY_DOSSIER_AUTH")
    service = build_dossier_service(config, {"CITY_DOSSIER_AUTH": f"Authorization: {TOKEN}"})
    assert service.call("lookup", {"code": CODE}, DEVICE)["status_vi"] == "Đang xử lý"
    assert CityService.seen_auth == [TOKEN]
    with pytest.raises(ValueError, match="CITY_DOSSIER_AUTH"):
        build_dossier_service(config, {})
    with pytest.raises(ValueError):
        GatewayConfig(backend="http", url=city_url, timeout_s=6)
    with pytest.raises(ValueError):
        GatewayConfig.model_validate({"backend": "local", "colour": "blue"})


@pytest.mark.timeout(30)
def test_dispatch_through_the_fleet_rpc_answers_every_outcome(city_url: str) -> None:
    answers: dict[str, dict[str, Any]] = {}
    done = threading.Condition()

    def publish(topic: str, payload: bytes) -> None:
        body = json.loads(payload)
        with done:
            answers[body["id"]] = body
            done.notify_all()

    registry = RpcRegistry(
        {"dossier": build_dossier_service(GatewayConfig(backend="http", url=city_url, timeout_s=1))}
    )
    dispatcher = RpcDispatcher(registry, publish, Topics(), timeout_s=KIOSK_BUDGET_S)
    requests = {
        "ok": CODE,
        "missing": UNKNOWN,
        "slow": "000.00.01.H26-260930-0777",
        "bad": "nonsense",
    }
    started = time.monotonic()
    try:
        for rid, code in requests.items():
            dispatcher.submit(
                DEVICE, {"id": rid, "service": "dossier", "method": "lookup", "params": {"code": code}}
            )
        with done:
            assert done.wait_for(lambda: len(answers) == len(requests), timeout=KIOSK_BUDGET_S)
    finally:
        dispatcher.stop()
    assert time.monotonic() - started < KIOSK_BUDGET_S
    assert answers["ok"]["ok"] and answers["ok"]["result"]["code"] == CODE
    assert (answers["missing"]["ok"], answers["missing"]["code"]) == (False, "not_found")
    assert (answers["slow"]["ok"], answers["slow"]["code"]) == (False, "unavailable")
    assert (answers["bad"]["ok"], answers["bad"]["code"]) == (False, "bad_request")
