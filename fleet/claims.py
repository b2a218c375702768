"""One-time claim tokens: how a technician brings a new device into the fleet without secrets.

A token is random (144 bits), short-lived (30 minutes by default), bound to a role and a site
(and optionally to one device id, to replace a unit), and usable once. Only its SHA-256 is
stored, so a copy of the database does not let anyone enrol a device.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Column, Engine, MetaData, RowMapping, String, Table, and_, select, update

from fleet.db import UtcDateTime, make_engine
from protocol.timefmt import format_ts, utc_now
from protocol.topics import check_device_id

TOKEN_PREFIX = "ce1."
DEFAULT_TTL = timedelta(minutes=30)
MAX_TTL = timedelta(days=7)
ROLES = ("kiosk", "camera")
SITE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,40}$")

metadata = MetaData()
claims = Table(
    "claim_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("site", String(64), nullable=False),
    Column("device_id", String(64), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime, nullable=True),
    Column("used_by", String(64), nullable=True),
)


class ClaimError(Exception):
    """A claim token cannot be used; ``status`` is the HTTP status the enrolment API answers."""

    status = 400


class ClaimUnknown(ClaimError):
    status = 401


class ClaimUsed(ClaimError):
    status = 409


class ClaimExpired(ClaimError):
    status = 410


class ClaimMismatch(ClaimError):
    status = 403


class ClaimInvalid(ClaimError):
    """The claim cannot be created as asked (bad role, site, lifetime)."""


@dataclass(frozen=True)
class Claim:
    role: str
    site: str
    expires_at: datetime
    device_id: str | None
    token_hash: str
    token: str | None = None
    """The token itself: only known right after ``create``."""


def _claim(row: RowMapping) -> Claim:
    return Claim(
        str(row["role"]), str(row["site"]), row["expires_at"], row["device_id"], str(row["token_hash"])
    )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


def parse_ttl(text: str) -> timedelta:
    """``30m``, ``2h``, ``1d``, ``90s`` or plain minutes (``45``)."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not match:
        raise ClaimInvalid(f"lifetime {text!r} not understood: use e.g. 30m, 2h or 1d")
    number, unit = int(match.group(1)), match.group(2) or "m"
    seconds = number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return timedelta(seconds=seconds)


def check_role_site(role: str, site: str) -> None:
    if role not in ROLES:
        raise ClaimInvalid(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not SITE_RE.match(site):
        raise ClaimInvalid(f"site {site!r}: use 2-41 lowercase letters, digits and '-' (e.g. hn-btl)")


class ClaimStore:
    """Claim tokens in an SQLAlchemy table (SQLite in the fleet data dir, or the fleet's database)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self._clock = clock
        metadata.create_all(engine)

    @classmethod
    def open(cls, path: Path, clock: Callable[[], datetime] = utc_now) -> ClaimStore:
        return cls(make_engine(f"sqlite:///{path}", immediate=True), clock)

    def create(
        self, role: str, site: str, ttl: timedelta = DEFAULT_TTL, device_id: str | None = None
    ) -> Claim:
        check_role_site(role, site)
        if device_id is not None:
            check_device_id(device_id)
        if not timedelta(minutes=1) <= ttl <= MAX_TTL:
            raise ClaimInvalid("a claim token lives between 1 minute and 7 days")
        token = TOKEN_PREFIX + secrets.token_urlsafe(18)
        token_hash, now = hash_token(token), self._clock()
        row = {
            "token_hash": token_hash,
            "role": role,
            "site": site,
            "device_id": device_id,
            "created_at": now,
            "expires_at": now + ttl,
        }
        with self.engine.begin() as conn:
            conn.execute(claims.insert().values(**row))
        return Claim(role, site, now + ttl, device_id, token_hash, token)

    def _classify(self, token_hash: str, now: datetime) -> ClaimError:
        with self.engine.connect() as conn:
            row = conn.execute(select(claims).where(claims.c.token_hash == token_hash)).mappings().first()
        if row is None:
            return ClaimUnknown(
                "claim token not recognised: check it was typed in full, or ask for a new one"
            )
        if row["used_at"] is not None:
            return ClaimUsed(
                f"claim token already used (at {format_ts(row['used_at'])} by {row['used_by']}); "
                "ask the fleet operator for a new one"
            )
        return ClaimExpired(
            f"claim token expired at {format_ts(row['expires_at'])}; ask the fleet operator for a new one"
        )

    def reserve(self, token: str, role: str, site: str, device_id: str) -> Claim:
        """Use the token for ``device_id`` (atomically: a second use fails), checking role and site."""
        token_hash, now = hash_token(token), self._clock()
        with self.engine.begin() as conn:
            row = conn.execute(select(claims).where(claims.c.token_hash == token_hash)).mappings().first()
            if row is not None and row["used_at"] is None and row["expires_at"] >= now:
                if (row["role"], row["site"]) != (role, site):
                    raise ClaimMismatch(
                        f"claim token is for a {row['role']} at site {row['site']}, "
                        f"not a {role} at site {site}"
                    )
                if row["device_id"] is not None and row["device_id"] != device_id:
                    raise ClaimMismatch(f"claim token is for device {row['device_id']}, not {device_id}")
                done = conn.execute(
                    update(claims)
                    .where(and_(claims.c.token_hash == token_hash, claims.c.used_at.is_(None)))
                    .values(used_at=now, used_by=device_id)
                )
                if done.rowcount == 1:
                    return _claim(row)
        raise self._classify(token_hash, now)

    def release(self, token_hash: str) -> None:
        """Give a reserved token back (the enrolment failed after it was reserved)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(claims).where(claims.c.token_hash == token_hash).values(used_at=None, used_by=None)
            )

    def pending(self) -> list[Claim]:
        """Tokens not used and not expired (without the tokens themselves)."""
        now = self._clock()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(claims).where(and_(claims.c.used_at.is_(None), claims.c.expires_at >= now))
            ).mappings()
            return [_claim(r) for r in rows]
