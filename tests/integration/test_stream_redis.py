"""The stream worker against a real redis-server started by the test (free port, AOF on)."""

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

from sentistream.config import Settings
from sentistream.runtime import load_classifier
from sentistream.stream.redis_io import RedisSink, RedisStreamSource, connect
from sentistream.stream.worker import StreamWorker
from sentistream.testing import RedisServer, tiny_model_folder

pytestmark = pytest.mark.integration
WORDS = ["love", "hate", "great", "awful", "game", "music", "happy", "sad", "today", "team"]


@pytest.fixture()
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    with RedisServer(tmp_path / "redis") as r:
        yield r


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stream-models")
    tiny_model_folder(root, "tiny", "1", seed=3)
    return root


def _posts(n: int, prefix: str = "p") -> list[dict[str, str]]:
    return [
        {
            "id": f"{prefix}{i}",
            "text": f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]} number {i}",
            "created_at": "2026-11-01T12:00:00Z",
            "lang": "en",
        }
        for i in range(n)
    ]


MALFORMED = [
    "not json",
    '{"id": "m1"}',
    '{"id": "m2", "text": 5}',
    "[1, 2, 3]",
    '{"id": "m3", "text": ""}',
    '{"id": "m4", "text": "' + "x" * 30_000 + '"}',
    '{"id": {"a": 1}, "text": "hi"}',
]


def _ingest(url: str, payloads: list[str], stream: str = "sentistream:posts") -> None:
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for data in payloads:
        pipe.xadd(stream, {"data": data})
    pipe.execute()
    client.close()


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, and SIGKILL if it does not drain in time (never leave a process behind)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def _output_ids(url: str) -> list[str]:
    client = redis.Redis.from_url(url)
    ids = [f[b"id"].decode() for _, f in client.xrange("sentistream:results")]
    client.close()
    return ids


async def _run_worker(
    url: str, repo: Path, until: int, consumer: str = "w1", **settings_kw: object
) -> dict[str, object]:
    settings = Settings(model_repository=repo, model="tiny", intra_op_threads=1, **settings_kw)
    client = connect(url)
    source = RedisStreamSource(
        client,
        settings.input_stream,
        settings.consumer_group,
        consumer,
        dead_letter_stream=settings.dead_letter_stream,
        block_ms=100,
        claim_idle_ms=settings.claim_idle_ms,
        max_deliveries=settings.max_deliveries,
    )
    sink = RedisSink(client, settings.output_stream, settings.output_channel)
    worker = StreamWorker(
        source,
        load_classifier(settings),
        redis_sink=sink,
        dead_letter_stream=settings.dead_letter_stream,
        batch_size=64,
        batch_delay_ms=5,
    )
    task = asyncio.create_task(worker.run())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        n = await client.xlen(settings.output_stream) + await client.xlen(
            settings.dead_letter_stream
        )
        if n >= until:
            break
        await asyncio.sleep(0.05)
    await worker.stop()
    summary = await asyncio.wait_for(task, 30)
    await client.aclose()
    return summary


def test_every_post_once_and_malformed_to_dead_letter(server: RedisServer, tiny_repo: Path) -> None:
    posts = _posts(1000)
    payloads = [json.dumps(p) for p in posts]
    for k, bad in enumerate(MALFORMED):
        payloads.insert(100 * k + 7, bad)
    _ingest(server.url, payloads)
    summary = asyncio.run(_run_worker(server.url, tiny_repo, len(payloads)))
    ids = _output_ids(server.url)
    assert sorted(ids) == sorted(p["id"] for p in posts)
    client = redis.Redis.from_url(server.url)
    dead = client.xrange("sentistream:dead")
    assert len(dead) == len(MALFORMED)
    reasons = " | ".join(f[b"reason"].decode() for _, f in dead)
    for expected in (
        "invalid JSON",
        "missing field 'text'",
        "must be a string",
        "JSON object",
        "empty",
        "limit",
        "'id' must be",
    ):
        assert expected in reasons, reasons
    assert client.xpending("sentistream:posts", "sentistream")["pending"] == 0
    record = json.loads(client.xrange("sentistream:results", count=1)[0][1][b"data"])
    assert record["model"] == "tiny" and record["source"] == "redis" and record["lang"] == "en"
    assert summary["dead_lettered"] == len(MALFORMED)


