"""Spoken guidance: espeak-ng's Vietnamese voice reads each submission step's guidance; only guidance
texts can be spoken; the audio route serves WAV and nothing else."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from kiosk_ui.app import create_app
from kiosk_ui.harness import settings_for_tests
from kiosk_ui.i18n import STRINGS
from kiosk_ui.server import build
from kiosk_ui.sessions import SUBMIT_STEPS
from kiosk_ui.speech import EspeakSpeech, GuideVoice, SilentSpeech


def seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return float(w.getnframes()) / float(w.getframerate())


def test_espeak_reads_vietnamese_guidance_as_wav() -> None:
    speech = EspeakSpeech()  # a kiosk image without espeak-ng fails here (scripts/setup.sh installs it)
    vi = speech.wav(STRINGS["guide.submit.form"][0], "vi")
    assert vi.startswith(b"RIFF") and seconds(vi) > 3.0
    en = speech.wav(STRINGS["guide.submit.form"][1], "en")
    assert en.startswith(b"RIFF") and en != vi


def test_every_screen_and_submission_step_has_guidance_in_both_languages_and_nothing_else_is_spoken() -> None:
    voice = GuideVoice(SilentSpeech())
    for screen in ("home", "procedures", "procedure", "lookup", "identity", "rating"):
        vi, en = STRINGS[f"guide.{screen}"]
        assert vi.strip() and en.strip() and vi != en
    for step in SUBMIT_STEPS:
        vi, en = STRINGS[f"guide.submit.{step}"]
        assert vi.strip() and en.strip() and vi != en
        assert voice.audio(f"guide.submit.{step}", "vi").startswith(b"RIFF")
    assert voice.audio("guide.submit.form", "vi") is voice.audio("guide.submit.form", "vi")  # cached
    for key in ("id.name", "Nguyễn Thị Minh Hằng", "guide.nope", "../etc/passwd"):
        with pytest.raises(KeyError):
            voice.audio(key, "vi")


def test_the_speak_route_serves_guidance_audio_only(tmp_path: Path) -> None:
    kiosk = build(settings_for_tests(tmp_path, 0))
    with TestClient(create_app(kiosk.state)) as client:
        answer = client.get("/api/speak/guide.submit.documents?lang=vi")
        assert answer.status_code == 200 and answer.headers["content-type"] == "audio/wav"
        assert seconds(answer.content) > 2.0  # espeak-ng, not the silent stand-in
        assert client.get("/api/speak/id.name?lang=vi").status_code == 404
        assert client.get("/api/speak/guide.nope").status_code == 404
    kiosk.core.link.stop()


def test_every_screen_offers_its_guidance_aloud(tmp_path: Path) -> None:
    kiosk = build(settings_for_tests(tmp_path, 0))
    with TestClient(create_app(kiosk.state)) as client:
        sid = client.post("/api/session", json={}).json()["sid"]
        head = {"x-kiosk-session": sid}
        for path in ("home", "procedures", "procedure?id=ht-ket-hon", "lookup", "identity", "rating"):
            html = client.get(f"/screen/{path}", headers=head).text
            key = html.split('data-say="', 1)[1].split('"', 1)[0]
            assert key == f"guide.{path.split('?')[0]}"
            assert client.get(f"/api/speak/{key}?lang=en").status_code == 200
    kiosk.core.link.stop()
