"""Console entry point (``sentistream``, ``python -m sentistream``): holds the cyclic collector
off before the CLI and its dependencies are imported when the command is one whose start-up
latency matters (:mod:`sentistream.startup_gc`), then runs :func:`sentistream.cli.main`."""

from __future__ import annotations

import sys

from sentistream import startup_gc

__all__ = ["main"]


def main() -> int:
    if startup_gc.command_of(sys.argv[1:]) in startup_gc.HELD_COMMANDS:
        startup_gc.hold()
    from sentistream.cli import main as cli_main

    return cli_main()
