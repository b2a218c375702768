"""The one console command, ``cityedge``, with a sub-command per kind of user.

Each part of the project contributes its sub-commands through a ``register(app)`` function in
its own ``cli`` module; nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import importlib

import typer

# Modules that contribute sub-commands, in help order.
_PARTS = (
    "agent.cli",
    "fleet.cli",
    "fleet.releases.cli",
    "hil.cli",
    "cityedge.demo",
    "provisioning.cli",
    "models.cli",
    "agent.camera.cli",
    "kiosk_ui.cli",
)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="cityedge",
        help="cityedge: kiosk and roadside-camera agents, fleet service, provisioning and demo.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for name in _PARTS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A part that is not installed (e.g. an extra left out) simply adds no commands;
            # a missing dependency *inside* a part is a real error and propagates.
            if exc.name is not None and name.startswith(exc.name):
                continue
            raise
        module.register(app)
    return app


def main() -> None:
    build_app()()
