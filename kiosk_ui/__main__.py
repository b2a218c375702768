"""``python -m kiosk_ui serve|supervise|browser|sign-content`` (what the supervisor starts)."""

from __future__ import annotations

from kiosk_ui.cli import build_kiosk_app


def main() -> None:
    build_kiosk_app()(prog_name="python -m kiosk_ui")


if __name__ == "__main__":
    main()
