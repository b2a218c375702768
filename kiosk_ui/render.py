"""Jinja2 rendering of the shell page and the screen fragments (templates are package data)."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from kiosk_ui.i18n import Lang, other_lang, translator


def build_env() -> Environment:
    return Environment(
        loader=PackageLoader("kiosk_ui", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


class Renderer:
    def __init__(self, site_name: dict[str, str]) -> None:
        self.env = build_env()
        self.site_name = site_name

    def screen(self, screen: str, lang: Lang, context: dict[str, Any]) -> str:
        """A screen fragment (header + content) in ``lang``."""
        template = self.env.get_template(f"{context.pop('template', screen)}.html")
        base = {
            "screen": screen,
            "lang": lang,
            "other_lang": other_lang(lang),
            "t": translator(lang),
            "t_other": translator(other_lang(lang)),
            "site_name": self.site_name[lang],
            "notice": None,
            "active": False,
        }
        return template.render({**base, **context})

    def part(self, name: str, lang: Lang, context: dict[str, Any]) -> str:
        """A partial (e.g. the search results list)."""
        return self.env.get_template(f"{name}.html").render({"lang": lang, "t": translator(lang), **context})

    def shell(self, lang: Lang, fragment: str, timing: dict[str, float]) -> str:
        return self.env.get_template("shell.html").render(
            lang=lang,
            fragment=fragment,
            t=translator(lang),
            tv=translator("vi"),
            te=translator("en"),
            **timing,
        )
