"""Leases on the fleet's periodic jobs, so that several workers on one database run each job once.

Every worker runs the same maintenance loops (alerts, command expiry, rollouts, retention, the
CRL). Run by two workers side by side, some of them would do their work twice (a rollout wave
targeted twice, a CRL re-signed twice) and all of them would cost the database twice. Before each
round a worker asks for the job's lease (table ``leases``: name, holder, expiry) and runs the round
only while it holds it:

- ``acquire`` inserts the lease if it does not exist, then takes it over only where it is free
  (expired) or already this holder's; the conditional UPDATE is atomic on both databases (a row
  lock on PostgreSQL, the single writer of SQLite), so two workers never both hold a lease;
- the holder renews it at every round (the lease lasts several rounds); a worker that dies stops
  renewing, and another takes the job over once the lease expired;
- a worker that stops gives its leases back (``release_all``) so another takes over at once.

The holder is the worker id (its MQTT client id, unique per running worker).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, case, or_, select

from fleet.db import insert_ignore, leases
from protocol.timefmt import utc_now


class Leases:
    """The leases of one worker (``holder``) on the shared database of ``engine``."""

    def __init__(self, engine: Engine, holder: str) -> None:
        self.engine = engine
        self.holder = holder

    def acquire(self, name: str, ttl_s: float, *, now: datetime | None = None) -> bool:
        """Take or renew lease ``name`` for ``ttl_s`` seconds; False when another worker holds it."""
        moment = now or utc_now()
        until = moment + timedelta(seconds=ttl_s)
        with self.engine.begin() as conn:
            row = {"name": name, "holder": self.holder, "acquired_at": moment, "expires_at": until}
            conn.execute(insert_ignore(leases, conn.dialect), [row])
            taken = conn.execute(
                leases.update()
                .where(
                    leases.c.name == name,
                    or_(leases.c.holder == self.holder, leases.c.expires_at <= moment),
                )
                .values(
                    acquired_at=case((leases.c.holder == self.holder, leases.c.acquired_at), else_=moment),
                    holder=self.holder,
                    expires_at=until,
                )
            )
            return int(taken.rowcount or 0) == 1

    def release_all(self, *, now: datetime | None = None) -> int:
        """Give back every lease this worker holds (at a clean stop); returns how many."""
        with self.engine.begin() as conn:
            result = conn.execute(
                leases.update().where(leases.c.holder == self.holder).values(expires_at=now or utc_now())
            )
            return int(result.rowcount or 0)

    def holders(self) -> dict[str, tuple[str, datetime]]:
        """Every job's lease: name → (holder, expiry)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(leases.c.name, leases.c.holder, leases.c.expires_at))
            return {str(name): (str(holder), expires) for name, holder, expires in rows}
