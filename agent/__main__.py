"""``python -m agent run|emit|status``: the same commands as ``cityedge agent``."""

from agent.cli import main

main()
