"""Server benchmark: our server (REST and gRPC) vs a plain FastAPI endpoint wrapping a Hugging
Face transformers pipeline on the same network and texts, side by side in one run.

For each concurrency level a closed-loop asyncio client keeps that many single-text requests
in flight for ``--duration`` seconds and records every latency. Reported: texts/s, p50, p99,
errors, the ratio to the baseline at the same concurrency, server cold start to ready and
idle RSS. Writes ``benchmarks/results/<date>-<host>-server.{json,md}``.

    python benchmarks/bench_server.py --data ../shared/data/tweeteval/sentiment \
        --checkpoint runs/sentiment-v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classify import RESULTS, machine, rss_mb

from sentistream.config import BUNDLED_MODELS
from sentistream.testing import ServerProcess, free_port


def summarize(latencies: list[float], errors: int, elapsed: float) -> dict[str, Any]:
    arr = np.asarray(latencies) * 1000
    return {
        "texts_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(arr, 50)), 2) if len(arr) else None,
        "p99_ms": round(float(np.percentile(arr, 99)), 2) if len(arr) else None,
        "requests": len(latencies),
        "errors": errors,
    }


async def http_load(
    url: str,
    make_body: Any,
    texts: list[str],
    concurrency: int,
    duration: float,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # TCP_NODELAY: httpx writes headers and body separately; without it Nagle + delayed ACK
    # add ~40 ms to every request, for every server alike.
    transport = httpx.AsyncHTTPTransport(
        limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    )
    async with httpx.AsyncClient(timeout=60, transport=transport) as client:

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = await client.post(url, json=make_body(texts[i % len(texts)]), headers=headers)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summarize(latencies, errors, elapsed)


async def grpc_load(
    target: str, texts: list[str], concurrency: int, duration: float
) -> dict[str, Any]:
    import grpc

    from sentistream.protos.inference import grpc_predict_v2_pb2 as v2
    from sentistream.protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
    from sentistream.server.convert import encode_bytes_elements

    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration
    async with grpc.aio.insecure_channel(target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < stop_at:
                req = v2.ModelInferRequest(model_name="tweet-sentiment")
                req.inputs.add(name="text", datatype="BYTES", shape=[1])
                req.raw_input_contents.append(
                    encode_bytes_elements([texts[i % len(texts)].encode()])
                )
                t0 = time.perf_counter()
                try:
                    await stub.ModelInfer(req, timeout=60)
                    latencies.append(time.perf_counter() - t0)
                except grpc.aio.AioRpcError:
                    errors += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summarize(latencies, errors, elapsed)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local texts = {}
for line in io.lines("%(texts)s") do
  if #line > 0 then texts[#texts + 1] = line end
end
local i = 0
request = function()
  i = i + 1
  local t = texts[(i %% #texts) + 1]:gsub('\\\\', '\\\\\\\\'):gsub('"', '\\\\"')
  return wrk.format(nil, "%(path)s", nil, '{"text": "' .. t .. '"}')
end
"""


def wrk_load(
    base_url: str, path: str, texts_file: Path, concurrency: int, duration: float
) -> dict[str, Any]:
    """REST load from wrk (C, event driven): the client costs little CPU next to the server."""
    import re
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT % {"texts": texts_file, "path": path})
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{int(duration)}s",
            "--latency",
            "-s",
            fh.name,
            base_url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    Path(fh.name).unlink()

    def ms(label: str) -> float | None:
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        return round(float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)], 2)

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    return {
        "texts_per_s": round(float(rps.group(1)) if rps else 0.0, 1),
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "requests": int(total.group(1)) if total else 0,
        "errors": errors,
        "client": "wrk",
    }


