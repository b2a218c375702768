"""Template contexts for each screen, built from the session and the current content."""

from __future__ import annotations

from datetime import date
from typing import Any

from kiosk_ui.content import localise
from kiosk_ui.contentfeed import ContentFeed
from kiosk_ui.i18n import RATING_REASONS, STRINGS, Lang, other_lang, pick, text
from kiosk_ui.parsers import Sex
from kiosk_ui.sessions import Message, Session

SCREENS = ("home", "procedures", "procedure", "lookup", "identity", "rating", "signage", "submit")
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


def submission_view(session: Session, feed: ContentFeed) -> dict[str, Any] | None:
    """The submit screen's context from the session's ``SubmissionState`` (None: nothing started)."""
    from markupsafe import Markup

    from kiosk_ui.receipt import qr_svg, vnd

    state = session.submission
    procedure = feed.index.by_id.get(state.procedure_id) if state is not None else None
    if state is None or procedure is None or procedure.form is None:
        return None
    lang, form = session.lang, procedure.form
    fields = []
    for f in form.fields:
        value = state.values.get(f.id, "")
        options = [{"value": o.value, "label": pick(lang, o.label)} for o in f.options]
        if f.type == "sex":
            options = [
                {"value": "Nam", "label": text(lang, "sex.male")},
                {"value": "Nữ", "label": text(lang, "sex.female")},
            ]
        shown = next((o["label"] for o in options if o["value"] == value), value)
        fields.append(
            {
                "id": f.id,
                "type": f.type,
                "label": pick(lang, f.label),
                "required": f.required,
                "value": value,
                "shown": shown,
                "hint": pick(lang, f.hint) if f.hint else "",
                "options": options,
                "kbd": {"date": "digits", "id_number": "digits", "phone": "digits", "number": "digits"}.get(
                    f.type, "name" if f.type == "name" else "text"
                ),
                "error": say(lang, state.errors.get(f.id)),
                "error_other": say_other(lang, state.errors.get(f.id)),
                "from_card": bool(f.prefill) and session.identity is not None and bool(value),
            }
        )
    documents = []
    for d in form.documents:
        pages = state.pages.get(d.id, [])
        documents.append(
            {
                "id": d.id,
                "name": pick(lang, d.name),
                "pages_min": d.pages_min,
                "pages_max": d.pages_max,
                "pages": [
                    f"/part/page/{d.id}/{n}?sid={session.sid}&v={state.revision}" for n in range(len(pages))
                ],
                "full": len(pages) >= d.pages_max,
                "error": say(lang, state.page_errors.get(d.id)),
                "error_other": say_other(lang, state.page_errors.get(d.id)),
            }
        )
    result = dict(state.result) if state.result is not None else None
    if result is not None:
        fee = result.get("fee")
        result["fee_text"] = vnd(fee) if isinstance(fee, int) and fee > 0 else ""
        payload = result.get("vietqr")
        result["qr"] = Markup(qr_svg(payload)) if isinstance(payload, str) and payload else None
        result["code_qr"] = Markup(qr_svg(str(result.get("code", "")), 240))
    fee_text = vnd(form.fee_vnd) if form.fee_vnd else ""
    return {
        "procedure_id": procedure.id,
        "procedure": pick(lang, procedure.name),
        "agency": pick(lang, procedure.agency),
        "step": state.step,
        "step_no": ("identify", "form", "documents", "review", "consent", "done").index(state.step) + 1,
        "fields": fields,
        "documents": documents,
        "fee_text": fee_text,
        "consent": session.consent,
        "capture_message": say(lang, state.capture_message),
        "capture_message_other": say_other(lang, state.capture_message),
        "message": say(lang, state.message),
        "message_other": say_other(lang, state.message),
        "result": result,
        "print_message": say(lang, STRINGS[state.print_key]) if state.print_key else None,
        "print_message_other": say_other(lang, STRINGS[state.print_key]) if state.print_key else None,
        "print_ok": state.print_key == "print.ok",
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
    elif screen == "submit":
        ctx["s"] = submission_view(session, feed)
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