def test_replayed_posts_do_not_create_second_records(server: RedisServer, tiny_repo: Path) -> None:
    posts = [json.dumps(p) for p in _posts(300)]
    _ingest(server.url, posts)
    asyncio.run(_run_worker(server.url, tiny_repo, 300))
    _ingest(server.url, posts[:150])  # the same ids again
    client = redis.Redis.from_url(server.url)

    async def drain() -> None:
        await _run_worker(server.url, tiny_repo, 10**9, consumer="w2")

    async def bounded() -> None:
        task = asyncio.create_task(drain())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if (
                client.xpending("sentistream:posts", "sentistream")["pending"] == 0
                and client.xinfo_groups("sentistream:posts")[0]["lag"] == 0
            ):
                break
        task.cancel()

    asyncio.run(bounded())
    ids = _output_ids(server.url)
    assert len(ids) == 300 and len(set(ids)) == 300


def test_pending_entries_of_a_dead_consumer_are_claimed(
    server: RedisServer, tiny_repo: Path
) -> None:
    _ingest(server.url, [json.dumps(p) for p in _posts(50)])
    client = redis.Redis.from_url(server.url)
    client.xgroup_create("sentistream:posts", "sentistream", id="0")
    taken = client.xreadgroup("sentistream", "dead-worker", {"sentistream:posts": ">"}, count=20)
    assert len(taken[0][1]) == 20  # delivered to a consumer that then died without acking
    time.sleep(0.3)
    asyncio.run(_run_worker(server.url, tiny_repo, 50, claim_idle_ms=200))
    assert sorted(_output_ids(server.url)) == sorted(f"p{i}" for i in range(50))
    assert client.xpending("sentistream:posts", "sentistream")["pending"] == 0


def test_entry_delivered_too_often_goes_to_dead_letter(
    server: RedisServer, tiny_repo: Path
) -> None:
    _ingest(server.url, [json.dumps(p) for p in _posts(3)])
    client = redis.Redis.from_url(server.url)
    client.xgroup_create("sentistream:posts", "sentistream", id="0")
    client.xreadgroup("sentistream", "crashy", {"sentistream:posts": ">"}, count=1)
    time.sleep(0.3)
    asyncio.run(_run_worker(server.url, tiny_repo, 3, claim_idle_ms=200, max_deliveries=1))
    dead = client.xrange("sentistream:dead")
    assert len(dead) == 1 and b"delivered 2 times" in dead[0][1][b"reason"]
    assert sorted(_output_ids(server.url)) == ["p1", "p2"]


def _worker_proc(
    url: str, repo: Path | None, name: str, *extra: str, capture: bool = False
) -> subprocess.Popen[bytes]:
    """A `sentistream stream --source redis` worker process; ``repo=None`` runs the shipped
    model; ``extra`` flags come last (so they override the defaults here)."""
    env = {**os.environ, "SENTISTREAM_REDIS_URL": url, "TOKENIZERS_PARALLELISM": "false"}
    model = ["--model-repository", str(repo), "--model", "tiny"] if repo else []
    args = [
        "stream",
        "--source",
        "redis",
        "--consumer",
        name,
        *model,
        "--intra-op-threads",
        "1",
        "--claim-idle-ms",
        "1000",
        "--log-level",
        "WARNING",
        *extra,
    ]
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "sentistream", *args], env=env, stdout=out, stderr=out
    )


def test_kill_9_workers_repeatedly_loses_and_duplicates_nothing(server: RedisServer) -> None:
    """20,000 posts, two workers in the group, four kill -9 while they process (the shipped
    model makes the run long enough for the kills to land mid-batch)."""
    posts = _posts(20_000)
    _ingest(server.url, [json.dumps(p) for p in posts])
    client = redis.Redis.from_url(server.url)
    workers = {name: _worker_proc(server.url, None, name) for name in ("a", "b")}
    kills = 0
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and client.xlen("sentistream:results") < len(posts):
            # Every 0.75 s while between 0 and 90% done: on a fast host (two workers at 1,100
            # posts/s finish 20,000 posts in ~18 s) four kills still land mid-run.
            time.sleep(0.75)
            done = client.xlen("sentistream:results")
            if kills < 4 and 0 < done < len(posts) * 0.9:
                victim = "ab"[kills % 2]
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait()
                kills += 1
                workers[victim] = _worker_proc(server.url, None, victim)
    finally:
        for proc in workers.values():
            _stop(proc)
    ids = _output_ids(server.url)
    assert kills == 4
    assert len(ids) == len(posts) and len(set(ids)) == len(posts)
    assert client.xpending("sentistream:posts", "sentistream")["pending"] == 0


