"""Submitting a dossier at the kiosk: procedure → card → form → photographed pages → review →
consent → ``dossier.submit`` through the agent → dossier code, fee by VietQR, printed receipt.

Everything the resident gives (typed values, page photos) stays in the server-side session
(``SubmissionState``) and is dropped as soon as the city's gateway has answered with a dossier code,
or when the session ends (reset, idle, end screen). Nothing is written to disk or logged: log lines
name the outcome only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kiosk_ui.agentlink import SubmitOutcome, SubmitResult
from kiosk_ui.forms import Form, check_pages, clean_value, prefill, validate_form
from kiosk_ui.i18n import STRINGS
from kiosk_ui.parsers import ParseError, parse_cccd
from kiosk_ui.sessions import SUBMIT_STEPS, Session, SubmissionState

if TYPE_CHECKING:
    from kiosk_ui.core import KioskCore

log = logging.getLogger(__name__)

SCREEN = "submit"
PAGE_OPS = ("up", "down", "delete")


class SubmissionFlow:
    def __init__(self, core: KioskCore) -> None:
        self.core = core

    # --- helpers ----------------------------------------------------------------------------
    def form_of(self, procedure_id: str) -> Form:
        """The procedure's form in the catalogue in use (KeyError: unknown or not submittable)."""
        procedure = self.core.feed.index.by_id[procedure_id]
        if procedure.form is None:
            raise KeyError(procedure_id)
        return procedure.form

    def _state(self, sid: str | None) -> tuple[Session, SubmissionState | None]:
        session = self.core.store.touch(sid)
        session.visit(SCREEN)
        return session, session.submission

    def _render(self, session: Session) -> str:
        return self.core.render(session, SCREEN)

    # --- start and identify -----------------------------------------------------------------
    def start(self, sid: str | None, procedure_id: object) -> str:
        session = self.core.store.touch(sid)
        session.drop_submission()
        form = self.form_of(procedure_id if isinstance(procedure_id, str) else "")
        state = SubmissionState(procedure_id=str(procedure_id), submission_id=str(uuid.uuid4()))
        session.submission = state
        session.count("submit_started")
        if session.identity is not None and not session.identity.wiped:
            state.values, state.step = prefill(form, session.identity), "form"
        else:
            state.values = prefill(form, None)
        session.visit(SCREEN)
        return self._render(session)

    def card_consent(self, sid: str | None) -> str:
        session, state = self._state(sid)
        if state is not None and state.step == "identify":
            session.clear_identity()
            session.consent = True
        return self._render(session)

    def skip_card(self, sid: str | None) -> str:
        session, state = self._state(sid)
        if state is not None and state.step == "identify":
            state.step = "form"
        return self._render(session)

    def on_card(self, session: Session, text: str) -> None:
        """A scan while the identify step is shown (scanner thread)."""
        state = session.submission
        if state is None or state.step != "identify":
            return
        if not session.consent:
            state.message = STRINGS["id.need_consent"]
        else:
            try:
                person = parse_cccd(text)
            except ParseError as exc:
                vi, en = STRINGS["id.bad_card"]
                state.message = (f"{vi}: {exc.reason_vi}", f"{en}: {exc.reason_en}")
            else:
                session.clear_identity()
                session.identity, session.consent = person, True
                session.count("identity")
                state.values = prefill(self.form_of(state.procedure_id), person)
                state.step, state.message = "form", None
        self.core.push(session, SCREEN)

    # --- form -------------------------------------------------------------------------------
    def save_form(self, sid: str | None, values: object) -> str:
        session, state = self._state(sid)
        if state is None or state.step not in ("form", "review"):
            return self._render(session)
        form = self.form_of(state.procedure_id)
        given = values if isinstance(values, Mapping) else {}
        state.values = {f.id: clean_value(given.get(f.id, state.values.get(f.id, ""))) for f in form.fields}
        state.errors = validate_form(form, state.values)
        state.step = "form" if state.errors else "documents"
        return self._render(session)

    def keep_form(self, sid: str | None, values: object) -> str:
        """Keep what was typed without checking it (the page is drawn again, e.g. in the other language)."""
        session, state = self._state(sid)
        if state is not None and state.step == "form" and isinstance(values, Mapping):
            form = self.form_of(state.procedure_id)
            state.values = {
                f.id: clean_value(values.get(f.id, state.values.get(f.id, ""))) for f in form.fields
            }
        return self._render(session)

    def back(self, sid: str | None, step: object) -> str:
        session, state = self._state(sid)
        if (
            state is not None
            and step in SUBMIT_STEPS[:4]
            and state.step != "done"
            and SUBMIT_STEPS.index(str(step)) < SUBMIT_STEPS.index(state.step)
        ):
            state.step, state.message = str(step), None
        return self._render(session)

    # --- documents --------------------------------------------------------------------------
    def capture(self, sid: str | None, document: object, replace: object) -> str:
        session, state = self._state(sid)
        if state is None or state.step != "documents":
            return self._render(session)
        form = self.form_of(state.procedure_id)
        doc = next((d for d in form.documents if d.id == document), None)
        if doc is None:
            return self._render(session)
        pages = state.pages.setdefault(doc.id, [])
        index = replace if isinstance(replace, int) and not isinstance(replace, bool) else None
        if index is None and len(pages) >= doc.pages_max:
            state.capture_message = (
                f"“{doc.name['vi']}” đã đủ {doc.pages_max} trang. Bấm “Chụp lại” ở trang cần thay.",
                f"“{doc.name['en']}” already has {doc.pages_max} page(s). "
                "Press “Retake” on the page to replace.",
            )
            return self._render(session)
        shot = self.core.devices.photograph_page()
        if shot.jpeg is None:
            state.capture_message = shot.reason
        else:
            if index is not None and 0 <= index < len(pages):
                pages[index] = shot.jpeg
            else:
                pages.append(shot.jpeg)
            state.capture_message, state.revision = None, state.revision + 1
            state.page_errors.pop(doc.id, None)
        return self._render(session)

    def page_op(self, sid: str | None, document: object, index: object, op: object) -> str:
        session, state = self._state(sid)
        if state is None or state.step != "documents" or op not in PAGE_OPS:
            return self._render(session)
        pages = state.pages.get(str(document))
        if pages is None or not isinstance(index, int) or not 0 <= index < len(pages):
            return self._render(session)
        if op == "delete":
            pages.pop(index)
        else:
            other = index - 1 if op == "up" else index + 1
            if 0 <= other < len(pages):
                pages[index], pages[other] = pages[other], pages[index]
        state.revision += 1
        return self._render(session)

    def documents_done(self, sid: str | None) -> str:
        session, state = self._state(sid)
        if state is not None and state.step == "documents":
            state.page_errors = check_pages(self.form_of(state.procedure_id), state.page_count())
            state.capture_message = None
            if not state.page_errors:
                state.step = "review"
        return self._render(session)

    def page_jpeg(self, sid: str | None, document: str, index: int) -> bytes | None:
        session = self.core.store.get(sid)
        state = session.submission
        if state is None:
            return None
        pages = state.pages.get(document, [])
        return pages[index] if 0 <= index < len(pages) else None

    # --- consent and submit -----------------------------------------------------------------
    def review_done(self, sid: str | None) -> str:
        session, state = self._state(sid)
        if state is not None and state.step == "review":
            state.step = "consent"
        return self._render(session)

    @staticmethod
    def manifest(state: SubmissionState) -> list[tuple[dict[str, Any], bytes]]:
        """Every page as its ``dossier.submit`` entry and its JPEG."""
        return [
            ({"document": doc, "page": n + 1, "sha256": hashlib.sha256(jpeg).hexdigest()}, jpeg)
            for doc, shots in state.pages.items()
            for n, jpeg in enumerate(shots)
        ]

    def upload_pages(self, state: SubmissionState) -> SubmitOutcome:
        """Send the pages the gateway does not have yet, one request each (resumes a broken upload)."""
        held = self.core.link.held_pages(state.submission_id)
        if held.outcome != "ok" or held.receipt is None:
            return held.outcome
        have = set(held.receipt.get("held") or [])
        for entry, jpeg in self.manifest(state):
            if entry["sha256"] in have:
                continue
            sent = self.core.link.upload_page(
                {
                    "submission_id": state.submission_id,
                    "sha256": entry["sha256"],
                    "jpeg": base64.b64encode(jpeg).decode("ascii"),
                }
            )
            if sent.outcome != "ok":
                return sent.outcome
            have.add(entry["sha256"])
        return "ok"

    def params(self, state: SubmissionState) -> dict[str, Any]:
        pages = [entry for entry, _ in self.manifest(state)]
        return {
            "submission_id": state.submission_id,
            "procedure": state.procedure_id,
            "procedure_name": self.core.feed.index.by_id[state.procedure_id].name.get("vi", ""),
            "form": dict(state.values),
            "pages": pages,
        }

    def send(self, sid: str | None) -> str:
        session, state = self._state(sid)
        if state is None or state.step != "consent":
            return self._render(session)
        form = self.form_of(state.procedure_id)
        if validate_form(form, state.values) or check_pages(form, state.page_count()):
            state.step = "review"  # cannot happen through the screens; never send a wrong dossier
            return self._render(session)
        state.attempts += 1
        uploaded = self.upload_pages(state) if state.pages else "ok"
        result = self.core.link.submit(self.params(state)) if uploaded == "ok" else SubmitResult(uploaded)
        if not self.core.store.alive(session.sid) or session.submission is not state:
            return self._render(session)  # the resident left meanwhile
        if result.outcome == "ok" and result.receipt is not None:
            state.result = dict(result.receipt)
            state.step, state.message = "done", None
            # the city has the dossier: drop what the resident typed and photographed
            for pages in state.pages.values():
                pages.clear()
            state.pages.clear()
            state.values.clear()
            session.clear_identity()
            session.count("submitted")
            log.info("dossier submitted (%s)", state.result.get("payment", "?"))
        else:
            state.message = STRINGS[f"submit.{result.outcome}"]
            session.count(f"submit_{result.outcome}")
        return self._render(session)

    def payment(self, sid: str | None) -> str:
        session, state = self._state(sid)
        if state is not None and state.result is not None and state.result.get("payment") == "unpaid":
            answer = self.core.link.receipt(str(state.result.get("code", "")))
            if answer.outcome == "ok" and answer.receipt is not None:
                paid = answer.receipt
                state.result.update(payment=paid.get("payment"), vietqr=paid.get("vietqr"))
        return self._render(session)

    def print_receipt(self, sid: str | None) -> str:
        session, state = self._state(sid)
        if state is None or state.result is None:
            return self._render(session)
        from kiosk_ui.content import localise
        from kiosk_ui.receipt import submission_receipt

        procedure = localise(self.core.feed.index.by_id[state.procedure_id], "vi")["name"]
        state.print_key = self.core.devices.print_receipt(submission_receipt(state.result, procedure))
        if state.print_key == "print.ok":
            session.count("print")
        return self._render(session)
