"""Cyclic garbage collection held off while a latency-critical command starts.

Importing the serving stack (pydantic, FastAPI, uvicorn, numpy, ONNX Runtime) allocates
hundreds of thousands of container objects, and CPython's cyclic collector runs over and over
while it does, finding nothing to free. ``sentistream serve`` and ``classify`` hold the
collector off (:func:`hold`) until their model and stack are up, then :func:`release` moves
everything that exists at that point into the permanent generation (``gc.freeze``: startup
objects live as long as the process, so later collections need not walk them) and turns the
collector back on. The console entry point (:mod:`sentistream.launch`) holds it before the CLI
module is even imported; ``cli.main`` holds it for the held commands and releases it at once
for every other one (a stream worker or a training run collects as usual). Measured: one-model
HTTP server, process start to first answer 0.501 -> 0.476 s (median of 12 paired cold starts,
faster in 11 of 12); ``classify "..."`` 0.355 -> 0.329 s (docs/performance.md, round seven).
"""

from __future__ import annotations

import gc

__all__ = ["HELD_COMMANDS", "command_of", "hold", "release"]

HELD_COMMANDS = frozenset({"serve", "classify"})

_held = False


def command_of(argv: list[str]) -> str | None:
    """The subcommand of a ``sentistream`` command line (its first word not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def hold() -> None:
    """Pause the cyclic collector (a no-op when something else already turned it off)."""
    global _held
    if gc.isenabled():
        gc.disable()
        _held = True


def release() -> None:
    """Freeze what startup allocated and resume the collector; idempotent."""
    global _held
    if _held:
        _held = False
        gc.freeze()
        gc.enable()
