"""Soak: model server + stream worker (remote model mode) + Redis under steady load.

Runs for ``--minutes`` (default 30) at ``--rate`` posts/s (default: about half of what the
stack sustains on a 2-core machine), sampling every ``--every`` seconds: results written,
throughput, server and worker RSS. At the end it checks that the output stream holds every
input id exactly once, that nothing was dead-lettered or left pending, and that RSS grew by
less than ``--max-growth-mb``. Writes ``benchmarks/results/<date>-soak.{json,md}``.

    python benchmarks/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from bench_classify import rss_mb

from sentistream.config import BUNDLED_MODELS
from sentistream.testing import RedisServer, ServerProcess

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = ["love", "hate", "great", "awful", "game", "music", "happy", "sad", "today", "team"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=150.0, help="posts per second offered")
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    args = parser.parse_args()
    samples: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(Path(tmp) / "redis") as rds,
        ServerProcess(
            BUNDLED_MODELS, threads=1, args=["--model", "tweet-sentiment", "--log-level", "WARNING"]
        ) as srv,
    ):
        env = {**os.environ, "SENTISTREAM_REDIS_URL": rds.url, "TOKENIZERS_PARALLELISM": "false"}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sentistream",
                "stream",
                "--source",
                "redis",
                "--consumer",
                "soak",
                "--model-url",
                f"grpc://{srv.grpc}",
                "--log-level",
                "WARNING",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(rds.url)
        sent = 0
        start = time.perf_counter()
        next_sample = start + args.every
        end = start + args.minutes * 60
        last_written, last_t = 0, start
        try:
            while time.perf_counter() < end:
                due = int((time.perf_counter() - start) * args.rate)
                if due > sent:
                    pipe = client.pipeline(transaction=False)
                    for i in range(sent, due):
                        text = f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]} post {i}"
                        pipe.xadd(
                            "sentistream:posts", {"data": json.dumps({"id": f"s{i}", "text": text})}
                        )
                    pipe.execute()
                    sent = due
                now = time.perf_counter()
                if now >= next_sample:
                    written = client.xlen("sentistream:results")
                    samples.append(
                        {
                            "t_s": round(now - start, 1),
                            "sent": sent,
                            "written": written,
                            "posts_per_s": round((written - last_written) / (now - last_t), 1),
                            "server_rss_mb": round(rss_mb(srv.proc.pid), 1),
                            "worker_rss_mb": round(rss_mb(worker.pid), 1),
                        }
                    )
                    print(json.dumps(samples[-1]), flush=True)
                    last_written, last_t = written, now
                    next_sample += args.every
                time.sleep(0.02)
            deadline = time.perf_counter() + 120
            while client.xlen("sentistream:results") < sent and time.perf_counter() < deadline:
                time.sleep(0.2)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker_exit = worker.wait(60)
        entries: Any = client.xrange("sentistream:results")
        ids = [f[b"id"].decode() for _, f in entries]
        dead = client.xlen("sentistream:dead")
        pending = client.xpending("sentistream:posts", "sentistream")["pending"]
    first = samples[min(1, len(samples) - 1)] if samples else {}
    last = samples[-1] if samples else {}
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "minutes": args.minutes,
        "rate_offered": args.rate,
        "sent": sent,
        "written": len(ids),
        "unique_ids": len(set(ids)),
        "every_id_once": len(ids) == sent and len(set(ids)) == sent,
        "dead_lettered": dead,
        "pending": pending,
        "worker_exit_code": worker_exit,
        "server_rss_growth_mb": round(
            last.get("server_rss_mb", 0) - first.get("server_rss_mb", 0), 1
        ),
        "worker_rss_growth_mb": round(
            last.get("worker_rss_mb", 0) - first.get("worker_rss_mb", 0), 1
        ),
        "samples": samples,
    }
    result["passed"] = bool(
        result["every_id_once"]
        and dead == 0
        and pending == 0
        and worker_exit == 0
        and result["server_rss_growth_mb"] < args.max_growth_mb
        and result["worker_rss_growth_mb"] < args.max_growth_mb
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.now(UTC):%Y-%m-%d}-soak"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Soak {result['date']}",
        "",
        f"{args.minutes} min at {args.rate} posts/s offered: server (shipped model) + worker "
        "(remote model mode over gRPC) + redis-server (AOF).",
        "",
        "| t (s) | sent | written | posts/s | server RSS MB | worker RSS MB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    md += [
        f"| {s['t_s']} | {s['sent']} | {s['written']} | {s['posts_per_s']} | "
        f"{s['server_rss_mb']} | {s['worker_rss_mb']} |"
        for s in samples
    ]
    md += [
        "",
        f"Every id exactly once: {result['every_id_once']} ({len(ids)} records for {sent} "
        f"posts); dead-lettered {dead}; pending {pending}; RSS growth server "
        f"{result['server_rss_growth_mb']} MB, worker {result['worker_rss_growth_mb']} MB; "
        f"passed: {result['passed']}.",
        "",
        "Reproduce: `make soak` (MINUTES=30).",
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md[-4:]))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
