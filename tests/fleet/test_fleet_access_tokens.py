"""API tokens: shown once and stored hashed, expiry, revocation, the lookup cache, the CLI, and the
token file the fleet CLI reads (mode 0600)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from fleet_helpers import bearer, wait_for
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from typer.testing import CliRunner, Result

from fleet.api import create_app
from fleet.auth.principal import AuthError, Principal
from fleet.auth.routes import default_context
from fleet.auth.tokens import (
    TOKEN_PREFIX,
    TokenError,
    TokenStore,
    create_token,
    hash_token,
    issue,
    list_tokens,
    parse_duration,
    revoke,
)
from fleet.cli import register
from fleet.client import TokenFileError, load_token, read_token_file
from fleet.db import api_tokens, create_schema, make_engine
from fleet.service import FleetService
from protocol.timefmt import utc_now

TOKEN_RE = re.compile(r"cet_[A-Za-z0-9_-]{43}")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url, immediate=True)
    create_schema(engine)
    yield engine
    engine.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cli(*args: str) -> Result:
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, ["fleet", *args])


# --- parsing ---------------------------------------------------------------------------------------


@given(st.integers(1, 999_999), st.sampled_from("smhdw"))
def test_durations(number: int, unit: str) -> None:
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_duration(f"{number}{unit}") == timedelta(seconds=number * seconds)
    assert parse_duration(f" {number}{unit.upper()} ") == timedelta(seconds=number * seconds)


@given(st.text(max_size=12))
def test_anything_else_is_refused_in_words(text: str) -> None:
    try:
        value = parse_duration(text)
    except TokenError as exc:
        assert "use e.g. 90d" in str(exc)
        return
    if value is None:
        assert text.strip().lower() == "never"
    else:
        assert value > timedelta(0) and re.fullmatch(r"\d{1,6}[smhdw]", text.strip().lower())


def test_never_and_zero() -> None:
    assert parse_duration("never") is None
    for bad in ("0d", "90", "d", "-1d", "1.5h", "1000000d", ""):
        with pytest.raises(TokenError):
            parse_duration(bad)


# --- the store -------------------------------------------------------------------------------------


def test_a_token_is_shown_once_and_only_its_hash_is_kept(engine: Engine) -> None:
    token, info = issue(engine, name="ci-deploy", role="release-manager", expires=timedelta(days=90))
    assert TOKEN_RE.fullmatch(token) and token.startswith(TOKEN_PREFIX)
    assert info.role == "release-manager" and info.expires_at is not None
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(api_tokens)).mappings()]
    assert len(rows) == 1 and rows[0]["token_hash"] == hash_token(token)
    assert token not in json.dumps(rows, default=str)
    other, _ = issue(engine, name="ci-other", role="viewer", expires=None)
    assert other != token
    with pytest.raises(TokenError, match="exists already"):
        issue(engine, name="ci-deploy", role="viewer", expires=None)
    with pytest.raises(TokenError, match="unknown role 'root'"):
        issue(engine, name="x", role="root", expires=None)
    with pytest.raises(TokenError, match="token name"):
        issue(engine, name="has space", role="viewer", expires=None)
    assert [t.name for t in list_tokens(engine)] == ["ci-deploy", "ci-other"]


def test_lookup_expiry_revocation_and_cache(engine: Engine, db_url: str) -> None:
    clock = Clock()
    store = TokenStore(engine, cache_s=5.0, clock=clock)
    token, _ = issue(engine, name="ops-script", role="operator", expires=timedelta(days=1))
    assert store.principal(token) == Principal("token:ops-script", "operator", "token", "ops-script")
    assert list_tokens(engine)[0].last_used_at is not None
    with pytest.raises(AuthError, match="unknown API token") as unknown:
        store.principal(TOKEN_PREFIX + "x" * 43)
    assert unknown.value.status == 401
    # revoked by another process (the CLI): refused once the cached answer is older than cache_s
    other = make_engine(db_url)
    revoke(other, "ops-script")
    other.dispose()
    assert store.principal(token).role == "operator"
    clock.now += 5.1
    with pytest.raises(AuthError, match="'ops-script' was revoked"):
        store.principal(token)
    # expiry is checked on every request, cached or not
    soon, _ = issue(
        engine,
        name="short",
        role="viewer",
        expires=timedelta(hours=1, seconds=1),
        now=utc_now() - timedelta(hours=1),
    )
    assert store.principal(soon).name == "short"

    def refused() -> bool:
        try:
            store.principal(soon)
        except AuthError as exc:
            return "expired at" in exc.reason
        return False

    wait_for(refused, timeout=5, what="the token to expire")


def test_revoking_in_the_same_process_is_immediate_when_the_cache_is_dropped(fleet: FleetService) -> None:
    context = default_context(fleet.store.reader, fleet.store.writer)
    app = create_app(fleet, auth=context)
    token, _ = issue(fleet.store.writer, name="dash", role="viewer", expires=None)
    with TestClient(app, headers=bearer(token)) as client:
        assert client.get("/api/devices").status_code == 200
        revoke(fleet.store.writer, "dash")
        assert context.tokens is not None
        context.tokens.invalidate()
        refused = client.get("/api/devices")
        assert refused.status_code == 401 and refused.json()["detail"] == "API token 'dash' was revoked"
        assert refused.headers["www-authenticate"] == "Bearer"


def test_create_token_for_the_demo(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'fleet.db'}"
    token = create_token(url, "admin", "demo-admin", "1d")
    engine = make_engine(url)
    try:
        assert TokenStore(engine).principal(token).role == "admin"
        assert TokenStore(engine).principal(create_token(url, "viewer", "forever", None)).role == "viewer"
    finally:
        engine.dispose()


# --- the CLI ---------------------------------------------------------------------------------------


def test_token_cli(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    created = cli("token", "create", "--db", db, "--role", "operator", "--name", "night-shift", "--json")
    assert created.exit_code == 0, created.output
    doc = json.loads(created.output)
    assert TOKEN_RE.fullmatch(doc["token"]) and doc["state"] == "active" and doc["role"] == "operator"
    plain = cli("token", "create", "--db", db, "--role", "viewer", "--name", "wall", "--expires", "never")
    assert TOKEN_RE.fullmatch(plain.stdout.strip())
    listed = cli("token", "list", "--db", db)
    assert "night-shift" in listed.output and "wall" in listed.output
    assert doc["token"] not in listed.output
    revoked = cli("token", "revoke", "night-shift", "--db", db)
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    rows = json.loads(cli("token", "list", "--db", db, "--json").output)
    assert {r["name"]: r["state"] for r in rows} == {"night-shift": "revoked", "wall": "active"}
    again = cli("token", "create", "--db", db, "--role", "operator", "--name", "night-shift")
    assert again.exit_code == 1 and "exists already" in again.output
    bad = cli("token", "create", "--db", db, "--role", "root", "--name", "x")
    assert bad.exit_code == 1 and "unknown role" in bad.output
    missing = cli("token", "revoke", "nobody", "--db", db)
    assert missing.exit_code == 1 and "no token named" in missing.output
    trail = json.loads(cli("audit-trail", "--db", db, "--json").output)
    assert [e["action"].split()[0] for e in trail] == ["token.create", "token.create", "token.revoke"]
    assert cli("audit-trail", "--db", db, "--verify").exit_code == 0


def test_cli_hides_the_database_password(tmp_path: Path) -> None:
    result = cli("token", "list", "--db", "postgresql+psycopg://fleet:s3cret@127.0.0.1:1/fleet")
    assert result.exit_code == 1 and "s3cret" not in result.output


# --- the token file ----------------------------------------------------------------------------------


def test_token_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("cet_abc\n")
    for mode in (0o600, 0o400):
        path.chmod(mode)
        assert read_token_file(path) == "cet_abc"
    for mode in (0o640, 0o604, 0o660):
        path.chmod(mode)
        with pytest.raises(TokenFileError, match="chmod 600"):
            read_token_file(path)
    path.chmod(0o600)
    path.write_text("\n")
    with pytest.raises(TokenFileError, match="is empty"):
        read_token_file(path)
    with pytest.raises(TokenFileError, match="cannot read token file"):
        read_token_file(tmp_path / "missing")


def test_token_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"cet_from_file")
    os.close(fd)
    assert load_token(path, {"CITYEDGE_TOKEN": "cet_from_env"}) == "cet_from_file"
    assert load_token(None, {"CITYEDGE_TOKEN": " cet_from_env "}) == "cet_from_env"
    assert load_token(None, {}) is None
