"""API tokens for scripts: ``cet_`` + 32 random bytes (URL-safe base64), shown once, stored hashed.

Table ``api_tokens`` of the fleet store keeps the sha256 of each token with its name, role,
expiry and revocation. ``TokenStore.principal`` answers a request's token from a small in-memory
cache (a few seconds, so a request does not cost a database round trip); a token revoked by
another process stops working when its cache entry ages out (``DEFAULT_CACHE_S``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.requests import Request

from fleet.auth import trail
from fleet.auth.permissions import check_role
from fleet.auth.principal import AuthError, Principal
from fleet.db import api_tokens, create_schema, make_engine
from protocol.timefmt import format_ts, utc_now

log = logging.getLogger(__name__)

TOKEN_PREFIX = "cet_"
DEFAULT_CACHE_S = 5.0
DEFAULT_EXPIRES = "90d"
_CACHE_MAX = 4096
_LAST_USED_EVERY = timedelta(minutes=1)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_DURATION_RE = re.compile(r"(\d{1,6})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class TokenError(Exception):
    """A token cannot be created, found or revoked (the message says why and what to do)."""


@dataclass(frozen=True)
class TokenInfo:
    """A token's record (never the token itself)."""

    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def state(self, now: datetime) -> str:
        """ "revoked", "expired" or "active"."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_json(self, now: datetime) -> dict[str, Any]:
        def ts(value: datetime | None) -> str | None:
            return None if value is None else format_ts(value)

        return {
            "name": self.name,
            "role": self.role,
            "state": self.state(now),
            "created_at": ts(self.created_at),
            "expires_at": ts(self.expires_at),
            "revoked_at": ts(self.revoked_at),
            "last_used_at": ts(self.last_used_at),
        }


def parse_duration(text: str) -> timedelta | None:
    """``90d``, ``12h``, ``30m``, ``45s``, ``2w`` (or ``never``: None, no expiry)."""
    value = text.strip().lower()
    if value == "never":
        return None
    match = _DURATION_RE.fullmatch(value)
    if not match or int(match.group(1)) == 0:
        raise TokenError(f"expiry {text!r} not understood: use e.g. 90d, 12h, 30m, 2w or 'never'")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _info(row: Any) -> TokenInfo:
    return TokenInfo(
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def issue(
    engine: Engine,
    *,
    name: str,
    role: str,
    expires: timedelta | None,
    actor: trail.TrailEntry | None = None,
    now: datetime | None = None,
) -> tuple[str, TokenInfo]:
    """Create token ``name`` with ``role``; returns (the token, shown only now, its record).

    The creation is written on the audit trail in the same transaction (``actor`` says who; the
    CLI user by default).
    """
    try:
        check_role(role)
    except ValueError as exc:
        raise TokenError(str(exc)) from exc
    if not _NAME_RE.fullmatch(name):
        raise TokenError(
            f"token name {name!r}: use 1-128 letters, digits, '.', '_', '@' or '-' (e.g. ci-deploy)"
        )
    created = now or utc_now()
    token = new_token()
    info = TokenInfo(name, role, created, None if expires is None else created + expires, None, None)
    who = actor or trail.cli_actor()
    until = format_ts(info.expires_at) if info.expires_at else "never"
    action = f"token.create {name} role={role} expires={until}"
    try:
        with engine.begin() as conn:
            conn.execute(
                api_tokens.insert().values(
                    name=name,
                    role=role,
                    token_hash=hash_token(token),
                    created_at=created,
                    expires_at=info.expires_at,
                )
            )
            trail.append_in(
                conn,
                trail.TrailEntry(
                    subject=who.subject,
                    role=who.role,
                    kind=who.kind,
                    action=action,
                    outcome="allowed",
                    source=who.source,
                ),
            )
    except IntegrityError as exc:
        raise TokenError(
            f"a token named {name!r} exists already; pick another name (a revoked token keeps its name)"
        ) from exc
    return token, info


def list_tokens(engine: Engine) -> list[TokenInfo]:
    with engine.connect() as conn:
        rows = conn.execute(select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.name))
        return [_info(r) for r in rows]


def revoke(
    engine: Engine, name: str, *, actor: trail.TrailEntry | None = None, now: datetime | None = None
) -> TokenInfo:
    """Revoke token ``name`` (recorded on the trail); revoking twice keeps the first time."""
    when = now or utc_now()
    who = actor or trail.cli_actor()
    with engine.begin() as conn:
        row = conn.execute(select(api_tokens).where(api_tokens.c.name == name)).first()
        if row is None:
            raise TokenError(f"no token named {name!r}; `cityedge fleet token list` shows the names")
        if row.revoked_at is None:
            conn.execute(api_tokens.update().where(api_tokens.c.name == name).values(revoked_at=when))
            trail.append_in(
                conn,
                trail.TrailEntry(
                    subject=who.subject,
                    role=who.role,
                    kind=who.kind,
                    action=f"token.revoke {name}",
                    outcome="allowed",
                    source=who.source,
                ),
            )
        row = conn.execute(select(api_tokens).where(api_tokens.c.name == name)).one()
    return _info(row)


def create_token(db_url: str, role: str, name: str, expires: str | timedelta | None = DEFAULT_EXPIRES) -> str:
    """Create an API token in the fleet database at ``db_url`` (schema created when missing) and
    return it. ``expires``: "90d"-style text, a timedelta, or None/"never" for no expiry."""
    lifetime = parse_duration(expires) if isinstance(expires, str) else expires
    engine = make_engine(db_url, immediate=True)
    try:
        create_schema(engine)
        token, _info = issue(engine, name=name, role=role, expires=lifetime)
    finally:
        engine.dispose()
    return token


@dataclass(frozen=True)
class _Cached:
    principal: Principal | None  # None: no such token
    expires_at: datetime | None
    revoked: bool
    until: float


class TokenStore:
    """Looks tokens up by hash, with a short cache (``cache_s``; 0 turns it off)."""

    def __init__(
        self,
        engine: Engine,
        *,
        writer: Engine | None = None,
        cache_s: float = DEFAULT_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.writer = writer or engine
        self.cache_s = cache_s
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()

    def principal(self, token: str) -> Principal:
        """The principal of a valid token; AuthError(401) for unknown, expired or revoked ones."""
        return self.principal_of_hash(hash_token(token))

    def principal_of_hash(self, digest: str) -> Principal:
        """``principal`` for the token whose sha256 (hex) is ``digest``."""
        now_mono = self._clock()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is None or cached.until <= now_mono:
            cached = self._load(digest, now_mono)
        if cached.principal is None:
            raise AuthError(401, "unknown API token (mistyped, or deleted)")
        if cached.revoked:
            raise AuthError(401, f"API token {cached.principal.name!r} was revoked")
        if cached.expires_at is not None and cached.expires_at <= utc_now():
            raise AuthError(
                401, f"API token {cached.principal.name!r} expired at {format_ts(cached.expires_at)}"
            )
        return cached.principal

    def _load(self, digest: str, now_mono: float) -> _Cached:
        with self.engine.connect() as conn:
            row = conn.execute(select(api_tokens).where(api_tokens.c.token_hash == digest)).first()
        if row is None:
            entry = _Cached(None, None, False, now_mono + self.cache_s)
        else:
            principal = Principal(subject=f"token:{row.name}", role=row.role, kind="token", name=row.name)
            entry = _Cached(principal, row.expires_at, row.revoked_at is not None, now_mono + self.cache_s)
            self._touch(row.name, row.last_used_at)
        if self.cache_s > 0:
            with self._lock:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[digest] = entry
        return entry

    def _touch(self, name: str, last_used: datetime | None) -> None:
        now = utc_now()
        if last_used is not None and now - last_used < _LAST_USED_EVERY:
            return
        try:
            with self.writer.begin() as conn:
                conn.execute(api_tokens.update().where(api_tokens.c.name == name).values(last_used_at=now))
        except SQLAlchemyError as exc:  # bookkeeping only: the request goes on
            log.warning("could not note the last use of API token %r: %s", name, exc)


def bearer_of(request: Request) -> str | None:
    """The credential of an ``Authorization: Bearer ...`` header (None without one)."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def bearer_authenticator(store: TokenStore) -> Callable[[Request], Principal | None]:
    """The authenticator for API tokens: claims only bearer credentials that start ``cet_``
    (a JWT goes to the OIDC authenticator)."""

    def authenticate(request: Request) -> Principal | None:
        token = bearer_of(request)
        if token is None or not token.startswith(TOKEN_PREFIX):
            return None
        return store.principal(token)

    return authenticate
