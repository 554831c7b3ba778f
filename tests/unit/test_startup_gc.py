"""The cyclic collector is held off while serve/classify start and always turned back on."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sentistream import startup_gc


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    startup_gc.release()
    gc.unfreeze()
    if was:
        gc.enable()


def test_hold_then_release_freezes_startup_objects_and_resumes() -> None:
    gc.enable()
    gc.unfreeze()
    startup_gc.hold()
    assert not gc.isenabled()
    startup_gc.release()
    assert gc.isenabled() and gc.get_freeze_count() > 0
    startup_gc.release()  # idempotent
    assert gc.isenabled()


def test_a_collector_someone_else_turned_off_stays_off() -> None:
    gc.disable()
    startup_gc.hold()
    startup_gc.release()
    assert not gc.isenabled()


@pytest.mark.parametrize(
    "argv",
    [
        ["classify", "I love this"],  # the shipped model, released after loading
        ["classify", "--model", "no-such-model", "hello"],  # fails while loading
        ["settings"],  # not a held command
    ],
)
def test_the_cli_leaves_the_collector_on(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from sentistream.cli import main

    gc.enable()
    main(argv)
    capsys.readouterr()
    assert gc.isenabled()


def test_command_of_finds_the_subcommand() -> None:
    assert startup_gc.command_of(["serve", "--http-port", "0"]) == "serve"
    assert startup_gc.command_of(["--help"]) is None
    assert startup_gc.command_of([]) is None
    assert set(startup_gc.HELD_COMMANDS) == {"serve", "classify"}


@pytest.mark.parametrize(("command", "held"), [("classify", True), ("stream", False)])
def test_the_entry_point_holds_only_for_held_commands(
    command: str, held: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console script holds before importing the CLI for serve/classify; whatever it
    guessed, cli.main decides from the parsed command (a stream run collects)."""
    import sentistream.cli
    from sentistream import launch

    seen: list[bool] = []

    def fake_cli_main() -> int:
        seen.append(gc.isenabled())
        return 0

    gc.enable()
    monkeypatch.setattr(sentistream.cli, "main", fake_cli_main)
    monkeypatch.setattr("sys.argv", ["sentistream", command, "--help"])
    assert launch.main() == 0
    assert seen == [not held]
