"""What the kiosk does, independent of HTTP: screens, lookups, identity, ratings, printing, scans.

Page handlers and the scanner thread call in here; screens are rendered from the session state,
and changes made off the page (a scan, a lookup finishing) are pushed to the page as SSE events.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.kiosk.metrics import KioskMetrics
from kiosk_ui.agentlink import AgentLink
from kiosk_ui.bus import EventBus
from kiosk_ui.contentfeed import ContentFeed
from kiosk_ui.devices import Devices
from kiosk_ui.i18n import RATING_REASONS, STRINGS, Lang
from kiosk_ui.parsers import ParseError, parse_cccd, parse_dossier_code
from kiosk_ui.render import Renderer
from kiosk_ui.sessions import Message, Session, SessionStore
from kiosk_ui.speech import GuideVoice, SilentSpeech
from kiosk_ui.submitflow import SubmissionFlow
from kiosk_ui.views import say, say_other, screen_context
from protocol.timefmt import now_ts

log = logging.getLogger(__name__)

MAX_TYPED_CODE = 48
LOOKUP_MESSAGES = {"not_found": STRINGS["lookup.not_found"], "unavailable": STRINGS["lookup.unavailable"]}


def with_reason(key: str, exc: ParseError) -> Message:
    vi, en = STRINGS[key]
    return (f"{vi}: {exc.reason_vi}", f"{en}: {exc.reason_en}")


def looks_like_cccd(text: str) -> bool:
    return text.count("|") >= 5


class KioskCore:
    def __init__(
        self,
        *,
        feed: ContentFeed,
        link: AgentLink,
        devices: Devices,
        metrics: KioskMetrics,
        renderer: Renderer,
        bus: EventBus,
        session_ttl_s: float,
        voice: GuideVoice | None = None,
    ) -> None:
        self.feed = feed
        self.link = link
        self.devices = devices
        self.metrics = metrics
        self.renderer = renderer
        self.bus = bus
        self.voice = voice or GuideVoice(SilentSpeech())
        self.store = SessionStore(session_ttl_s, on_end=self._session_ended)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kiosk-work")
        self.flow = SubmissionFlow(self)

    # --- sessions -------------------------------------------------------------------------
    def open_session(self, lang: Lang) -> Session:
        return self.store.create(lang)

    def end_session(self, sid: str | None, reason: str) -> None:
        if sid and self.store.end(sid, reason):
            self.bus.close_session(sid)

    def _session_ended(self, session: Session, reason: str) -> None:
        self.devices.forget_jobs()
        if not session.active:
            return
        summary = session.summary(reason)
        self.metrics.session_ended(summary)
        self.link.queue_event("kiosk.session", summary)

    def shutdown(self) -> None:
        self.store.end_all("shutdown")
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- screens --------------------------------------------------------------------------
    def render(
        self, session: Session, screen: str, params: dict[str, str] | None = None, **extra: Any
    ) -> str:
        context = screen_context(screen, session, self.feed, params or {})
        context.update(extra)
        return self.renderer.screen(screen, session.lang, context)

    def show(self, sid: str | None, screen: str, lang: Lang, params: dict[str, str]) -> str:
        session = self.store.touch(sid)
        session.lang = lang
        html = self.render(session, screen, params)  # KeyError (unknown screen) before visiting
        session.visit(screen)
        return html

    def results(self, sid: str | None, query: str, lang: Lang) -> str:
        self.store.touch(sid)
        found = self.feed.index.search(query)
        from kiosk_ui.content import localise

        return self.renderer.part("_results", lang, {"results": [localise(p, lang) for p in found]})

    def push(self, session: Session, screen: str) -> None:
        """Re-render ``screen`` on the page if the resident is looking at it."""
        if session.screen == screen and self.store.alive(session.sid):
            self.bus.publish(session.sid, "screen", {"screen": screen, "html": self.render(session, screen)})

    def toast(self, session: Session, message: Message) -> None:
        text = f"{say(session.lang, message)}\n{say_other(session.lang, message)}"
        self.bus.publish(session.sid, "toast", {"text": text})

    # --- dossier lookup -------------------------------------------------------------------
    def lookup(self, sid: str | None, typed: str) -> str:
        session = self.store.touch(sid)
        session.visit("lookup")
        try:
            code = parse_dossier_code(typed)
        except ParseError as exc:
            session.lookup.clear()
            session.lookup.code = "".join(ch for ch in typed if ch.isprintable())[:MAX_TYPED_CODE]
            session.lookup.outcome = "invalid"
            session.lookup.message = with_reason("lookup.invalid", exc)
        else:
            self._start_lookup(session, code)
            self._answer_lookup(session, code)
        return self.render(session, "lookup")

    def lookup_reset(self, sid: str | None) -> str:
        session = self.store.touch(sid)
        session.lookup.clear()
        session.visit("lookup")
        return self.render(session, "lookup")

    def _start_lookup(self, session: Session, code: str) -> None:
        session.lookup.clear()
        session.lookup.code, session.lookup.outcome = code, "busy"
        session.count("lookup")

    def _answer_lookup(self, session: Session, code: str) -> None:
        result = self.link.lookup(code)
        if not self.store.alive(session.sid) or session.lookup.code != code:
            return  # the resident left (or asked again) meanwhile: drop the answer
        session.lookup.outcome = result.outcome
        session.lookup.dossier = result.dossier
        session.lookup.message = LOOKUP_MESSAGES.get(result.outcome)

    # --- printing -------------------------------------------------------------------------
    def print_receipt(self, sid: str | None) -> str:
        session = self.store.touch(sid)
        dossier = session.lookup.dossier if session.lookup.outcome == "found" else None
        if dossier is None:
            key = "print.nothing"
        else:
            from kiosk_ui.receipt import dossier_receipt

            key = self.devices.print_receipt(dossier_receipt(dossier))
            if key == "print.ok":
                session.count("print")
        return self.render(
            session,
            "lookup",
            print_message=say(session.lang, STRINGS[key]),
            print_message_other=say_other(session.lang, STRINGS[key]),
            print_kind="ok" if key == "print.ok" else "error",
        )

    # --- identity -------------------------------------------------------------------------
    def consent(self, sid: str | None) -> str:
        session = self.store.touch(sid)
        session.clear_identity()
        session.consent = True
        session.visit("identity")
        return self.render(session, "identity")

    def clear_identity(self, sid: str | None) -> str:
        session = self.store.touch(sid)
        had = session.identity is not None
        session.clear_identity()
        if had:
            session.notice = STRINGS["id.cleared"]
        session.visit("identity")
        return self.render(session, "identity")

    # --- rating ---------------------------------------------------------------------------
    def rate(self, sid: str | None, score: object, reasons: object) -> str:
        session = self.store.touch(sid)
        session.visit("rating")
        if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
            pick = STRINGS["rate.pick"]
            return self.render(
                session,
                "rating",
                message=say(session.lang, pick),
                message_other=say_other(session.lang, pick),
            )
        picked = [r for r in RATING_REASONS if isinstance(reasons, list) and r in reasons]
        self.link.queue_event(
            "kiosk.rating", {"score": score, "reasons": picked, "lang": session.lang, "rated_at": now_ts()}
        )
        session.count("rating")
        return self.render(session, "rating", done=True)

    # --- scanner (runs on the scanner thread) ---------------------------------------------
    def on_scan(self, text: str) -> None:
        self.metrics.count("scans")
        session = self.store.current()
        if session is None:
            return  # nobody in front of the kiosk page: drop the scan
        if session.screen == "identity":
            self._scan_identity(session, text)
        elif session.screen == "submit" and session.submission is not None:
            if session.submission.step == "identify":
                self.flow.on_card(session, text)
            else:
                self.toast(session, STRINGS["scan.unknown"])
        elif looks_like_cccd(text):
            self.toast(session, STRINGS["id.open_first"])
        else:
            self._scan_code(session, text)

    def on_garbage(self) -> None:
        session = self.store.current()
        if session is not None:
            self.toast(session, STRINGS["scan.garbage"])

    def _scan_identity(self, session: Session, text: str) -> None:
        if not session.consent:
            session.identity_message = STRINGS["id.need_consent"]
        else:
            try:
                person = parse_cccd(text)
            except ParseError as exc:
                session.identity_message = with_reason("id.bad_card", exc)
            else:
                session.clear_identity()
                session.identity, session.consent = person, True
                session.count("identity")
        self.push(session, "identity")

    def _scan_code(self, session: Session, text: str) -> None:
        try:
            code = parse_dossier_code(text)
        except ParseError as exc:
            if session.screen == "lookup":
                session.lookup.clear()
                session.lookup.outcome, session.lookup.message = (
                    "invalid",
                    with_reason("lookup.invalid", exc),
                )
                self.push(session, "lookup")
            else:
                self.toast(session, STRINGS["scan.unknown"])
            return
        session.visit("lookup")
        self._start_lookup(session, code)
        self.push(session, "lookup")
        self._pool.submit(self._finish_scanned_lookup, session, code)

    def _finish_scanned_lookup(self, session: Session, code: str) -> None:
        self._answer_lookup(session, code)
        self.push(session, "lookup")