def start_baseline(
    checkpoint: Path | None, threads: int, model: str = "tweet-sentiment"
) -> tuple[subprocess.Popen[bytes], int, float]:
    port = free_port()
    cmd = [
        sys.executable,
        str(Path(__file__).resolve().parent / "hf_baseline.py"),
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    from benchlib import baseline_args

    cmd += baseline_args(checkpoint, model)
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("baseline server failed to start")
        time.sleep(0.05)
    return proc, port, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, help="fp32 checkpoint for the baseline")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    texts_file = (args.data / "val_text.txt").resolve()
    texts = [t for t in texts_file.read_text().split("\n") if t.strip()]
    use_wrk = shutil.which("wrk") is not None
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "duration_s": args.duration,
        "threads_per_server": args.threads,
        "runs": {},
    }

    with ServerProcess(
        BUNDLED_MODELS,
        threads=args.threads,
        args=["--model", "tweet-sentiment", "--log-level", "WARNING"],
    ) as ours:
        time.sleep(1.0)
        results["ours_cold_start_to_ready_s"] = round(ours.ready_seconds, 3)
        results["ours_idle_rss_mb"] = round(rss_mb(ours.proc.pid), 1)
        for c in levels:
            if use_wrk:
                rest = wrk_load(ours.url, "/v1/classify", texts_file, c, args.duration)
            else:
                rest = asyncio.run(
                    http_load(
                        f"{ours.url}/v1/classify", lambda t: {"text": t}, texts, c, args.duration
                    )
                )
            rpc = asyncio.run(grpc_load(ours.grpc, texts, c, args.duration))
            results["runs"].setdefault(str(c), {})["ours_rest"] = rest
            results["runs"][str(c)]["ours_grpc"] = rpc
            print(f"ours c={c}: rest {rest} grpc {rpc}", flush=True)
        results["ours_rss_after_load_mb"] = round(rss_mb(ours.proc.pid), 1)

    proc, port, ready = start_baseline(args.checkpoint, args.threads)
    try:
        time.sleep(1.0)
        results["baseline_cold_start_to_ready_s"] = round(ready, 3)
        results["baseline_idle_rss_mb"] = round(rss_mb(proc.pid), 1)
        for c in levels:
            if use_wrk:
                base = wrk_load(
                    f"http://127.0.0.1:{port}", "/predict", texts_file, c, args.duration
                )
            else:
                base = asyncio.run(
                    http_load(
                        f"http://127.0.0.1:{port}/predict",
                        lambda t: {"text": t},
                        texts,
                        c,
                        args.duration,
                    )
                )
            results["runs"][str(c)]["hf_pipeline_fastapi"] = base
            print(f"baseline c={c}: {base}", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)

    for c, run in results["runs"].items():
        base_rate = float(run["hf_pipeline_fastapi"]["texts_per_s"] or 1e-9)
        run["ratio_rest_vs_baseline"] = round(run["ours_rest"]["texts_per_s"] / base_rate, 2)
        run["ratio_grpc_vs_baseline"] = round(run["ours_grpc"]["texts_per_s"] / base_rate, 2)
        del c
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.now(UTC):%Y-%m-%d}-{results['machine']['host']}-server"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# Server benchmark {results['date']}",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores. "
        f"Each server gets {args.threads} inference threads; the load generator runs on the "
        f"same machine. Closed loop, one text per request, {args.duration:.0f} s per cell; "
        f"REST load from {'wrk' if use_wrk else 'httpx'}, gRPC load from grpc.aio.",
        "",
        "| concurrency | server | texts/s | p50 ms | p99 ms | errors | vs baseline |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c, run in results["runs"].items():
        for key, name, ratio in (
            ("ours_rest", "sentistream REST", run["ratio_rest_vs_baseline"]),
            ("ours_grpc", "sentistream gRPC", run["ratio_grpc_vs_baseline"]),
            ("hf_pipeline_fastapi", "FastAPI + transformers pipeline", 1.0),
        ):
            r = run[key]
            lines.append(
                f"| {c} | {name} | {r['texts_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                f"{r['errors']} | {ratio}x |"
            )
    lines += [
        "",
        f"Cold start to ready: sentistream {results['ours_cold_start_to_ready_s']} s, baseline "
        f"{results['baseline_cold_start_to_ready_s']} s. Idle RSS: sentistream "
        f"{results['ours_idle_rss_mb']} MB (after load {results['ours_rss_after_load_mb']} MB), "
        f"baseline {results['baseline_idle_rss_mb']} MB.",
        "",
        "Reproduce: `make bench-server`.",
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
