"""``sentistream stream --source stdin`` reads a pipe and a redirected file like the file source:
a line that is too long or not UTF-8 is dead-lettered and the next post still arrives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
TOO_LONG = 5 * 1024 * 1024  # over the 4 MiB line limit


def stream_cmd(tiny_repo: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sentistream",
        "stream",
        "--source",
        "stdin",
        "--model-repository",
        str(tiny_repo),
        "--model",
        "tiny:1",
        "--intra-op-threads",
        "1",
        "--log-level",
        "WARNING",
    ]


@pytest.fixture(scope="module")
def posts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stdin") / "posts.jsonl"
    with path.open("wb") as fh:
        fh.write(json.dumps({"id": "a", "text": "love this"}).encode() + b"\n")
        fh.write(json.dumps({"id": "big", "text": "x" * TOO_LONG}).encode() + b"\n")
        fh.write(json.dumps({"id": "b", "text": "hate that"}).encode() + b"\r\n")
        fh.write(b'{"id": "latin1", "text": "caf\xe9"}\n')
        fh.write(json.dumps({"id": "c", "text": "last line, no newline"}).encode())
    return path


@pytest.mark.parametrize("how", ["pipe", "redirect"])
def test_too_long_and_non_utf8_lines_are_dead_lettered_and_reading_goes_on(
    tiny_repo: Path, posts_file: Path, how: str
) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SENTISTREAM_REDIS_URL", None)
    with posts_file.open("rb") as fh:
        if how == "redirect":  # sentistream stream --source stdin < posts.jsonl
            proc = subprocess.run(
                stream_cmd(tiny_repo), stdin=fh, capture_output=True, env=env, timeout=120
            )
        else:  # cat posts.jsonl | sentistream stream --source stdin
            cat = subprocess.Popen(["cat"], stdin=fh, stdout=subprocess.PIPE)
            assert cat.stdout is not None
            proc = subprocess.run(
                stream_cmd(tiny_repo), stdin=cat.stdout, capture_output=True, env=env, timeout=120
            )
            cat.stdout.close()
            assert cat.wait(10) == 0
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr[-2000:]
    assert [json.loads(line)["id"] for line in proc.stdout.splitlines()] == ["a", "b", "c"]
    summary = json.loads(stderr.strip().splitlines()[-1])
    assert (summary["processed"], summary["dead_lettered"]) == (3, 2)
    big = len(json.dumps({"id": "big", "text": "x" * TOO_LONG}))
    assert f"line 2 is longer than 4194304 bytes ({big})" in stderr
    assert "line 4 is not valid UTF-8 (byte 29)" in stderr


def test_sigterm_ends_a_worker_waiting_on_an_idle_pipe(tiny_repo: Path) -> None:
    """A pipe that stays open but quiet: SIGTERM drains and exits 0 at once (the read that
    waits for data is ended), instead of waiting for the next line or the end of the pipe."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SENTISTREAM_REDIS_URL", None)
    proc = subprocess.Popen(
        stream_cmd(tiny_repo),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps({"id": "only", "text": "hello"}).encode() + b"\n")
        proc.stdin.flush()
        first = proc.stdout.readline()  # the post went through: the worker is now idle
        assert json.loads(first)["id"] == "only"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
    assert code == 0 and took < 5
