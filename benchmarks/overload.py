"""Overload: drive the model server past its capacity and check that it sheds load.

1. capacity: closed-loop wrk with 16 connections for ``--measure`` seconds -> C texts/s;
2. overload: wrk with enough connections to offer about ``--factor`` x C (default 2x) while the
   queue is kept small, for ``--duration`` seconds; a Lua script counts responses by status;
   a probe client sends one request every 100 ms (retrying a 429 at once) and records the
   latency of the accepted attempts;
   the server's RSS is sampled every 200 ms;
3. recovery: right after, light load (4 connections): every request must succeed at once.

Pass criteria (asserted by tests/integration/test_overload.py with short durations): only 200
and 429 answers, some 429s, accepted p99 bounded, RSS growth bounded, full recovery.

    python benchmarks/overload.py [--duration 20] [--factor 2]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from bench_classify import rss_mb

from sentistream.config import BUNDLED_MODELS
from sentistream.testing import ServerProcess

RESULTS = Path(__file__).resolve().parent / "results"
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"texts": ["what a great game tonight", "worst service ever", "at 3pm"]}'
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) s200 = 0; s429 = 0; s4xx = 0; s5xx = 0; sother = 0 end
request = function() return wrk.format("POST", nil, nil, wrk.body) end
response = function(status, headers, body)
  if status == 200 then s200 = s200 + 1
  elseif status == 429 then s429 = s429 + 1
  elseif status >= 500 then s5xx = s5xx + 1
  elseif status >= 400 then s4xx = s4xx + 1
  else sother = sother + 1 end
end
done = function(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write("STATUS 200 " .. t:get("s200") .. "\\n")
    io.write("STATUS 429 " .. t:get("s429") .. "\\n")
    io.write("STATUS 4xx " .. t:get("s4xx") .. "\\n")
    io.write("STATUS 5xx " .. t:get("s5xx") .. "\\n")
    io.write("STATUS other " .. t:get("sother") .. "\\n")
  end
end
"""


def wrk(url: str, connections: int, seconds: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA)
    proc = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, int(seconds))}s",
            "-s",
            fh.name,
            f"{url}/v1/classify",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    Path(fh.name).unlink()
    out = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr or out}")
    statuses = {s: int(n) for s, n in re.findall(r"^STATUS (\w+) (\d+)$", out, re.M)}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": float(rps.group(1)) if rps else 0.0,
        "statuses": statuses,
        "socket_errors": errors.group(1) if errors else "",
    }


def probe(url: str, stop: threading.Event, out: list[tuple[int, float]]) -> None:
    """Every 100 ms, one request that has to get through: a 429 is retried at once.

    Every attempt is recorded (status, seconds). Under overload the queue refills as soon as a
    slot frees, so a probe that waited 100 ms after each 429 could go a whole short run without
    one accepted request; retrying at once competes like any other client and measures what an
    accepted request costs.
    """
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            code = 429
            while code == 429 and not stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = client.post(f"{url}/v1/classify", json={"text": "probe: is it still fast?"})
                    code = r.status_code
                except httpx.HTTPError:
                    code = 0
                out.append((code, time.perf_counter() - t0))
            stop.wait(0.1)


def run(
    duration: float = 20.0, factor: float = 2.0, measure: float = 5.0, max_queue_texts: int = 96
) -> dict[str, Any]:
    args = [
        "--model",
        "tweet-sentiment",
        "--log-level",
        "WARNING",
        "--max-queue-texts",
        str(max_queue_texts),
    ]
    with ServerProcess(BUNDLED_MODELS, threads=2, args=args) as server:
        idle_rss = rss_mb(server.proc.pid)
        capacity = wrk(server.url, 16, measure)
        texts_per_s = capacity["requests_per_s"] * 3
        connections = max(32, int(16 * factor * 2))
        samples: list[float] = []
        probes: list[tuple[int, float]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(rss_mb(server.proc.pid))
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        prober = threading.Thread(target=probe, args=(server.url, stop, probes), daemon=True)
        sampler.start()
        prober.start()
        overload = wrk(server.url, connections, duration)
        stop.set()
        sampler.join(5)
        prober.join(35)
        time.sleep(0.5)  # what was queued at the end of the overload (<= max_queue_texts)
        recovery = wrk(server.url, 4, max(2.0, measure / 2))
        accepted = [lat for code, lat in probes if code == 200]
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "capacity_texts_per_s": round(texts_per_s, 1),
            "overload_connections": connections,
            "offered_vs_capacity": round(
                overload["requests_per_s"] / max(1e-9, capacity["requests_per_s"]), 2
            ),
            "overload_statuses": overload["statuses"],
            "overload_socket_errors": overload["socket_errors"],
            "probe_requests": len(probes),
            "probe_statuses": {
                str(c): sum(1 for x, _ in probes if x == c) for c in sorted({x for x, _ in probes})
            },
            "accepted_p50_ms": round(float(np.percentile(accepted, 50)) * 1000, 1)
            if accepted
            else None,
            "accepted_p99_ms": round(float(np.percentile(accepted, 99)) * 1000, 1)
            if accepted
            else None,
            "rss_idle_mb": round(idle_rss, 1),
            "rss_max_mb": round(max(samples), 1) if samples else None,
            "recovery_statuses": recovery["statuses"],
            "server_alive": server.proc.poll() is None,
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--factor", type=float, default=2.0)
    a = parser.parse_args()
    result = run(a.duration, a.factor)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.now(UTC):%Y-%m-%d}-overload"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
