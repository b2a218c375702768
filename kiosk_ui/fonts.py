"""A font with full Vietnamese coverage, found on the system at run time (never shipped here).

Debian / Raspberry Pi OS: ``fonts-noto-core`` (installed by scripts/setup.sh) gives Noto Sans.
The page gets a subset (Latin + Vietnamese + punctuation, WOFF: ~55 KB instead of ~510 KB),
made in memory with fontTools when the app starts. Without the font the page falls back to the
system font stack in kiosk.css; without fontTools it gets the whole TTF.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SEARCH_DIRS = (
    Path("/usr/share/fonts/truetype/noto"),
    Path("/usr/share/fonts/opentype/noto"),
    Path("/usr/share/fonts/noto"),
    Path("/usr/local/share/fonts"),
)
FACES = {"regular": ("NotoSans-Regular.ttf", 400), "bold": ("NotoSans-Bold.ttf", 700)}
UNICODES = [
    *range(0x20, 0x7F),  # Basic Latin
    *range(0xA0, 0x250),  # Latin-1, Latin Extended-A and -B (ă đ ĩ ũ ơ ư)
    *range(0x300, 0x370),  # combining marks
    *range(0x1EA0, 0x1F00),  # Latin Extended Additional: the toned Vietnamese vowels
    *range(0x2000, 0x2070),  # punctuation: – — “ ” …
    0x20AB,  # ₫
    0x20AC,
]


@dataclass(frozen=True)
class FontFile:
    name: str
    path: Path
    weight: int


def find_fonts(dirs: tuple[Path, ...] = SEARCH_DIRS) -> dict[str, FontFile]:
    """The Noto Sans faces present, by name ("regular", "bold")."""
    found: dict[str, FontFile] = {}
    for name, (filename, weight) in FACES.items():
        for directory in dirs:
            path = directory / filename
            if path.is_file():
                found[name] = FontFile(name, path, weight)
                break
    return found


@functools.lru_cache(maxsize=4)
def subset_woff(path: Path) -> bytes:
    """The font cut down to what Vietnamese and English text need, as WOFF bytes (cached)."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    logging.getLogger("fontTools").setLevel(logging.WARNING)  # it logs every pruned table at INFO

    options = subset.Options()
    options.layout_features = ["*"]
    options.hinting = False
    font = TTFont(str(path))
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=UNICODES)
    subsetter.subset(font)
    font.flavor = "woff"
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()


class FontCache:
    """Font bytes by face name, subset once (in the background at start-up) and kept in memory."""

    def __init__(self, fonts: dict[str, FontFile]) -> None:
        self.fonts = fonts
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def warm(self) -> None:
        threading.Thread(target=self._warm_all, name="kiosk-fonts", daemon=True).start()

    def _warm_all(self) -> None:
        for name in self.fonts:
            self.get(name)

    def get(self, name: str) -> bytes | None:
        font = self.fonts.get(name)
        if font is None:
            return None
        with self._lock:
            if name not in self._data:
                try:
                    self._data[name] = subset_woff(font.path)
                except Exception as exc:  # boundary: fontTools missing or the file odd: send it whole
                    log.warning("font %s not subset (%s): serving the whole file", font.path, exc)
                    self._data[name] = font.path.read_bytes()
            return self._data[name]

    def css(self) -> str:
        """``@font-face`` rules for the faces found (empty when none: the CSS stack takes over)."""
        rules = [
            "@font-face{font-family:'Kiosk Sans';font-style:normal;font-display:block;"
            f"font-weight:{font.weight};src:url('/font/{font.name}.woff') format('woff')}}"
            for font in self.fonts.values()
        ]
        return "\n".join(rules) + "\n"
