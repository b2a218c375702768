"""The dashboard's live updates: one server-sent-event stream per open page, sending what changed.

Every ``period_s`` the stream re-reads what the page shows (its page of devices, the totals, the
recent events; the overview by site and version less often) and sends:

- ``rows``: the rendered rows of devices whose shown data changed (state, version, telemetry,
  last seen, OTA), as ``[{"id", "html"}]``;
- ``page``: the whole page of rows, only when the page's membership or order changed (a device
  came in or left the filter);
- ``summary``, ``events``, ``overview``: those fragments, only when they changed.

Relative times ("12 s ago") are advanced by the browser, so a quiet fleet sends nothing but a
comment now and then. A stream ends after ``max_s`` and the browser reconnects (authenticating
again, so a session that has ended stops receiving updates).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from jinja2 import Environment
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from fleet.devicequery import DeviceFilter

if TYPE_CHECKING:
    from fleet.dashboard import DashboardData

PERIOD_S = 2.0
OVERVIEW_EVERY = 5  # ticks
KEEPALIVE_S = 15.0


def sse(event: str, data: Any) -> str:
    """One server-sent event with a JSON payload (one ``data:`` line: JSON has no raw newline)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class LiveStream:
    def __init__(
        self,
        data: DashboardData,
        env: Environment,
        flt: DeviceFilter,
        *,
        page_version: str = "",
        period_s: float = PERIOD_S,
    ) -> None:
        self.data = data
        self.env = env
        self.flt = flt
        self.period_s = period_s
        self.page_version = page_version
        self.rows: dict[str, str] = {}  # device id -> row fingerprint, as the browser shows it
        self.order: list[str] = []
        self.fragments: dict[str, str] = {}
        self.ticks = 0
        self.sent_bytes = 0

    def _render(self, name: str, context: dict[str, Any]) -> str:
        return self.env.get_template(name).render(**context)

    def tick(self) -> list[str]:
        """The events that bring the page up to date (blocking: database reads and rendering)."""
        from fleet.dashboard import row_fingerprint

        out: list[str] = []
        page = self.data.page(self.flt)
        rows, ota = page["devices"], page["ota"]
        prints = {r["id"]: row_fingerprint(r, ota.get(r["id"])) for r in rows}
        order = [r["id"] for r in rows]
        if self.ticks == 0 and page["page_version"] == self.page_version:
            self.rows, self.order = prints, order  # the browser already shows exactly this
        elif order != self.order:
            html = self._render("_devices.html", {**page, "filter": self.flt})
            out.append(sse("page", {"html": html, "total": page["total"]}))
            self.rows, self.order = prints, order
        else:
            changed = [r for r in rows if self.rows.get(r["id"]) != prints[r["id"]]]
            if changed:
                out.append(
                    sse(
                        "rows",
                        [
                            {"id": r["id"], "html": self._render("_device_row.html", {"d": r, "ota": ota})}
                            for r in changed
                        ],
                    )
                )
                self.rows.update({r["id"]: prints[r["id"]] for r in changed})
        fragments = {
            "summary": ("_summary.html", self.data.summary()),
            "events": ("_events.html", self.data.events()),
        }
        if self.ticks % OVERVIEW_EVERY == 0:
            fragments["overview"] = ("_overview.html", self.data.overview())
        for name, (template, context) in fragments.items():
            # events show relative times, which the browser advances: compare their ids only
            key = json.dumps([e["id"] for e in context["events"]]) if name == "events" else None
            html = self._render(template, context)
            key = key or html
            if self.ticks == 0 and name not in self.fragments:
                self.fragments[name] = key  # rendered with the page just before
                continue
            if self.fragments.get(name) != key:
                self.fragments[name] = key
                out.append(sse(name, {"html": html}))
        self.ticks += 1
        self.sent_bytes += sum(len(m) for m in out)
        return out

    async def events(self, request: Request, *, max_s: float) -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        deadline = time.monotonic() + max_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and not await request.is_disconnected():
            messages = await run_in_threadpool(self.tick)
            for message in messages:
                yield message
            if messages:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": still here\n\n"
            await asyncio.sleep(self.period_s)
