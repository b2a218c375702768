"""The kiosk's only way to the city: the agent's local API (``agent.localapi.LocalApiClient``).

Every call is bounded in time and never raises into a page handler: a dossier lookup answers
found / not found / unavailable within ``lookup_timeout_s``; events (ratings, session summaries)
go through a small in-memory queue and are handed to the agent's durable outbox as soon as the
agent answers, so a resident never waits on the agent.
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from protocol.dossier import METHOD_LOOKUP, SERVICE, Dossier

log = logging.getLogger(__name__)

MAX_QUEUED_EVENTS = 500


class AgentPort(Protocol):
    """What the kiosk needs from ``agent.localapi.LocalApiClient``."""

    def emit(self, kind: str, data: dict[str, Any], *, sign: bool = False) -> dict[str, Any]: ...

    def rpc(
        self, service: str, method: str, params: dict[str, Any], timeout: float = 5.0
    ) -> dict[str, Any]: ...

    def report_metrics(self, metrics: dict[str, Any]) -> None: ...

    def report_peripherals(self, peripherals: dict[str, Any]) -> None: ...

    def desired_config(self) -> dict[str, Any]: ...

    def call(self, op: str, timeout: float | None = None, **fields: Any) -> Any: ...


UPDATE_LOCK_OWNER = "kiosk-session"
UPDATE_LOCK_TTL_S = 180.0
"""The lock is a lease: renewed while a resident uses the kiosk, so a crashed kiosk app never
blocks updates for longer than this."""


def local_api_client(data_dir: Path) -> AgentPort:
    """The agent's client for ``data_dir`` (imported here: the kiosk starts even without it)."""
    from agent.localapi import LocalApiClient

    client: AgentPort = LocalApiClient(data_dir, timeout=5.0)
    return client


Outcome = Literal["found", "not_found", "unavailable"]
SubmitOutcome = Literal["ok", "refused", "unavailable"]
METHOD_SUBMIT = "submit"
METHOD_RECEIPT = "receipt"
METHOD_UPLOAD_PAGE = "upload_page"
METHOD_PAGES = "pages"


@dataclass(frozen=True)
class SubmitResult:
    outcome: SubmitOutcome
    receipt: dict[str, Any] | None = None
    """The gateway's answer: for submit/receipt submission_id, code, procedure, fee, payment, vietqr;
    for pages/upload_page ``held``."""


@dataclass(frozen=True)
class LookupResult:
    outcome: Outcome
    dossier: dict[str, Any] | None = None


def classify_error(exc: BaseException) -> Outcome:
    """not_found when the city said so, unavailable for everything else (timeouts, agent down...)."""
    code = getattr(exc, "code", None)
    if code == "not_found":
        return "not_found"
    text = str(exc).lower()
    if code is None and ("not_found" in text or "not found" in text or "no dossier" in text):
        return "not_found"
    return "unavailable"


