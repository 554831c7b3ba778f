"""Server latency at 50% and 90% of saturation, with an open-loop load generator.

Saturation: a closed loop (``--concurrency`` requests always in flight, one text each) for
``--duration`` seconds gives the most texts/s the server sustains. Then requests arrive as a
Poisson process at 50% and 90% of that rate, independent of answers (open loop), and each
latency is measured from the request's *scheduled* time to its answer, so queueing in the
client or server counts (no coordinated omission). The client is a small HTTP/1.1 keep-alive
client on asyncio streams (cheap next to the server on a 2-core machine); the same client
measures ours and the baseline.

    python benchmarks/latency.py --model tweet-sentiment [--checkpoint runs/multi-v2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import DATA, background_load, child_env, val_texts
from serverless import baseline_server_cmd, ours_server_cmd


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def post(self, path: str, body: bytes) -> int:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = None
        for line in lines[1:]:
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        if length is None:
            raise RuntimeError("response without Content-Length")
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def _pool(host: str, port: int, n: int) -> asyncio.Queue[Conn]:
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(n):
        pool.put_nowait(await Conn.open(host, port))
    return pool


async def closed_loop(
    host: str, port: int, path: str, bodies: list[bytes], concurrency: int, duration: float
) -> dict[str, Any]:
    """Most texts/s with ``concurrency`` requests always in flight."""
    pool = await _pool(host, port, concurrency)
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration

    async def worker(k: int) -> None:
        nonlocal errors
        conn = await pool.get()
        i = k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            status = await conn.post(path, bodies[i % len(bodies)])
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
            i += concurrency
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {**_latency_summary(latencies), "texts_per_s": round(len(latencies) / elapsed, 1),
            "errors": errors, "concurrency": concurrency}  # fmt: skip


async def open_loop(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    rate: float,
    duration: float,
    connections: int = 64,
    seed: int = 7,
) -> dict[str, Any]:
    """Poisson arrivals at ``rate``/s for ``duration`` s; latency from the scheduled time."""
    pool = await _pool(host, port, connections)
    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0
    tasks: list[asyncio.Task[None]] = []

    async def one(scheduled: float, body: bytes) -> None:
        nonlocal errors
        conn = await pool.get()
        try:
            status = await conn.post(path, body)
        finally:
            pool.put_nowait(conn)
        if status == 200:
            latencies.append(time.perf_counter() - scheduled)
        else:
            errors += 1

    start = time.perf_counter()
    at = start
    i = 0
    while at < start + duration:
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(at, bodies[i % len(bodies)])))
        i += 1
        at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().close()
    return {
        **_latency_summary(latencies),
        "offered_per_s": round(rate, 1),
        "arrived_per_s": round(i / duration, 1),  # the Poisson draw actually sent
        "texts_per_s": round(len(latencies) / elapsed, 1),
        "requests": i,
        "errors": errors,
    }


def _latency_summary(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "requests_ok": 0}
    arr = np.asarray(latencies) * 1000
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p90_ms": round(float(np.percentile(arr, 90)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
        "requests_ok": len(latencies),
    }


def _start(cmd: list[str], ready_url: str, timeout: float = 120) -> subprocess.Popen[bytes]:
    import urllib.request

    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env()
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(ready_url, timeout=1) as r:  # noqa: S310 - local
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{cmd} did not become ready")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure_server(
    cmd: list[str],
    ready_url: str,
    classify_url: str,
    texts: list[str],
    *,
    duration: float,
    concurrency: int,
    levels: tuple[float, ...] = (0.5, 0.9),
) -> dict[str, Any]:
    """Saturation, then open-loop latency at each share of it, on one server process."""
    from urllib.parse import urlsplit

    url = urlsplit(classify_url)
    host, port, path = url.hostname or "127.0.0.1", int(url.port or 80), url.path
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    proc = _start(cmd, ready_url)
    try:
        asyncio.run(closed_loop(host, port, path, bodies[:64], 4, 1.0))  # warm-up
        saturation = asyncio.run(closed_loop(host, port, path, bodies, concurrency, duration))
        out: dict[str, Any] = {"saturation": saturation, "levels": {}}
        for share in levels:
            rate = share * saturation["texts_per_s"]
            out["levels"][f"{round(share * 100)}%"] = asyncio.run(
                open_loop(host, port, path, bodies, rate, duration)
            )
        return out
    finally:
        _stop(proc)


def server_latency(
    model: str,
    checkpoint: Path | None,
    data: Path,
    *,
    duration: float = 10.0,
    concurrency: int = 32,
    threads: int = 2,
    baseline: bool = True,
) -> dict[str, Any]:
    texts = val_texts(data)
    ours_cmd, ours_ready, ours_url, _ = ours_server_cmd(model, threads)
    result: dict[str, Any] = {
        "model": model,
        "duration_s": duration,
        "closed_loop_concurrency": concurrency,
        "threads_per_server": threads,
        "background": background_load(),
        "client": "asyncio HTTP/1.1 keep-alive (benchmarks/latency.py), same machine",
        "ours_rest": measure_server(
            ours_cmd, ours_ready, ours_url, texts, duration=duration, concurrency=concurrency
        ),
    }
    if baseline:
        b_cmd, b_ready, b_url, _ = baseline_server_cmd(checkpoint, threads, model)
        result["baseline_rest"] = measure_server(
            b_cmd, b_ready, b_url, texts, duration=duration, concurrency=concurrency
        )
        result["saturation_ratio"] = round(
            result["ours_rest"]["saturation"]["texts_per_s"]
            / max(result["baseline_rest"]["saturation"]["texts_per_s"], 1e-9),
            2,
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA / "tweeteval" / "sentiment")
    parser.add_argument("--model", default="tweet-sentiment")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    result = server_latency(
        args.model,
        args.checkpoint,
        args.data,
        duration=args.duration,
        concurrency=args.concurrency,
        threads=args.threads,
        baseline=not args.no_baseline,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
