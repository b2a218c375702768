"""The PKI's inventory of issued certificates, on SQLAlchemy Core (SQLite file or PostgreSQL).

One row per certificate ever issued (table ``pki_certs``): serial, subject (device id or service
name), kind, validity, key fingerprint and type, the certificate itself (PEM: the fleet reads a
device's public key from it to verify evidence), and revocation. The audit and the CRL are built
from it; the CRL number is kept in ``pki_meta`` so that concurrent signers never reuse one.

Where it lives: ``sqlite:///PKI_DIR/inventory.sqlite`` by default, or the ``db_url`` of
``pki.json`` (e.g. ``postgresql+psycopg://...``, set by ``fleet pki init --db`` or moved there by
``fleet pki move-inventory``). An inventory file written by an older release (tables ``certs`` and
``meta``) is imported into the new tables the first time it is opened; its certificates have no
PEM (``cert_pem`` is None), so the fleet cannot verify their evidence until they are renewed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    case,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from fleet.db import UtcDateTime, make_engine
from protocol.timefmt import format_ts, parse_ts

CertKind = Literal["device", "service", "server"]
INVENTORY_FILE = "inventory.sqlite"

metadata = MetaData()

pki_certs = Table(
    "pki_certs",
    metadata,
    Column("serial", String(64), primary_key=True),  # lower-case hex
    Column("subject", String(255), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("not_before", UtcDateTime, nullable=False),
    Column("not_after", UtcDateTime, nullable=False),
    Column("fingerprint", String(128), nullable=False, index=True),
    Column("key_type", String(64), nullable=False),
    Column("cert_pem", Text),
    Column("issued_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
    Column("revocation_reason", String(64)),
    Column("revocation_note", Text),
)

pki_meta = Table(
    "pki_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)


class InventoryError(Exception):
    """The inventory database cannot be opened or is not an inventory."""


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomic write with ``mode`` (keys 0600); safe against concurrent writers of the same file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (and threads) of this PKI."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class IssuedCert:
    """One certificate the PKI issued (as the inventory remembers it)."""

    serial: int
    subject: str
    kind: CertKind
    not_before: datetime
    not_after: datetime
    fingerprint: str
    key_type: str
    issued_at: datetime
    revoked_at: datetime | None = None
    revocation_reason: str | None = None
    revocation_note: str | None = None
    cert_pem: str | None = None
    """The certificate (PEM); None for certificates imported from an inventory of an older release."""

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def valid_at(self, moment: datetime) -> bool:
        return not self.revoked and self.not_before <= moment <= self.not_after

    def as_json(self) -> dict[str, object]:
        return {
            "serial": format(self.serial, "x"),
            "subject": self.subject,
            "kind": self.kind,
            "not_before": format_ts(self.not_before),
            "not_after": format_ts(self.not_after),
            "fingerprint": self.fingerprint,
            "key_type": self.key_type,
            "issued_at": format_ts(self.issued_at),
            "revoked": self.revoked,
            "revoked_at": format_ts(self.revoked_at) if self.revoked_at else None,
            "revocation_reason": self.revocation_reason,
        }


@dataclass(frozen=True)
class DeviceRevocation:
    """A device none of whose certificates is usable any more: every one was revoked."""

    device: str
    revoked_at: datetime
    reason: str | None


def _record(row: Mapping[Any, Any]) -> IssuedCert:
    return IssuedCert(
        serial=int(row["serial"], 16),
        subject=row["subject"],
        kind=cast(CertKind, row["kind"]),
        not_before=row["not_before"],
        not_after=row["not_after"],
        fingerprint=row["fingerprint"],
        key_type=row["key_type"],
        issued_at=row["issued_at"],
        revoked_at=row["revoked_at"],
        revocation_reason=row["revocation_reason"],
        revocation_note=row["revocation_note"],
        cert_pem=row["cert_pem"],
    )


def _row(cert: IssuedCert) -> dict[str, Any]:
    return {
        "serial": format(cert.serial, "x"),
        "subject": cert.subject,
        "kind": cert.kind,
        "not_before": cert.not_before,
        "not_after": cert.not_after,
        "fingerprint": cert.fingerprint,
        "key_type": cert.key_type,
        "cert_pem": cert.cert_pem,
        "issued_at": cert.issued_at,
        "revoked_at": cert.revoked_at,
        "revocation_reason": cert.revocation_reason,
        "revocation_note": cert.revocation_note,
    }


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def inventory_url(pki_dir: Path) -> str:
    """Where the inventory of the PKI in ``pki_dir`` lives: ``db_url`` of pki.json, else its file."""
    try:
        settings = json.loads((Path(pki_dir) / "pki.json").read_text())
    except FileNotFoundError:
        settings = {}
    except ValueError as exc:
        raise InventoryError(f"the PKI settings in {pki_dir}/pki.json are damaged") from exc
    url = settings.get("db_url") if isinstance(settings, dict) else None
    return str(url) if url else sqlite_url(Path(pki_dir) / INVENTORY_FILE)


def _upsert_meta(conn: Connection, name: str, value: int, *, add: bool) -> int:
    """Set (or with ``add`` increment by ``value``) a counter in pki_meta; returns the new value."""
    module: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = module.insert(pki_meta).values(name=name, value=value)
    new = pki_meta.c.value + stmt.excluded.value if add else stmt.excluded.value
    stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={"value": new})
    return int(conn.execute(stmt.returning(pki_meta.c.value)).scalar_one())


class Inventory:
    """Thread- and process-safe record of issued certificates (SQLite or PostgreSQL).

    ``Inventory(url)`` with an SQLAlchemy URL, or ``Inventory(path)`` with the path of a SQLite
    file (created mode 0600). The tables are created when missing.
    """

    def __init__(self, target: str | Path) -> None:
        self.url = target if isinstance(target, str) else sqlite_url(target)
        backend = make_url(self.url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise InventoryError(f"the PKI inventory needs SQLite or PostgreSQL, not {backend!r}")
        self._writer: Engine = make_engine(self.url, immediate=True)
        self._reader: Engine = make_engine(self.url) if backend == "sqlite" else self._writer
        self._prepare()
        database = make_url(self.url).database
        if backend == "sqlite" and database and database != ":memory:":
            with contextlib.suppress(PermissionError):  # opened by another user (e.g. the fleet service)
                os.chmod(database, 0o600)

    @property
    def dialect(self) -> str:
        return self._writer.dialect.name

    def dispose(self) -> None:
        self._writer.dispose()
        self._reader.dispose()

    def _prepare(self) -> None:
        """Create the tables (serialised: several processes may open a new inventory at once)
        and import the tables of an older release's inventory file."""
        with self._writer.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(7220339)"))  # 'pki'
            metadata.create_all(conn)
            if conn.dialect.name == "sqlite":
                _import_legacy(conn)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._reader.connect() as conn:
            yield conn

    def add(self, cert: IssuedCert) -> None:
        with self._write() as conn:
            conn.execute(pki_certs.insert().values(_row(cert)))

    def get(self, serial: int) -> IssuedCert | None:
        with self._read() as conn:
            row = conn.execute(select(pki_certs).where(pki_certs.c.serial == format(serial, "x")))
            found = row.mappings().first()
        return _record(found) if found else None

    def _select(self, *where: Any, order: Any = pki_certs.c.issued_at) -> list[IssuedCert]:
        query = select(pki_certs).where(*where).order_by(order, pki_certs.c.serial)
        with self._read() as conn:
            return [_record(r) for r in conn.execute(query).mappings()]

    def by_subject(self, subject: str) -> list[IssuedCert]:
        return self._select(pki_certs.c.subject == subject)

    def by_fingerprint(self, fingerprint: str) -> list[IssuedCert]:
        return self._select(pki_certs.c.fingerprint == fingerprint)

    def all(self) -> list[IssuedCert]:
        return self._select()

    def revoked(self) -> list[IssuedCert]:
        return self._select(pki_certs.c.revoked_at.is_not(None), order=pki_certs.c.revoked_at)

    def revoked_devices(self) -> dict[str, DeviceRevocation]:
        """Devices whose every certificate is revoked (a re-enrolled device is not in it)."""
        live = func.sum(case((pki_certs.c.revoked_at.is_(None), 1), else_=0))
        query = (
            select(pki_certs.c.subject, func.max(pki_certs.c.revoked_at))
            .where(pki_certs.c.kind == "device")
            .group_by(pki_certs.c.subject)
            .having(live == 0)
        )
        with self._read() as conn:
            latest = {str(s): at for s, at in conn.execute(query)}
            if not latest:
                return {}
            reasons = conn.execute(
                select(pki_certs.c.subject, pki_certs.c.revoked_at, pki_certs.c.revocation_reason).where(
                    pki_certs.c.kind == "device", pki_certs.c.subject.in_(list(latest))
                )
            )
            why = {str(s): r for s, at, r in reasons if at == latest[str(s)]}
        return {s: DeviceRevocation(s, at, why.get(s)) for s, at in sorted(latest.items())}

    def mark_revoked(self, serial: int, when: datetime, reason: str, note: str) -> bool:
        """Record a revocation; False if the serial was already revoked (first reason wins)."""
        with self._write() as conn:
            done = conn.execute(
                pki_certs.update()
                .where(pki_certs.c.serial == format(serial, "x"), pki_certs.c.revoked_at.is_(None))
                .values(revoked_at=when, revocation_reason=reason, revocation_note=note)
            )
            return done.rowcount == 1

    def next_crl_number(self) -> int:
        with self._write() as conn:
            return _upsert_meta(conn, "crl_number", 1, add=True)

    def crl_number(self) -> int:
        """The last CRL number handed out (0 before the first CRL)."""
        with self._read() as conn:
            value = conn.execute(select(pki_meta.c.value).where(pki_meta.c.name == "crl_number"))
            return int(value.scalar_one_or_none() or 0)

    def copy_to(self, other: Inventory) -> int:
        """Copy every certificate and the CRL number into ``other`` (which must be empty)."""
        records = self.all()
        with other._write() as conn:
            if conn.execute(select(func.count()).select_from(pki_certs)).scalar_one():
                raise InventoryError(f"the inventory at {other.display_url} is not empty; refusing to merge")
            if records:
                conn.execute(pki_certs.insert(), [_row(r) for r in records])
            _upsert_meta(conn, "crl_number", self.crl_number(), add=False)
        return len(records)

    @property
    def display_url(self) -> str:
        """The URL without its password (for messages and logs)."""
        return make_url(self.url).render_as_string(hide_password=True)