class AgentLink:
    """Time-bounded calls to the agent, plus the event queue."""

    def __init__(self, client: AgentPort, *, lookup_timeout_s: float = 4.0) -> None:
        self.client = client
        self.lookup_timeout_s = lookup_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kiosk-agent")
        self._events: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(
            maxlen=MAX_QUEUED_EVENTS
        )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reachable: bool | None = None
        self.lookups = {"found": 0, "not_found": 0, "unavailable": 0}

    def lookup(self, code: str) -> LookupResult:
        """Ask the city's dossier service; always returns within ``lookup_timeout_s`` + 0.5 s."""
        future = self._pool.submit(
            self.client.rpc, SERVICE, METHOD_LOOKUP, {"code": code}, self.lookup_timeout_s
        )
        try:
            raw = future.result(timeout=self.lookup_timeout_s + 0.5)
        except FutureTimeout:
            result = LookupResult("unavailable")
        except Exception as exc:  # boundary: any failure of the agent path means "try later"
            outcome = classify_error(exc)
            log.info("dossier lookup: %s (%s)", outcome, type(exc).__name__)
            result = LookupResult(outcome)
        else:
            result = self._parse(raw)
        self.lookups[result.outcome] += 1
        return result

    @staticmethod
    def _parse(raw: object) -> LookupResult:
        try:
            dossier = Dossier.model_validate(raw).with_labels()
        except ValueError:
            log.warning("dossier lookup: the answer does not look like a dossier")
            return LookupResult("unavailable")
        return LookupResult("found", dossier.to_dict())

    def submit(self, params: dict[str, Any]) -> SubmitResult:
        """``dossier.submit`` through the agent; always answers within ``lookup_timeout_s`` + 0.5 s.

        ``refused``: the gateway said the request is wrong (it will not work by retrying);
        ``unavailable``: no answer (agent, link or the city's system down) — a retry with the same
        submission id is safe, the gateway makes one dossier per id."""
        return self._submit_call(METHOD_SUBMIT, params)

    def receipt(self, code: str) -> SubmitResult:
        """``dossier.receipt``: the payment state of a submitted dossier."""
        return self._submit_call(METHOD_RECEIPT, {"code": code})

    def held_pages(self, submission_id: str) -> SubmitResult:
        """``dossier.pages``: which pages of this submission the gateway already has."""
        return self._submit_call(METHOD_PAGES, {"submission_id": submission_id}, want="held")

    def upload_page(self, params: dict[str, Any]) -> SubmitResult:
        """``dossier.upload_page``: one page (each in its own request, under the MQTT size limit)."""
        return self._submit_call(METHOD_UPLOAD_PAGE, params, want="held")

    def _submit_call(self, method: str, params: dict[str, Any], want: str = "code") -> SubmitResult:
        future = self._pool.submit(self.client.rpc, SERVICE, method, params, self.lookup_timeout_s)
        try:
            raw = future.result(timeout=self.lookup_timeout_s + 0.5)
        except FutureTimeout:
            return SubmitResult("unavailable")
        except Exception as exc:  # boundary: any failure of the agent path is answered in words
            code = getattr(exc, "code", None)
            outcome: SubmitOutcome = "refused" if code in ("bad_request", "not_found") else "unavailable"
            log.info("dossier.%s: %s (%s)", method, outcome, type(exc).__name__)
            return SubmitResult(outcome)
        if not isinstance(raw, dict) or want not in raw:
            log.warning("dossier.%s: the answer does not look like a receipt", method)
            return SubmitResult("unavailable")
        return SubmitResult("ok", raw)

    def desired_config(self) -> dict[str, Any] | None:
        try:
            config = self._pool.submit(self.client.desired_config).result(timeout=3.0)
        except Exception as exc:  # boundary: no config now; keep the content we have
            self._mark(False, exc)
            return None
        self._mark(True)
        return config if isinstance(config, dict) else None

    def report(self, metrics: dict[str, Any], peripherals: dict[str, Any]) -> None:
        try:
            self.client.report_metrics(metrics)
            self.client.report_peripherals(peripherals)
        except Exception as exc:  # boundary: telemetry is best effort
            self._mark(False, exc)
        else:
            self._mark(True)

    def hold_update_lock(self, hold: bool) -> None:
        """Ask the agent to defer installing an update while a resident's session is open (``hold``)
        or allow it again. Called from the housekeeping thread, in order; best effort (an agent
        without updates answers "unknown op")."""
        try:
            if hold:
                self.client.call("ota_lock", owner=UPDATE_LOCK_OWNER, ttl_s=UPDATE_LOCK_TTL_S)
            else:
                self.client.call("ota_unlock", owner=UPDATE_LOCK_OWNER)
        except Exception as exc:  # boundary: an update lock is advisory; never fail the kiosk
            log.debug("update lock not changed: %s", exc)

    def queue_event(self, kind: str, data: dict[str, Any]) -> None:
        """Hand an event to the agent's outbox soon (kept in memory until the agent takes it)."""
        if len(self._events) == self._events.maxlen:
            log.warning("event queue full: dropping the oldest queued event")
        self._events.append((kind, data))
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._events)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._drain_loop, name="kiosk-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _drain_loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            self._wake.wait(timeout=delay if self._events else 30.0)
            self._wake.clear()
            while self._events and not self._stop.is_set():
                kind, data = self._events[0]
                try:
                    self.client.emit(kind, data)
                except Exception as exc:  # boundary: retry later, the event stays queued
                    self._mark(False, exc)
                    delay = min(delay * 2, 10.0)
                    break
                self._events.popleft()
                self._mark(True)
                delay = 0.5

    def _mark(self, ok: bool, exc: BaseException | None = None) -> None:
        if ok != self.reachable:
            if ok:
                log.info("agent local API reachable")
            else:
                log.warning("agent local API unreachable: %s", type(exc).__name__ if exc else "?")
        self.reachable = ok
