"""Catalogue, announcements, search and i18n: shipped content, pushed (signed) content, ranking."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from agent.truststore import TrustStore
from kiosk_ui.cli import register
from kiosk_ui.content import Catalogue, load_shipped
from kiosk_ui.contentfeed import ContentFeed
from kiosk_ui.contentsign import sign_content
from kiosk_ui.i18n import RATING_REASONS, STRINGS
from kiosk_ui.search import fold
from protocol.signing import sign
from protocol.timefmt import format_ts, utc_now
from protocol.trust import FleetKey, RootKey, build_key_list, encode_public_key, sign_key_list

TEMPLATES = Path(__file__).resolve().parents[2] / "kiosk_ui" / "templates"


# --- shipped content and strings -------------------------------------------------------------
def test_shipped_catalogue_is_complete_in_both_languages() -> None:
    catalogue = Catalogue.model_validate(load_shipped("catalogue.json"))
    assert 24 <= len(catalogue.procedures) <= 30
    assert len({p.id for p in catalogue.procedures}) == len(catalogue.procedures)
    for p in catalogue.procedures:
        for field in (p.name, p.field, p.agency, p.processing_time, p.fee):
            assert field.get("vi", "").strip() and field.get("en", "").strip(), p.id
        assert p.documents, p.id
        assert all(d.get("vi", "").strip() and d.get("en", "").strip() for d in p.documents), p.id
    names = {p.name["vi"] for p in catalogue.procedures}
    for expected in ("Đăng ký khai sinh", "Đăng ký kết hôn", "Đăng ký khai tử", "Đăng ký thường trú"):
        assert expected in names


def test_shipped_announcements_are_bilingual() -> None:
    items = load_shipped("announcements.json")["items"]
    assert len(items) >= 3
    assert all(i["title"]["vi"] and i["title"]["en"] and i["body"]["vi"] and i["body"]["en"] for i in items)


def test_every_string_exists_in_both_languages_and_every_template_key_is_known() -> None:
    assert all(vi.strip() and en.strip() for vi, en in STRINGS.values())
    used: set[str] = set()
    for template in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r"\bt[ve]?\('([a-z0-9_.]+)'", template.read_text(encoding="utf-8")))
    dynamic = {
        f"home.{k}{s}" for k in ("procedures", "lookup", "identity", "rating", "news") for s in ("", ".sub")
    }
    dynamic |= {f"online.{k}" for k in ("full", "partial", "none")} | {f"rate.{n}" for n in range(1, 6)}
    dynamic |= {f"reason.{r}" for r in RATING_REASONS} | {f"step.{s}" for s in ("done", "current", "pending")}
    dynamic |= {f"print.{k}" for k in ("ok", "paper_out", "offline", "none", "nothing")}
    dynamic |= {f"submit.step.{k}" for k in ("identify", "form", "documents", "review", "consent", "done")}
    dynamic |= {f"submit.{k}" for k in ("unavailable", "refused")}
    used = {key for key in used if not key.endswith(".")}  # 'home.' ~ key: listed in dynamic
    missing = sorted((used | dynamic) - set(STRINGS))
    assert missing == []


# --- search ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> ContentFeed:
    return ContentFeed(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("dang ky ket hon", "Đăng ký kết hôn"),
        ("Đăng ký kết hôn", "Đăng ký kết hôn"),
        ("DANG KY KET HON", "Đăng ký kết hôn"),
        ("ket hon", "Đăng ký kết hôn"),
        ("khai sinh", "Đăng ký khai sinh"),
        ("dang ky khai t", "Đăng ký khai tử"),
        ("chung thuc ban sao", "Chứng thực bản sao từ bản chính"),
        ("tam tru", "Đăng ký tạm trú"),
        ("thuong tru", "Đăng ký thường trú"),
        ("marriage", "Đăng ký kết hôn"),
        ("birth registration", "Đăng ký khai sinh"),
        ("xac nhan cu tru", "Xác nhận thông tin về cư trú"),
        ("ho khau", "Đăng ký thường trú"),
        ("nguoi cao tuoi", "Trợ cấp xã hội hàng tháng cho người cao tuổi"),
    ],
)
def test_search_without_diacritics_ranks_the_right_procedure_first(
    feed: ContentFeed, query: str, first: str
) -> None:
    results = feed.index.search(query)
    assert results, query
    assert results[0].name["vi"] == first


def test_search_requires_every_word_and_empty_query_lists_all(feed: ContentFeed) -> None:
    assert feed.index.search("ket hon xyzzy") == []
    assert len(feed.index.search("   ")) == len(feed.index.catalogue.procedures)


def test_fold_maps_vietnamese_to_plain_words() -> None:
    assert fold("Đăng ký kết hôn") == "dang ky ket hon"
    assert fold("ĐƯỜNG Nguyễn Trãi, P.Thượng Đình") == "duong nguyen trai p thuong dinh"


@given(st.text(max_size=60))
def test_fold_is_plain_ascii_and_idempotent(text: str) -> None:
    folded = fold(text)
    assert folded.isascii()
    assert fold(folded) == folded


@given(st.text(max_size=60))
def test_search_never_fails(text: str) -> None:
    feed = _FEED
    assert isinstance(feed.index.search(text), list)


_FEED = ContentFeed(Path("/nonexistent-kiosk-data"))


# --- pushed content --------------------------------------------------------------------------
def _enrol(data_dir: Path) -> tuple[Ed25519PrivateKey, str]:
    """Write the agent's trust files: a root and a key list with one fleet key."""
    root = Ed25519PrivateKey.generate()
    fleet = Ed25519PrivateKey.generate()
    kid = "fleet-test-1"
    now = utc_now()
    document = sign_key_list(
        build_key_list(1, now + timedelta(days=30), [FleetKey(kid, fleet.public_key(), None)]), root
    )
    TrustStore.install(data_dir / "trust", RootKey.from_private(root), document, now)
    return fleet, kid