def _import_legacy(conn: Connection) -> None:
    """Copy the ``certs`` / ``meta`` tables of an older release's inventory file (text times)."""
    tables = set(inspect(conn).get_table_names())
    if "certs" not in tables or conn.execute(select(func.count()).select_from(pki_certs)).scalar_one():
        return
    rows = conn.execute(text("SELECT * FROM certs")).mappings().all()
    if rows:

        def ts(value: Any) -> datetime | None:
            return parse_ts(str(value)) if value else None

        conn.execute(
            pki_certs.insert(),
            [
                {
                    "serial": str(r["serial"]).lower(),
                    "subject": r["subject"],
                    "kind": r["kind"],
                    "not_before": ts(r["not_before"]),
                    "not_after": ts(r["not_after"]),
                    "fingerprint": r["fingerprint"],
                    "key_type": r["key_type"],
                    "cert_pem": None,
                    "issued_at": ts(r["issued_at"]),
                    "revoked_at": ts(r["revoked_at"]),
                    "revocation_reason": r["revocation_reason"],
                    "revocation_note": r["revocation_note"],
                }
                for r in rows
            ],
        )
    if "meta" in tables:
        number = conn.execute(text("SELECT value FROM meta WHERE name = 'crl_number'")).scalar()
        if number:
            _upsert_meta(conn, "crl_number", int(number), add=False)