def test_redis_killed_and_restarted_from_aof(server: RedisServer, tiny_repo: Path) -> None:
    posts = _posts(6000)
    _ingest(server.url, [json.dumps(p) for p in posts])
    time.sleep(1.2)  # appendfsync everysec: the input is on disk
    worker = _worker_proc(server.url, tiny_repo, "a")
    client = redis.Redis.from_url(server.url)
    try:
        deadline = time.monotonic() + 60
        while client.xlen("sentistream:results") < 1000 and time.monotonic() < deadline:
            time.sleep(0.1)
        server.kill()
        time.sleep(2.0)
        server.start()
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and client.xlen("sentistream:results") < len(posts):
            time.sleep(0.5)
        assert worker.poll() is None, "the worker must survive the Redis restart"
    finally:
        assert _stop(worker) == 0
    ids = _output_ids(server.url)
    assert len(ids) == len(posts) and len(set(ids)) == len(posts)


def test_worker_http_endpoints_pubsub_and_subscribe_replay(
    server: RedisServer, tiny_repo: Path
) -> None:
    import httpx

    from sentistream.testing import free_port

    posts = _posts(200)
    _ingest(server.url, [json.dumps(p) for p in posts] + ["broken"])
    client = redis.Redis.from_url(server.url)
    pubsub = client.pubsub()
    pubsub.subscribe("sentistream:results")
    port = free_port()
    env = {**os.environ, "SENTISTREAM_REDIS_URL": server.url, "TOKENIZERS_PARALLELISM": "false"}
    worker = _worker_proc(
        server.url, tiny_repo, "h", "--http-port", str(port), "--host", "127.0.0.1"
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.xlen("sentistream:results") < 200:
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        for _ in range(50):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"{base}/healthz").json() == {"live": True}
        metrics = httpx.get(f"{base}/metrics").text
        assert "sentistream_worker_processed_total 200.0" in metrics
        assert "sentistream_worker_dead_lettered_total 1.0" in metrics
        assert "sentistream_worker_consumer_lag 0.0" in metrics
        assert 'sentistream_worker_stage_seconds_count{stage="inference"}' in metrics
    finally:
        assert _stop(worker) == 0
    live = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            live.append(json.loads(message["data"])["id"])
    assert sorted(live) == sorted(p["id"] for p in posts)  # the classic redis-cli SUBSCRIBE view
    replay = subprocess.run(
        [
            sys.executable,
            "-m",
            "sentistream",
            "subscribe",
            "--from",
            "0",
            "--json",
            "--limit",
            "200",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    ids = [json.loads(line)["id"] for line in replay.stdout.splitlines()]
    assert sorted(ids) == sorted(p["id"] for p in posts)


def test_demo_publishes_to_redis(server: RedisServer) -> None:
    env = {**os.environ, "SENTISTREAM_REDIS_URL": server.url, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "sentistream", "demo", "--rate", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "SUBSCRIBE sentistream:results" in proc.stderr
    assert len(proc.stdout.splitlines()) == 40
    assert len(_output_ids(server.url)) == 40


def test_remote_model_server_down_for_10_seconds_loses_nothing(
    server: RedisServer, tiny_repo: Path
) -> None:
    from sentistream.testing import ServerProcess

    posts = _posts(3000)
    _ingest(server.url, [json.dumps(p) for p in posts])
    model_server = ServerProcess(tiny_repo, args=["--model", "tiny"]).start()
    worker = _worker_proc(
        server.url,
        None,
        "r",
        "--model-url",
        f"grpc://{model_server.grpc}",
        "--model",
        "tiny",
        "--stream-batch-size",
        "16",
    )
    client = redis.Redis.from_url(server.url)
    replacement = None
    try:
        deadline = time.monotonic() + 60
        while client.xlen("sentistream:results") < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert model_server.stop() == 0
        stalled_at = client.xlen("sentistream:results")
        time.sleep(10)
        assert client.xlen("sentistream:results") <= stalled_at + 16  # nothing processed
        assert worker.poll() is None
        replacement = ServerProcess(tiny_repo, args=["--model", "tiny"])
        replacement.http_port, replacement.grpc_port = (
            model_server.http_port,
            model_server.grpc_port,
        )
        replacement.start()
        deadline = time.monotonic() + 120
        while client.xlen("sentistream:results") < len(posts) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        _stop(worker)
        if replacement is not None:
            replacement.stop()
    ids = _output_ids(server.url)
    assert len(ids) == len(posts) and len(set(ids)) == len(posts)
    assert client.xpending("sentistream:posts", "sentistream")["pending"] == 0


def test_redis_password_never_appears_in_logs_or_errors(tmp_path: Path, tiny_repo: Path) -> None:
    secret = "s3cret-redis-pw-42"
    with RedisServer(tmp_path / "pw", password=secret) as r:
        _ingest(r.url, [json.dumps(p) for p in _posts(100)])
        worker = _worker_proc(r.url, tiny_repo, "pw", "--log-level", "DEBUG", capture=True)
        try:
            time.sleep(3)
            r.kill()  # force reconnect warnings
            time.sleep(2)
            r.start()
            time.sleep(2)
        finally:
            worker.send_signal(signal.SIGTERM)
            out, err = worker.communicate(timeout=60)
        assert len(_output_ids(r.url)) == 100
        # The right server with a wrong password: refused at once, and the error says so
        # without repeating the URL it was given.
        wrong_url = f"redis://:{secret}x@127.0.0.1:{r.port}/0"
        wrong = subprocess.run(
            [sys.executable, "-m", "sentistream", "stream", "--source", "redis"],
            env={**os.environ, "SENTISTREAM_REDIS_URL": wrong_url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert wrong.returncode == 2 and "refused the login" in wrong.stderr, wrong.stderr
    for text in (out.decode(), err.decode(), wrong.stdout, wrong.stderr):
        assert secret not in text
    assert "redis unavailable" in err.decode()


@pytest.mark.parametrize("fault", ["client-kill", "client-pause"])
def test_redis_connection_killed_or_paused_loses_nothing(
    server: RedisServer, tiny_repo: Path, fault: str
) -> None:
    posts = _posts(4000)
    _ingest(server.url, [json.dumps(p) for p in posts])
    worker = _worker_proc(server.url, None, "f")  # the shipped model: a run of a few seconds
    client = redis.Redis.from_url(server.url)
    try:
        deadline = time.monotonic() + 60
        while client.xlen("sentistream:results") < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        if fault == "client-kill":
            for _ in range(3):  # kill every client connection but ours, three times
                me = client.client_id()
                for c in client.client_list():
                    if int(c["id"]) != me:
                        client.client_kill_filter(_id=int(c["id"]))
                time.sleep(0.5)
        else:
            client.client_pause(3000)  # all clients blocked for 3 s
            time.sleep(3.5)
        deadline = time.monotonic() + 120
        while client.xlen("sentistream:results") < len(posts) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.poll() is None
    finally:
        assert _stop(worker) == 0
    ids = _output_ids(server.url)
    assert len(ids) == len(posts) and len(set(ids)) == len(posts)
    assert client.xpending("sentistream:posts", "sentistream")["pending"] == 0


def test_disk_full_on_the_jsonl_sink_acks_nothing(server: RedisServer, tiny_repo: Path) -> None:
    _ingest(server.url, [json.dumps(p) for p in _posts(50)])
    env = {**os.environ, "SENTISTREAM_REDIS_URL": server.url, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sentistream",
            "stream",
            "--source",
            "redis",
            "--consumer",
            "d",
            "--model-repository",
            str(tiny_repo),
            "--model",
            "tiny",
            "--output",
            "/dev/full",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "No space left on device" in proc.stderr
    assert "Traceback" not in proc.stderr
    client = redis.Redis.from_url(server.url)
    assert client.xlen("sentistream:results") == 0
    assert client.xpending("sentistream:posts", "sentistream")["pending"] > 0  # kept for a retry
    asyncio.run(_run_worker(server.url, tiny_repo, 50, consumer="d"))  # disk fixed: all done
    assert sorted(_output_ids(server.url)) == sorted(f"p{i}" for i in range(50))


def test_live_consumer_keeps_a_slow_batch_and_a_dead_ones_entries_are_claimed(
    server: RedisServer,
) -> None:
    """The pending heartbeat: a live worker whose batch takes longer than claim_idle_ms keeps
    its entries (idle time reset by XCLAIM JUSTID, no delivery counted); once it stops, they go
    idle and another consumer's XAUTOCLAIM takes them."""
    _ingest(server.url, [json.dumps(p) for p in _posts(5)])
    sync = redis.Redis.from_url(server.url)
    sync.xgroup_create("sentistream:posts", "sentistream", id="0")
    # "slow" has read the five entries and is still classifying them.
    taken = sync.xreadgroup("sentistream", "slow", {"sentistream:posts": ">"}, count=5)

    async def scenario() -> tuple[list[int], list[int], int]:
        client = connect(server.url)
        source = RedisStreamSource(
            client,
            "sentistream:posts",
            "sentistream",
            "slow",
            dead_letter_stream="sentistream:dead",
            claim_idle_ms=300,
        )
        for entry_id, fields in taken[0][1]:  # handed to the worker: in flight
            source._hand_out(source._envelope(entry_id, fields))
        beat = asyncio.create_task(source._heartbeat())
        stolen_while_alive = []
        for _ in range(12):  # 1.2 s: four times claim_idle_ms
            await asyncio.sleep(0.1)
            reply = sync.xautoclaim("sentistream:posts", "sentistream", "other", 300, "0-0")
            stolen_while_alive.append(len(reply[1]))
        deliveries = [
            p["times_delivered"]
            for p in sync.xpending_range("sentistream:posts", "sentistream", "-", "+", 10)
        ]
        await source.close()
        await beat
        await asyncio.sleep(0.4)  # no heartbeat any more: the entries go idle
        reply = sync.xautoclaim("sentistream:posts", "sentistream", "other", 300, "0-0")
        await client.aclose()
        return stolen_while_alive, deliveries, len(reply[1])

    stolen, deliveries, claimed_after = asyncio.run(scenario())
    assert stolen == [0] * 12
    assert deliveries == [1] * 5  # the heartbeat counted no delivery
    assert claimed_after == 5


def test_own_pending_entries_are_read_page_by_page_once(server: RedisServer) -> None:
    """A restarted consumer with more pending entries than one batch reads each of them once
    (delivery count 2: the first read and this one), not the first page again and again while
    it is still being classified (which would count deliveries until the entries were
    dead-lettered)."""
    _ingest(server.url, [json.dumps(p) for p in _posts(10)])
    sync = redis.Redis.from_url(server.url)
    sync.xgroup_create("sentistream:posts", "sentistream", id="0")
    sync.xreadgroup("sentistream", "w", {"sentistream:posts": ">"}, count=10)  # then it died

    async def restart() -> list[str]:
        client = connect(server.url)
        source = RedisStreamSource(
            client,
            "sentistream:posts",
            "sentistream",
            "w",
            dead_letter_stream="sentistream:dead",
            batch=3,
            block_ms=100,
            max_deliveries=2,
        )
        seen: list[str] = []
        async with asyncio.timeout(10):
            async for env in source.stream():  # nothing is acked: all stay pending
                seen.append(env.post.id if env.post else "?")
                if len(seen) == 10:
                    break
            await asyncio.sleep(0.3)  # a page re-read would show up as more deliveries
        await source.close()
        await client.aclose()
        return seen

    seen = asyncio.run(restart())
    assert sorted(seen) == sorted(p["id"] for p in _posts(10))
    pending = sync.xpending_range("sentistream:posts", "sentistream", "-", "+", 20)
    assert [p["times_delivered"] for p in pending] == [2] * 10
    assert sync.xlen("sentistream:dead") == 0
