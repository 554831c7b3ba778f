"""Faults at the stream's edges (issue 26): hostile records, lost Redis writes, Redis restarts.

Real redis-server processes on free ports (AOF everysec), real worker processes, kill -9.
Every test ends with each good post id exactly once in the results and nothing pending.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from sentistream.stream.redis_io import DEAD_LETTER_RAW_CHARS, RedisStreamSource, connect
from sentistream.testing import RedisServer
from tests.integration.test_stream_redis import (
    _ingest,
    _output_ids,
    _posts,
    _run_worker,
    _stop,
    _worker_proc,
)

pytestmark = pytest.mark.integration
INPUT, GROUP = "sentistream:posts", "sentistream"


@pytest.fixture()
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    with RedisServer(tmp_path / "redis") as r:
        yield r


def _dead(url: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    entries = [fields for _, fields in client.xrange("sentistream:dead")]
    client.close()
    return entries


def _nothing_pending(url: str) -> bool:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xpending(INPUT, GROUP)["pending"]) == 0
    finally:
        client.close()


SURROGATE_TEXT = '{"id": "h", "text": "hello \\ud800 world"}'
SURROGATE_ID_BAD = '{"id": "\\udc00bad", "text": ""}'  # a bad record whose id is a surrogate


def test_a_lone_surrogate_costs_no_good_post(server: RedisServer, tiny_repo: Path) -> None:
    good = _posts(40)
    payloads = [json.dumps(p) for p in good]
    payloads.insert(17, SURROGATE_TEXT)
    payloads.insert(30, SURROGATE_ID_BAD)
    _ingest(server.url, payloads)
    summary = asyncio.run(_run_worker(server.url, tiny_repo, len(payloads)))
    assert sorted(_output_ids(server.url)) == sorted(p["id"] for p in good)
    dead = _dead(server.url)
    assert len(dead) == 2 and summary["dead_lettered"] == 2
    assert all("lone surrogate" in d["reason"] for d in dead), dead
    assert any("\\ud800" in d["raw"] for d in dead)  # the raw payload, kept as it came
    assert _nothing_pending(server.url)


def test_a_lone_surrogate_in_a_file_stream_with_output_file(
    tmp_path: Path, tiny_repo: Path
) -> None:
    source = tmp_path / "in.jsonl"
    good = _posts(40)
    lines = [json.dumps(p) for p in good]
    lines.insert(5, SURROGATE_TEXT)
    lines.insert(9, SURROGATE_ID_BAD)
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [
            sys.executable, "-m", "sentistream", "stream", "--source", "file",
            "--input", str(source), "--output", str(out), "--model-repository", str(tiny_repo),
            "--model", "tiny", "--intra-op-threads", "1",
        ],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "SENTISTREAM_REDIS_URL"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(p["id"] for p in good)
    assert "lone surrogate" in proc.stderr


def test_oversized_fields_and_records_go_alone_to_the_dead_letters(
    server: RedisServer, tiny_repo: Path
) -> None:
    good = _posts(30)
    payloads = [json.dumps(p) for p in good]
    hostile = [
        {"id": "big-lang", "text": "fine text", "lang": "x" * 100},
        {"id": "huge-lang", "text": "fine text", "lang": "x" * 1_000_000},
        {"id": "big-source", "text": "fine text", "source": "s" * 300},
        {"id": "big-created", "text": "fine text", "created_at": "2026" * 100},
        {"id": "big-record", "text": "fine text", "junk": "j" * 400_000},
        {"id": "long-text", "text": "word " * 10_000},
    ]
    for k, rec in enumerate(hostile):
        payloads.insert(5 * k + 2, json.dumps(rec))
    _ingest(server.url, payloads)
    asyncio.run(_run_worker(server.url, tiny_repo, len(payloads)))
    assert sorted(_output_ids(server.url)) == sorted(p["id"] for p in good)
    dead = _dead(server.url)
    assert len(dead) == len(hostile)
    reasons = " | ".join(d["reason"] for d in dead)
    assert "field 'lang' has 100 characters (at most 64)" in reasons
    assert "record has 1000052 bytes (at most 262144)" in reasons
    assert "field 'source' has 300 characters" in reasons
    assert "field 'created_at' has 400 characters" in reasons
    assert "record has" in reasons and "at most 262144" in reasons
    assert "characters" in reasons and "limit" in reasons  # the text over max_text_chars
    for d in dead:  # a bounded copy of the raw payload, with its full length
        assert len(d["raw"]) <= DEAD_LETTER_RAW_CHARS + 64  # + the "[cut: ...]" mark
        assert int(d["raw_chars"]) >= len(d["raw"])
    assert max(int(d["raw_chars"]) for d in dead) > 1_000_000
    assert _nothing_pending(server.url)


def test_entries_orphaned_while_the_worker_runs_are_finished(
    server: RedisServer, tiny_repo: Path
) -> None:
    """Entries pending for a live consumer that never handed them out (their result and XACK
    were lost, as with Redis's last second) are read again, not kept fresh by the heartbeat
    forever. The orphans appear after the worker's start-up, so its initial read of its own
    pending history cannot be what finds them."""
    sync = redis.Redis.from_url(server.url)

    async def scenario() -> dict[str, object]:
        task = asyncio.create_task(
            _run_worker(server.url, tiny_repo, 25, consumer="w1", claim_idle_ms=300)
        )
        await asyncio.sleep(1.5)  # started, group created, nothing to read
        _ingest(server.url, [json.dumps(p) for p in _posts(25)])
        sync.xreadgroup(GROUP, "w1", {INPUT: ">"}, count=15)  # behind the worker's back
        return await task

    asyncio.run(scenario())
    assert sorted(_output_ids(server.url)) == sorted(f"p{i}" for i in range(25))
    assert _nothing_pending(server.url)


def test_startup_calls_wait_for_a_restarting_redis(server: RedisServer) -> None:
    """Group creation and the replay of the consumer's own pending entries are retried with
    backoff like every other call: Redis down at start-up delays the worker, never kills it."""
    _ingest(server.url, [json.dumps(p) for p in _posts(3)])

    async def scenario() -> list[str]:
        client = connect(server.url)
        source = RedisStreamSource(
            client, INPUT, GROUP, "w", dead_letter_stream="sentistream:dead", block_ms=100
        )
        server.kill()
        seen: list[str] = []

        async def consume() -> None:
            async for env in source.stream():
                seen.append(env.post.id if env.post else "?")
                if len(seen) == 3:
                    return

        task = asyncio.create_task(consume())
        await asyncio.sleep(1.5)
        assert not task.done(), "the source must wait for Redis, not fail"
        server.start()
        async with asyncio.timeout(30):
            await task
        await source.close()
        await client.aclose()
        return seen

    assert sorted(asyncio.run(scenario())) == ["p0", "p1", "p2"]


def _drop_aof_tail(folder: Path, transactions: int) -> int:
    """Cut the last ``transactions`` MULTI/EXEC blocks (and everything after them) off the
    incremental AOF: what `appendfsync everysec` can lose on a power cut. Returns the bytes
    removed."""
    [incr] = sorted((folder / "appendonlydir").glob("*.incr.aof"))[-1:]
    data = incr.read_bytes()
    starts: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        assert data[pos : pos + 1] == b"*", f"unexpected AOF byte at {pos}"
        end = data.index(b"\r\n", pos)
        count = int(data[pos + 1 : end])
        cursor, name = end + 2, b""
        for i in range(count):
            end = data.index(b"\r\n", cursor)
            size = int(data[cursor + 1 : end])
            if i == 0:
                name = data[end + 2 : end + 2 + size]
            cursor = end + 2 + size + 2
        starts.append((pos, name.upper()))
        pos = cursor
    multis = [p for p, name in starts if name == b"MULTI"]
    cut = multis[-transactions]
    incr.write_bytes(data[:cut])
    return len(data) - cut


def test_results_lost_with_the_aof_tail_are_redone_by_the_live_worker(
    server: RedisServer, tiny_repo: Path
) -> None:
    """kill -9 of Redis under AOF everysec with the tail's last result transactions dropped: the
    entries they acknowledged are pending again for a worker that is still alive; it reads them
    again (no restart needed) and every post ends with exactly one record."""
    posts = _posts(3000)
    _ingest(server.url, [json.dumps(p) for p in posts])
    time.sleep(1.2)  # the input is on disk
    worker = _worker_proc(server.url, tiny_repo, "a", "--stream-batch-size", "32")
    client = redis.Redis.from_url(server.url)
    try:
        deadline = time.monotonic() + 60
        while client.xlen("sentistream:results") < 800 and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.send_signal(signal.SIGSTOP)  # the worker is alive but quiet: a clean tail
        time.sleep(1.2)  # everything so far reached the AOF
        server.kill()
        removed = _drop_aof_tail(server.folder, transactions=6)
        assert removed > 0
        server.start()
        client = redis.Redis.from_url(server.url)
        lost_before = client.xpending(INPUT, GROUP)["pending"]
        assert lost_before > 0, "the dropped tail must leave acknowledged entries pending"
        worker.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            len(set(_output_ids(server.url))) < len(posts) or not _nothing_pending(server.url)
        ):
            time.sleep(0.5)
        assert worker.poll() is None, "the worker must survive the Redis restart"
    finally:
        assert _stop(worker) == 0
    ids = _output_ids(server.url)
    assert len(ids) == len(posts) and len(set(ids)) == len(posts)
    assert _nothing_pending(server.url)


def _hostile_jetstream_events(n_good: int) -> tuple[list[str | bytes], list[str]]:
    """``n_good`` posts, plus two no sink can write as they are (a lone surrogate in the text,
    a 100-character language tag) and identity events; the good ids."""
    from tests.integration.test_ingest import bluesky_events

    events, ids = bluesky_events(n_good)
    surrogate = json.loads(events[10])
    surrogate["commit"]["rkey"] = "bad-surrogate"
    surrogate["commit"]["record"]["text"] = "hello \ud800 world"
    long_lang = json.loads(events[20])
    long_lang["commit"]["rkey"] = "bad-lang"
    long_lang["commit"]["record"]["langs"] = ["x" * 100]
    events[30:30] = [json.dumps(surrogate), json.dumps(long_lang)]
    return events, ids


@pytest.mark.parametrize("round_", [1, 2])
def test_fault_suite_every_good_post_once(tmp_path: Path, tiny_repo: Path, round_: int) -> None:
    """Everything at once, twice in a row (``round_``): a live Jetstream through `ingest` with
    hostile posts in it, hostile records pushed straight into the input stream, two workers;
    kill -9 of a worker, SIGTERM and restart of ingest, kill -9 of Redis with the last
    transactions cut off the AOF, then a quiet source. Every good post id ends exactly once in
    the results, every hostile record in the dead letters, nothing pending."""
    from tests.integration.test_bluesky_source import FakeJetstream
    from tests.integration.test_ingest import Background, IngestProcess, pushed_ids, wait_for

    n = 600
    events, good = _hostile_jetstream_events(n)
    direct = [SURROGATE_TEXT, json.dumps({"id": "big", "text": "t", "lang": "x" * 1000})]
    fake = FakeJetstream(events, drop_after=None, publish_interval=0.01)
    with RedisServer(tmp_path / "redis") as server, Background() as background:
        client = redis.Redis.from_url(server.url)

        def results() -> set[str]:
            return set(_output_ids(server.url))

        with background.enter(fake.running()) as jetstream:
            env = {"SENTISTREAM_JETSTREAM_URL": jetstream}
            ingest = IngestProcess(server.url, "bluesky", tmp_path / "i1.log", env)
            workers = {w: _worker_proc(server.url, tiny_repo, w) for w in ("a", "b")}
            try:
                _ingest(server.url, direct)
                assert wait_for(lambda: len(fake.published) >= 120, 60) < 60
                workers["a"].send_signal(signal.SIGKILL)
                workers["a"].wait()
                workers["a"] = _worker_proc(server.url, tiny_repo, "a")

                assert wait_for(lambda: len(fake.published) >= 250, 60) < 60
                code, summary = ingest.sigterm()
                assert code == 0, summary
                ingest = IngestProcess(server.url, "bluesky", tmp_path / "i2.log", env)

                assert wait_for(lambda: len(fake.published) >= 400, 60) < 60
                time.sleep(0.3)
                server.kill()
                assert _drop_aof_tail(server.folder, transactions=3) > 0
                server.start()
                client = redis.Redis.from_url(server.url)

                assert wait_for(lambda: fake.done_publishing, 60) < 60
                # the source is quiet now: everything must still arrive
                took = wait_for(
                    lambda: results() >= set(good) and _nothing_pending(server.url), 120, 0.5
                )
                assert took < 120, f"missing {len(set(good) - results())} posts"
                assert set(pushed_ids(client)) >= set(good)
                code, summary = ingest.sigterm()
                assert code == 0, summary
            finally:
                for proc in workers.values():
                    if proc.poll() is None:
                        _stop(proc)
            assert all(proc.returncode == 0 for proc in workers.values())
        ids = _output_ids(server.url)
        assert sorted(ids) == sorted(good)  # each good post exactly once
        assert _nothing_pending(server.url)
        dead = _dead(server.url)
        reasons = " | ".join(d["reason"] for d in dead)
        # the Jetstream one and the direct one (a replayed event is dead-lettered again: dead
        # letters are at-least-once too, and never a good post)
        assert reasons.count("lone surrogate") >= 2, reasons
        assert not {d.get("id") for d in dead} & set(good)
        assert "field 'lang' has 100 characters" in reasons
        assert "field 'lang' has 1000 characters" in reasons
        client.close()


def test_ingest_reads_again_what_redis_lost(tmp_path: Path) -> None:
    """kill -9 of Redis with ingest's last writes (posts + the checkpoint that covers them) cut
    off the AOF: the still-running ingest sees at its next write that the checkpoint it stored
    is gone, goes back to the one Redis kept, and reads Jetstream again from there; every post
    ends in the input stream exactly once."""
    from tests.integration.test_bluesky_source import FakeJetstream
    from tests.integration.test_ingest import (
        Background,
        IngestProcess,
        bluesky_events,
        pushed_ids,
        wait_for,
    )

    events, ids = bluesky_events(300)
    fake = FakeJetstream(events, drop_after=None, publish_interval=0.02)
    with RedisServer(tmp_path / "redis") as server, Background() as background:
        with background.enter(fake.running()) as jetstream:
            env = {"SENTISTREAM_JETSTREAM_URL": jetstream}
            ingest = IngestProcess(server.url, "bluesky", tmp_path / "ingest.log", env)
            client = redis.Redis.from_url(server.url)
            assert wait_for(lambda: client.xlen(INPUT) >= 120, 60) < 60
            time.sleep(1.1)  # on disk (everysec), then lose the last writes
            before = client.xlen(INPUT)
            server.kill()
            lost = _drop_aof_tail(server.folder, transactions=3)
            server.start()
            client = redis.Redis.from_url(server.url)
            kept = client.xlen(INPUT)
            assert lost > 0 and kept < before
            took = wait_for(
                lambda: fake.done_publishing and set(pushed_ids(client)) >= set(ids), 60, 0.2
            )
            code, summary = ingest.sigterm()
        assert took < 60, f"missing {len(set(ids) - set(pushed_ids(client)))} posts"
        assert code == 0, summary
        assert summary["rewinds"] >= 1
        assert "reading bluesky again from there" in (tmp_path / "ingest.log").read_text()
        pushed = pushed_ids(client)
        assert sorted(pushed) == sorted(ids)  # each once: what Redis kept was a duplicate
        client.close()
