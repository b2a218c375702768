"""Spoken guidance: each submission step's instructions read aloud ("Nghe" button, automatic mode).

Only the kiosk's own guidance texts (``guide.*`` in ``kiosk_ui.i18n``) are ever spoken — never what a
resident typed or what a card holds — so the audio can be cached in memory and nothing personal
reaches the synthesiser. :class:`EspeakSpeech` runs ``espeak-ng`` (Debian package, offline; its
Vietnamese voice is ``vi``) and returns a WAV; :class:`SilentSpeech` returns a short silent WAV
(tests of the page, kiosks without audio).
"""

from __future__ import annotations

import functools
import io
import logging
import shutil
import subprocess
import threading
import wave
from typing import Protocol

from kiosk_ui.i18n import STRINGS, Lang

log = logging.getLogger(__name__)

GUIDE_PREFIX = "guide."
VOICES: dict[Lang, str] = {"vi": "vi", "en": "en-gb"}
SPEED_WPM = 150
"""A little slower than espeak's default (175): the lobby is noisy and many residents are elderly."""


class SpeechError(RuntimeError):
    """The synthesiser is missing or failed (the message says which)."""


class Speech(Protocol):
    def wav(self, text: str, lang: Lang) -> bytes: ...


class EspeakSpeech:
    def __init__(self, binary: str = "espeak-ng", timeout_s: float = 10.0) -> None:
        path = shutil.which(binary)
        if path is None:
            raise SpeechError(f"{binary} is not installed (apt-get install espeak-ng)")
        self.binary = path
        self.timeout_s = timeout_s

    def wav(self, text: str, lang: Lang) -> bytes:
        command = [self.binary, "-v", VOICES[lang], "-s", str(SPEED_WPM), "--stdout", text]
        try:
            done = subprocess.run(command, capture_output=True, timeout=self.timeout_s, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise SpeechError(f"espeak-ng failed: {type(exc).__name__}") from exc
        if not done.stdout.startswith(b"RIFF"):
            raise SpeechError("espeak-ng returned no WAV")
        return done.stdout


class SilentSpeech:
    """A quarter second of silence for any text."""

    def wav(self, text: str, lang: Lang) -> bytes:
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(b"\0\0" * 4000)
        return out.getvalue()


class GuideVoice:
    """Guidance texts by key, spoken once and kept (a few hundred KiB for every step in both languages)."""

    def __init__(self, speech: Speech) -> None:
        self.speech = speech
        self._lock = threading.Lock()
        self._say = functools.lru_cache(maxsize=64)(self._synthesise)

    @staticmethod
    def known(key: str) -> bool:
        return key.startswith(GUIDE_PREFIX) and key in STRINGS

    def _synthesise(self, key: str, lang: Lang) -> bytes:
        vi, en = STRINGS[key]
        return self.speech.wav(en if lang == "en" else vi, lang)

    def audio(self, key: str, lang: Lang) -> bytes:
        """The WAV for guidance ``key`` in ``lang``; KeyError for anything but a guidance key."""
        if not self.known(key):
            raise KeyError(key)
        with self._lock:
            return self._say(key, lang)


def build_speech() -> Speech:
    """espeak-ng when installed, else silence (the "Nghe" button then plays nothing; logged)."""
    try:
        return EspeakSpeech()
    except SpeechError as exc:
        log.warning("spoken guidance off: %s", exc)
        return SilentSpeech()
