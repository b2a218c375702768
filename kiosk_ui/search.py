"""Diacritic-free, ranked search over the procedure catalogue.

``fold`` maps Vietnamese text to plain lower-case ASCII words ("Đăng ký kết hôn" → "dang ky ket
hon"), so a resident may type with or without accents. Ranking: every query word must appear
(as a word prefix) in the procedure; matches in the name weigh most, a name that starts with the
query or contains it as a phrase is lifted (a keyword phrase less so), and shorter names win ties.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9]+")
_D = str.maketrans({"đ": "d", "Đ": "d"})


def fold(text: str) -> str:
    """Lower-case ASCII form of ``text``: accents dropped, đ → d, punctuation → spaces."""
    decomposed = unicodedata.normalize("NFD", text.translate(_D).lower())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(_WORD.findall(plain))


def words(text: str) -> list[str]:
    return fold(text).split()


@dataclass(frozen=True)
class SearchDoc:
    """The folded text of one catalogue entry, by weight class."""

    key: str
    name: str
    name_words: tuple[str, ...]
    other_words: frozenset[str]
    other_text: str
    name_len: int


def make_doc(key: str, names: Iterable[str], others: Iterable[str]) -> SearchDoc:
    folded_names = [fold(n) for n in names]
    name_words = tuple(w for n in folded_names for w in n.split())
    folded_others = [fold(text) for text in others]
    other = frozenset(w for text in folded_others for w in text.split())
    return SearchDoc(
        key, " | ".join(folded_names), name_words, other, " | ".join(folded_others), len(folded_names[0])
    )


def _word_score(token: str, doc: SearchDoc, is_last: bool) -> float:
    """Score of one query word; the last word may be a prefix (the resident is still typing)."""
    if token in doc.name_words:
        return 10.0
    if is_last and any(w.startswith(token) for w in doc.name_words):
        return 6.0
    if token in doc.other_words:
        return 3.0
    if is_last and any(w.startswith(token) for w in doc.other_words):
        return 2.0
    if len(token) >= 3 and any(token in w for w in doc.name_words):
        return 1.0
    return 0.0


def score(query: str, doc: SearchDoc) -> float:
    """0 when some query word is missing; otherwise higher is better."""
    tokens = words(query)
    if not tokens:
        return 0.0
    total = 0.0
    for index, token in enumerate(tokens):
        part = _word_score(token, doc, index == len(tokens) - 1)
        if part == 0.0:
            return 0.0
        total += part
    phrase = " ".join(tokens)
    for name in doc.name.split(" | "):
        if name.startswith(phrase):
            total += 25.0
            break
        if f" {phrase}" in f" {name}":
            total += 15.0
            break
    else:
        if len(tokens) > 1 and f" {phrase}" in f" {doc.other_text}":
            total += 10.0  # a known synonym, e.g. "hộ khẩu" for permanent residence
    return total - doc.name_len / 100.0


def search(query: str, docs: Sequence[SearchDoc], limit: int = 50) -> list[str]:
    """Keys of the matching docs, best first (all of them, in order, for an empty query)."""
    if not words(query):
        return [d.key for d in docs][:limit]
    scored = [(score(query, d), i, d.key) for i, d in enumerate(docs)]
    hits = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))
    return [key for _, _, key in hits[:limit]]