def _catalogue(version: int, name: str = "Thủ tục thử nghiệm") -> dict[str, Any]:
    doc = load_shipped("catalogue.json")
    doc["version"] = version
    doc["procedures"] = [
        *doc["procedures"],
        {**doc["procedures"][0], "id": "new-1", "name": {"vi": name, "en": "Test"}},
    ]
    return doc


def test_signed_catalogue_from_the_fleet_replaces_the_shipped_one(tmp_path: Path) -> None:
    key, kid = _enrol(tmp_path)
    feed = ContentFeed(tmp_path)
    assert feed.status()["catalogue"] == "shipped"
    changed = feed.apply_desired({"catalogue": sign(_catalogue(5), key, kid)})
    assert changed == ["catalogue"]
    assert feed.index.search("thu nghiem")[0].id == "new-1"
    assert feed.status()["catalogue"] == "fleet v5"
    # the same document again changes nothing; an older one is refused (no rollback)
    assert feed.apply_desired({"catalogue": sign(_catalogue(5), key, kid)}) == []
    assert feed.apply_desired({"catalogue": sign(_catalogue(4), key, kid)}) == []
    assert "older" in (feed.status()["catalogue_error"] or "")


@pytest.mark.parametrize("fault", ["unsigned", "tampered", "unknown-key", "expired", "bad-shape"])
def test_untrusted_or_bad_content_is_refused_and_the_kiosk_keeps_its_content(
    tmp_path: Path, fault: str
) -> None:
    key, kid = _enrol(tmp_path)
    doc = _catalogue(9)
    if fault == "expired":
        doc["expires_at"] = format_ts(utc_now() - timedelta(days=1))
    if fault == "bad-shape":
        doc["procedures"] = "nope"
    signer = Ed25519PrivateKey.generate() if fault == "unknown-key" else key
    signed = sign(doc, signer, kid if fault != "unknown-key" else "someone-else")
    if fault == "unsigned":
        signed.pop("sig")
    if fault == "tampered":
        signed["procedures"][0]["fee"] = {"vi": "1.000.000 đồng", "en": "VND 1,000,000"}
    feed = ContentFeed(tmp_path)
    assert feed.apply_desired({"catalogue": signed}) == []
    assert feed.status()["catalogue"] == "shipped"
    assert feed.status()["catalogue_error"]
    assert feed.index.search("dang ky ket hon")[0].name["vi"] == "Đăng ký kết hôn"


def test_announcements_push_and_extra_content_key_file(tmp_path: Path) -> None:
    content_key = Ed25519PrivateKey.generate()
    keys_file = tmp_path / "content-keys.json"
    keys_file.write_text(json.dumps({"content-1": encode_public_key(content_key.public_key())}))
    feed = ContentFeed(tmp_path, keys_file)  # not enrolled: only the extra key is trusted
    doc = {
        "format": "cityedge.kiosk.announcements",
        "version": 2,
        "items": [
            {"id": "water", "title": {"vi": "Cắt nước", "en": "Water cut"}, "body": {"vi": "x", "en": "y"}}
        ],
    }
    assert feed.apply_desired({"announcements": sign_content(doc, content_key, "content-1")}) == [
        "announcements"
    ]
    assert [a.id for a in feed.current_announcements()] == ["water"]


def test_sign_content_command_signs_a_file_the_kiosk_accepts(tmp_path: Path) -> None:
    key, kid = _enrol(tmp_path)
    pem = tmp_path / "fleet.pem"
    pem.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    source = tmp_path / "catalogue.json"
    source.write_text(json.dumps(_catalogue(12)), encoding="utf-8")
    app = typer.Typer()
    register(app)
    out = tmp_path / "signed.json"
    result = CliRunner().invoke(
        app, ["kiosk", "sign-content", str(source), "--key", str(pem), "--kid", kid, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    feed = ContentFeed(tmp_path)
    assert feed.apply_desired({"catalogue": json.loads(out.read_text())}) == ["catalogue"]
