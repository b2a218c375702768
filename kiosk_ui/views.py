"""Template contexts for each screen, built from the session and the current content."""

from __future__ import annotations

from datetime import date
from typing import Any

from kiosk_ui.content import localise
from kiosk_ui.contentfeed import ContentFeed
from kiosk_ui.i18n import RATING_REASONS, Lang, other_lang, pick, text
from kiosk_ui.parsers import Sex
from kiosk_ui.sessions import Message, Session

SCREENS = ("home", "procedures", "procedure", "lookup", "identity", "rating", "signage")
DONE_STATUSES = frozenset({"ready", "returned"})
"""Finished for the resident: shown with a green check."""
UNDERWAY_STATUSES = frozenset({"received", "processing"})
"""Still being handled: a neutral clock, never the check that reads as done."""
STEP_STATES = ("done", "current", "pending")


def say(lang: Lang, message: Message | None) -> str | None:
    if message is None:
        return None
    return message[1] if lang == "en" else message[0]


def say_other(lang: Lang, message: Message | None) -> str | None:
    """The same message in the other language (errors are shown in both)."""
    return say(other_lang(lang), message)


def vi_date(value: object) -> str:
    if not isinstance(value, str) or not value:
        return ""
    try:
        return date.fromisoformat(value[:10]).strftime("%d/%m/%Y")
    except ValueError:
        return value


def status_class(status: str) -> str:
    """``good`` (done, green check), ``progress`` (underway, clock) or ``attention`` (warning)."""
    if status in DONE_STATUSES:
        return "good"
    if status in UNDERWAY_STATUSES:
        return "progress"
    return "attention"


def dossier_view(dossier: dict[str, Any], lang: Lang) -> dict[str, Any]:
    status = str(dossier.get("status", ""))
    steps = []
    for step in dossier.get("steps") or []:
        state = step.get("status") if step.get("status") in STEP_STATES else "done"
        name = step.get(f"name_{lang}") or step.get("name", "")
        steps.append(
            {
                "name": name,
                "state": state,
                "label": text(lang, f"step.{state}"),
                "date": vi_date(step.get("date")),
                "agency": step.get("agency") or "",
            }
        )
    return {
        "code": dossier.get("code", ""),
        "procedure": dossier.get(f"procedure_{lang}") or dossier.get("procedure", ""),
        "status_label": dossier.get(f"status_{lang}") or dossier.get("status_vi") or status,
        "status_class": status_class(status),
        "agency": dossier.get("agency") or "",
        "received": vi_date(dossier.get("received_date")),
        "due": vi_date(dossier.get("due_date")),
        "note": dossier.get("note") or "",
        "steps": steps,
    }


def identity_view(session: Session, lang: Lang) -> dict[str, Any] | None:
    person = session.identity
    if person is None or person.wiped:
        return None
    sex = {Sex.MALE: "sex.male", Sex.FEMALE: "sex.female"}.get(person.sex) if person.sex else None
    return {
        "name": person.name,
        "dob": person.birth_date.strftime("%d/%m/%Y") if person.birth_date else "",
        "sex": text(lang, sex) if sex else "",
        "address": person.address,
        "masked_id": person.masked_id,
    }


def screen_context(
    screen: str, session: Session, feed: ContentFeed, params: dict[str, str]
) -> dict[str, Any]:
    """The context for ``screen``; raises KeyError for an unknown screen or procedure."""
    lang = session.lang
    ctx: dict[str, Any] = {"active": session.active, "notice": say(lang, session.take_notice())}
    if screen == "procedures":
        ctx["query"] = params.get("q", "")
        ctx["results"] = [localise(p, lang) for p in feed.index.search(ctx["query"])]
    elif screen == "procedure":
        ctx["p"] = localise(feed.index.by_id[params.get("id", "")], lang)
    elif screen == "lookup":
        lk = session.lookup
        ctx.update(
            d=dossier_view(lk.dossier, lang) if lk.outcome == "found" and lk.dossier else None,
            busy=lk.outcome == "busy",
            message=say(lang, lk.message),
            message_other=say_other(lang, lk.message),
            code=lk.code,
            print_message=None,
            print_message_other=None,
            print_kind="info",
        )
    elif screen == "identity":
        ctx.update(
            person=identity_view(session, lang),
            consent=session.consent,
            message=say(lang, session.identity_message),
            message_other=say_other(lang, session.identity_message),
        )
    elif screen == "rating":
        ctx.update(done=False, reasons=RATING_REASONS, message=None, message_other=None)
    elif screen == "signage":
        other = other_lang(lang)
        ctx["items"] = [
            {
                "title": pick(lang, a.title),
                "body": pick(lang, a.body),
                "title_other": pick(other, a.title) if a.title.get(other) else "",
                "body_other": pick(other, a.body) if a.body.get(other) else "",
            }
            for a in feed.current_announcements()
        ]
    elif screen != "home":
        raise KeyError(screen)
    return ctx
