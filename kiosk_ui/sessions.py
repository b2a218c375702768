"""Server-side kiosk sessions: in memory only, keyed by a random id the page keeps in a variable.

A session holds what one resident is doing (screen, language, consent, identity read from the
card, the dossier looked up). Ending it wipes all of that; a session nobody touched for
``ttl_s`` is ended by ``sweep`` even if the page died, so nothing personal outlives the visit.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiosk_ui.i18n import DEFAULT_LANG, Lang
from kiosk_ui.parsers import CitizenIdentity

Message = tuple[str, str]
"""A message for the resident: (Vietnamese, English)."""

IDLE_SCREENS = frozenset({"home", "signage"})


class SessionGone(LookupError):
    """The page names a session the server does not know (ended, expired, or the app restarted)."""


@dataclass
class LookupState:
    code: str = ""
    outcome: str = ""  # "" | busy | found | not_found | unavailable | invalid
    dossier: dict[str, Any] | None = None
    message: Message | None = None

    def clear(self) -> None:
        self.code, self.outcome, self.dossier, self.message = "", "", None, None


SUBMIT_STEPS = ("identify", "form", "documents", "review", "consent", "done")
"""The submission screens, in order."""


@dataclass
class SubmissionState:
    """One dossier being prepared: typed values, photographed pages (JPEG bytes) and the answer.

    Lives only in this object; ``wipe`` drops it all (reset, idle, end, after the gateway answered
    and the resident left)."""

    procedure_id: str
    submission_id: str
    step: str = "identify"
    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, Message] = field(default_factory=dict)
    pages: dict[str, list[bytes]] = field(default_factory=dict)
    page_errors: dict[str, Message] = field(default_factory=dict)
    capture_message: Message | None = None
    revision: int = 0
    message: Message | None = None
    result: dict[str, Any] | None = None
    print_key: str | None = None
    attempts: int = 0

    def page_count(self) -> dict[str, int]:
        return {doc: len(pages) for doc, pages in self.pages.items()}

    def wipe(self) -> None:
        for key in list(self.values):
            self.values[key] = ""
        self.values.clear()
        self.errors.clear()
        for pages in self.pages.values():
            pages.clear()
        self.pages.clear()
        self.page_errors.clear()
        self.result = None
        self.capture_message = self.message = None


@dataclass
class Session:
    sid: str
    lang: Lang = DEFAULT_LANG
    screen: str = "home"
    created: float = field(default_factory=time.monotonic)
    last_input: float = field(default_factory=time.monotonic)
    screens: list[str] = field(default_factory=list)
    consent: bool = False
    identity: CitizenIdentity | None = None
    identity_message: Message | None = None
    lookup: LookupState = field(default_factory=LookupState)
    submission: SubmissionState | None = None
    notice: Message | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Used by a resident (went beyond the home screen and the signage loop)."""
        return any(s not in IDLE_SCREENS for s in self.screens)

    def visit(self, screen: str) -> None:
        self.screen = screen
        if not self.screens or self.screens[-1] != screen:
            self.screens.append(screen)
        self.last_input = time.monotonic()

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def take_notice(self) -> Message | None:
        notice, self.notice = self.notice, None
        return notice

    def clear_identity(self) -> None:
        if self.identity is not None:
            self.identity.wipe()
        self.identity, self.identity_message, self.consent = None, None, False

    def wipe(self) -> None:
        """Drop everything the resident left here."""
        self.clear_identity()
        self.lookup.clear()
        self.drop_submission()
        self.notice = None

    def drop_submission(self) -> None:
        if self.submission is not None:
            self.submission.wipe()
        self.submission = None

    def summary(self, reason: str) -> dict[str, Any]:
        """What a ``kiosk.session`` event may say: no personal data, only usage."""
        return {
            "duration_s": round(time.monotonic() - self.created, 1),
            "lang": self.lang,
            "screens": sorted({s for s in self.screens if s not in IDLE_SCREENS}),
            "ended": reason,
            **{f"{k}_count": v for k, v in sorted(self.counts.items())},
        }

    def dump(self) -> str:
        """Everything held, as text (tests check that nothing personal survives a reset)."""
        ident = self.identity.to_session_dict() if self.identity is not None else None
        return repr(
            (self.sid, self.screen, ident, self.identity_message, self.lookup, self.submission, self.notice)
        )


EndHook = Callable[[Session, str], None]


class SessionStore:
    """Sessions by id; thread-safe (HTTP threads, the scanner thread and the sweeper use it)."""

    def __init__(self, ttl_s: float, on_end: EndHook | None = None) -> None:
        self.ttl_s = ttl_s
        self._on_end = on_end
        self._sessions: dict[str, Session] = {}
        self._lock = threading.RLock()

    def create(self, lang: Lang = DEFAULT_LANG) -> Session:
        session = Session(sid=secrets.token_urlsafe(24), lang=lang)
        with self._lock:
            self._sessions[session.sid] = session
        return session

    def get(self, sid: str | None) -> Session:
        with self._lock:
            session = self._sessions.get(sid or "")
            if session is None:
                raise SessionGone("unknown or ended session")
            return session

    def touch(self, sid: str | None) -> Session:
        session = self.get(sid)
        session.last_input = time.monotonic()
        return session

    def keep_idle_alive(self, sid: str | None) -> bool:
        """Keep a session that was never used (page on the home screen or the announcements loop)
        from expiring; a used session is kept alive only by the resident's input."""
        with self._lock:
            session = self._sessions.get(sid or "")
            if session is None or session.active:
                return False
            session.last_input = time.monotonic()
            return True

    def alive(self, sid: str) -> bool:
        with self._lock:
            return sid in self._sessions

    def any_active(self) -> bool:
        """A resident is using the kiosk (a session went beyond the home screen)."""
        with self._lock:
            return any(s.active for s in self._sessions.values())

    def current(self) -> Session | None:
        """The session most recently used (the one in front of the kiosk), if any."""
        with self._lock:
            if not self._sessions:
                return None
            return max(self._sessions.values(), key=lambda s: s.last_input)

    def end(self, sid: str | None, reason: str) -> bool:
        with self._lock:
            session = self._sessions.pop(sid or "", None)
        if session is None:
            return False
        self._finish(session, reason)
        return True

    def end_all(self, reason: str) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            self._finish(session, reason)

    def sweep(self, now: float | None = None) -> int:
        """End sessions idle for longer than ``ttl_s``; how many were ended."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [s for s in self._sessions.values() if now - s.last_input > self.ttl_s]
            for session in stale:
                del self._sessions[session.sid]
        for session in stale:
            self._finish(session, "expired")
        return len(stale)

    def _finish(self, session: Session, reason: str) -> None:
        try:
            if self._on_end is not None:
                self._on_end(session, reason)
        finally:
            session.wipe()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def dump(self) -> str:
        with self._lock:
            return "\n".join(s.dump() for s in self._sessions.values())
