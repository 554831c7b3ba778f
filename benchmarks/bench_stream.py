"""Stream benchmark: posts/s from a Redis input stream to the Redis output stream.

Ours: the first ``--posts`` posts of ``--data`` are pushed into ``sentistream:posts`` of a fresh
``redis-server`` with ``sentistream ingest`` (timed on its own), then ``sentistream stream``
worker processes are started together on the consumer group; the clock runs from process start
(model load included) until every post has a result in ``sentistream:results`` (or a
dead-letter entry), polled with ``XLEN``. Reported per run: end-to-end posts/s, time to the
first result (process start + model load + first batch) and steady-state posts/s (first to
last result), plus a check that every input id appears exactly once in the output stream.
Configurations: two workers with one inference thread each, and (``--single-worker``) one
worker with two threads, and one worker with two single-threaded lanes (what ``sentistream
stream`` picks on two cores when no thread setting is given).

Baseline: the loop people write by hand, on the same posts (the first ``--baseline-posts``;
posts/s keeps the ratio fair): a Hugging Face ``transformers`` text-classification pipeline on
the same network (``hf_baseline.load_pipeline``), one post at a time: ``XRANGE`` the next
input entry, classify it, ``PUBLISH`` the JSON result and ``XADD`` it to an output stream, one
round trip each. Pipeline load is timed apart and not counted in its posts/s. The naive loop
runs once per repeat, in turns with ours, and the ratio is the median of per-round ratios.

Writes ``benchmarks/results/<date>-<host>-stream.{json,md}``.

    python benchmarks/bench_stream.py --data ../shared/data/stream/tweets.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classify import RESULTS, machine, spread
from benchlib import free_stem

from sentistream.config import ENV_PREFIX, Settings, environment_values
from sentistream.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent
INPUT_STREAM = "sentistream:posts"
OUTPUT_STREAM = "sentistream:results"
DEAD_STREAM = "sentistream:dead"
GROUP = "sentistream"
BASELINE_OUTPUT = "naive:results"
BASELINE_CHANNEL = "naive:results"
EXE = [sys.executable, "-m", "sentistream"]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine have spent busy (not idle/iowait) so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    rest = stat.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class CpuMeter:
    """CPU used during a window: by the measured processes, and by everything else on the
    machine (another workload sharing the cores makes the figures lower; this shows by how
    much the machine was shared)."""

    def __init__(self, redis_pid: int) -> None:
        self.redis_pid = redis_pid
        self.busy0 = machine_busy_s()
        self.redis0 = proc_cpu_s(redis_pid)
        self.self0 = self_cpu_s()

    def read(self, wall_s: float, measured_pids: list[int]) -> dict[str, float]:
        """Call while ``measured_pids`` (started inside the window) are still alive."""
        measured = sum(proc_cpu_s(p) for p in measured_pids)
        redis_s = proc_cpu_s(self.redis_pid) - self.redis0
        bench_s = self_cpu_s() - self.self0
        busy = machine_busy_s() - self.busy0
        other = busy - measured - redis_s - bench_s
        cores = len(os.sched_getaffinity(0))
        return {
            "measured_cpu_s": round(measured, 2),
            "redis_cpu_s": round(redis_s, 2),
            "bench_process_cpu_s": round(bench_s, 2),
            "other_processes_cpu_s": round(max(other, 0.0), 2),
            "other_processes_share": round(max(other, 0.0) / (cores * wall_s), 3),
        }


def settings_overrides() -> dict[str, str]:
    """The settings this environment gives the workers (``SENTISTREAM_*``, read as the workers
    read them), so a result says which settings it ran with; secret fields (the Redis URL,
    which may carry a password, and the auth token) left out."""
    secret = {n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
    values = environment_values(Settings.model_fields.keys() - secret)
    return {f"{ENV_PREFIX}{k.upper()}": v for k, v in sorted(values.items())}


def child_env(url: str) -> dict[str, str]:
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "SENTISTREAM_REDIS_URL": url}


def write_posts(data: Path, n: int, out: Path) -> list[str]:
    """The first ``n`` lines of ``data`` into ``out``; returns their ids in order."""
    ids: list[str] = []
    with data.open(encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        for line in src:
            if len(ids) >= n:
                break
            if not line.strip():
                continue
            ids.append(str(json.loads(line)["id"]))
            dst.write(line if line.endswith("\n") else line + "\n")
    if len(ids) < n:
        raise SystemExit(f"{data} has only {len(ids)} posts, --posts asked for {n}")
    return ids


def ingest(url: str, posts_file: Path) -> dict[str, Any]:
    cmd = [*EXE, "ingest", "--source", "file", "--input", str(posts_file)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(url), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"ingest failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(proc.stderr.strip().splitlines()[-1])
    return {"wall_s": round(wall, 3), "ingested": summary["pushed"]}


def group_done(client: redis.Redis, n: int) -> bool:
    """Fallback end condition: the group has read all ``n`` entries and acked them all."""
    for g in client.xinfo_groups(INPUT_STREAM):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == GROUP:
            read = g.get("entries-read")
            return read is not None and int(read) >= n and int(g["pending"]) == 0
    return False


def read_output_ids(client: redis.Redis, stream: str) -> tuple[list[str], dict[str, str]]:
    """Ids from the ``data`` JSON of every entry of ``stream``; and the first record's model."""
    ids: list[str] = []
    model: dict[str, str] = {}
    cursor = "-"
    while True:
        entries: Any = client.xrange(stream, min=cursor, count=5000)
        if not entries:
            break
        for _, fields in entries:
            rec = json.loads(fields[b"data"])
            ids.append(str(rec["id"]))
            if not model and "model" in rec:
                model = {"model": rec["model"], "model_version": rec.get("model_version", "")}
        cursor = "(" + entries[-1][0].decode()
    return ids, model


def check_ids(expected: list[str], got: list[str], dead: int) -> dict[str, Any]:
    counts = collections.Counter(got)
    want = set(expected)
    missing = [i for i in expected if i not in counts]
    duplicated = [i for i, c in counts.items() if c > 1]
    extra = [i for i in counts if i not in want]
    return {
        "expected": len(expected),
        "output_entries": len(got),
        "dead_lettered": dead,
        "missing": len(missing),
        "duplicated": len(duplicated),
        "unexpected": len(extra),
        "examples_missing": missing[:5],
        "examples_duplicated": duplicated[:5],
        "ok": not missing and not duplicated and not extra and len(got) == len(expected),
    }


def stop_proc(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_ours(
    tmp: Path,
    posts_file: Path,
    ids: list[str],
    workers: int,
    threads: int,
    timeout: float,
    label: str,
    model: str = "tweet-sentiment",
    lanes: int = 1,
) -> dict[str, Any]:
    """One fresh Redis, ingest, ``workers`` worker processes; clock from process start."""
    n = len(ids)
    folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=tmp))
    server = RedisServer(folder / "redis")
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    client: redis.Redis | None = None
    try:
        server.start()
        client = redis.Redis.from_url(server.url)
        ing = ingest(server.url, posts_file)
        if client.xlen(INPUT_STREAM) != n:
            raise RuntimeError(f"input stream holds {client.xlen(INPUT_STREAM)} entries, not {n}")
        env = child_env(server.url)
        cmds = [
            [
                *EXE,
                "stream",
                "--source",
                "redis",
                "--consumer",
                f"w{k + 1}",
                "--model",
                model,
                "--intra-op-threads",
                str(threads),
                "--lanes",
                str(lanes),
                "--log-level",
                "WARNING",
            ]
            for k in range(workers)
        ]
        meter = CpuMeter(server.proc.pid)
        started = time.perf_counter()
        for k, cmd in enumerate(cmds):
            log_path = folder / f"w{k + 1}.log"
            logs.append(log_path)
            with log_path.open("wb") as fh:
                procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, env=env))
        first: float | None = None
        done_via = "xlen"
        polls = 0
        while True:
            out = client.xlen(OUTPUT_STREAM)
            now = time.perf_counter()
            if first is None and out > 0:
                first = now
            dead = client.xlen(DEAD_STREAM)
            if out + dead >= n:
                break
            polls += 1
            if polls % 20 == 0 and group_done(client, n):
                done_via = "group drained (fewer results than posts)"
                break
            for proc, log_path in zip(procs, logs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"worker exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}"
                    )
            if now - started > timeout:
                raise TimeoutError(f"{out}/{n} results after {timeout:.0f} s")
            time.sleep(0.02)
        elapsed = now - started
        cpu = meter.read(elapsed, [p.pid for p in procs])
        for proc in procs:
            stop_proc(proc)
        summaries = []
        for log_path in logs:
            lines = [ln for ln in log_path.read_text().splitlines() if ln.startswith("{")]
            summaries.append(json.loads(lines[-1]) if lines else None)
        got, served = read_output_ids(client, OUTPUT_STREAM)
        dead = int(client.xlen(DEAD_STREAM))
        first_s = (first or now) - started
        steady = n / (elapsed - first_s) if elapsed > first_s else None
        result = {
            "workers": workers,
            "intra_op_threads": threads,
            "lanes": lanes,
            "posts": n,
            "ingest": ing,
            "wall_s": round(elapsed, 3),
            "posts_per_s": round(n / elapsed, 1),
            "first_result_s": round(first_s, 3),
            "steady_posts_per_s": round(steady, 1) if steady else None,
            "end_condition": done_via,
            "worker_summaries": summaries,
            "cpu": cpu,
            "posts_per_worker_cpu_s": round(n / cpu["measured_cpu_s"], 1),
            "ids_check": check_ids(ids, got, dead),
            **served,
        }
        print(
            f"{label}: {json.dumps({k: v for k, v in result.items() if k != 'worker_summaries'})}",
            flush=True,
        )
        return result
    finally:
        for proc in procs:
            stop_proc(proc, timeout=30.0)
        if client is not None:
            client.close()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def run_baseline(
    tmp: Path,
    posts_file: Path,
    ids: list[str],
    checkpoint: Path | None,
    threads: int,
    layers: int | None = None,
) -> dict[str, Any]:
    """The naive loop, in this process: XRANGE one entry, classify one post, PUBLISH, XADD."""
    from hf_baseline import load_pipeline
    from transformers.utils import logging as hf_logging

    n = len(ids)
    folder = Path(tempfile.mkdtemp(prefix="naive-", dir=tmp))
    server = RedisServer(folder / "redis")
    client: redis.Redis | None = None
    try:
        server.start()
        client = redis.Redis.from_url(server.url)
        ing = ingest(server.url, posts_file)
        t0 = time.perf_counter()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity(logging.CRITICAL)  # "model not supported": it works
        try:
            pipe, source = load_pipeline(checkpoint, threads, layers)
        finally:
            hf_logging.set_verbosity(verbosity)
        load_s = time.perf_counter() - t0
        pipe("warm up")  # one untimed call, in the baseline's favour

        cursor = "-"
        done = 0
        meter = CpuMeter(server.proc.pid)
        started = time.perf_counter()
        while done < n:
            entries: Any = client.xrange(INPUT_STREAM, min=cursor, count=1)
            if not entries:
                break
            entry_id, fields = entries[0]
            cursor = "(" + entry_id.decode()
            post = json.loads(fields[b"data"])
            scores = pipe(post["text"])
            scores = scores[0] if scores and isinstance(scores[0], list) else scores
            best = max(scores, key=lambda s: s["score"])
            data = json.dumps(
                {
                    "id": str(post["id"]),
                    "text": post["text"],
                    "created_at": post.get("created_at"),
                    "lang": post.get("lang"),
                    "label": best["label"],
                    "score": best["score"],
                    "scores": {s["label"]: s["score"] for s in scores},
                },
                ensure_ascii=False,
            )
            client.publish(BASELINE_CHANNEL, data)
            client.xadd(BASELINE_OUTPUT, {"id": str(post["id"]), "data": data})
            done += 1
        elapsed = time.perf_counter() - started
        cpu = meter.read(elapsed, [])
        got, _ = read_output_ids(client, BASELINE_OUTPUT)
        result = {
            "posts": n,
            "threads": threads,
            "weights": source,
            "ingest": ing,
            "pipeline_load_s": round(load_s, 3),
            "loop_s": round(elapsed, 3),
            "posts_per_s": round(done / elapsed, 1),
            "cpu": cpu,
            "posts_per_cpu_s": round(done / cpu["bench_process_cpu_s"], 1),
            "ids_check": check_ids(ids, got, 0),
        }
        print(f"naive: {json.dumps(result)}", flush=True)
        return result
    finally:
        if client is not None:
            client.close()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def fmt_spread(values: list[float]) -> str:
    s = spread(values)
    if s["n"] == 1:
        return f"{s['median']:g}"
    return f"{s['median']:g} ({s['min']:g}-{s['max']:g})"


def pct(shares: list[float]) -> str:
    return "/".join(f"{100 * x:.0f}%" for x in shares)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="JSONL posts (id, text, ...)")
    parser.add_argument("--posts", type=int, default=20000)
    parser.add_argument("--baseline-posts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each of our setups")
    parser.add_argument(
        "--single-worker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run one worker with two inference threads, and one with two lanes",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=ROOT / "runs" / "sentiment-v1",
        help="fp32 checkpoint for the baseline (backbone + untrained head if absent)",
    )
    parser.add_argument("--baseline-threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--model", default=None, help="NAME[:VERSION] (default: the default model)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (make system-deps)")
    from benchlib import model_layers

    from sentistream.config import Settings

    model = args.model or Settings().model

    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "settings_from_environment": settings_overrides(),
        "data": str(args.data),
        "model": model,
        "posts": args.posts,
        "repeats": args.repeats,
        "commands": {
            "ingest": "SENTISTREAM_REDIS_URL=<url> python -m sentistream ingest --source file "
            "--input posts.jsonl",
            "worker_2x1": "SENTISTREAM_REDIS_URL=<url> python -m sentistream stream --source "
            "redis --consumer w1|w2 --intra-op-threads 1 --log-level WARNING (two processes)",
            "worker_1x2": "SENTISTREAM_REDIS_URL=<url> python -m sentistream stream --source "
            "redis --consumer w1 --intra-op-threads 2 --log-level WARNING",
            "naive": "in-process: hf_baseline.load_pipeline(checkpoint, threads); per post "
            "XRANGE (count 1) -> pipeline(text) -> PUBLISH -> XADD",
            "benchmark": "python benchmarks/bench_stream.py " + " ".join(sys.argv[1:]),
        },
        "ours": {},
    }
    setups = [("2_workers_x_1_thread", 2, 1, 1)]
    if args.single_worker:
        setups.append(("1_worker_x_2_threads", 1, 2, 1))
        setups.append(("1_worker_x_2_lanes", 1, 1, 2))

    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        posts_file = tmp / "posts.jsonl"
        ids = write_posts(args.data, args.posts, posts_file)
        # Warm the page cache (model, libraries) so run 1 is not the only cold one.
        subprocess.run(
            [*EXE, "classify", "warm the page cache"],
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
            capture_output=True,
            check=True,
        )
        base_n = min(args.baseline_posts, args.posts)
        base_file = tmp / "baseline.jsonl"
        base_ids = write_posts(posts_file, base_n, base_file)
        checkpoint = args.checkpoint if args.checkpoint.exists() else None
        naive_runs: list[dict[str, Any]] = []

        def naive() -> None:
            naive_runs.append(
                run_baseline(
                    tmp, base_file, base_ids, checkpoint, args.baseline_threads, model_layers(model)
                )
            )

        # Round by round, the naive loop beside ours (order flipped every other round), so a
        # machine that drifts (a shared VM's neighbours) moves both sides of each ratio alike.
        for rep in range(args.repeats):
            if rep % 2:
                naive()
            for name, workers, threads, lanes in setups:
                run = run_ours(
                    tmp,
                    posts_file,
                    ids,
                    workers,
                    threads,
                    args.timeout,
                    f"{name}#{rep + 1}",
                    model,
                    lanes,
                )
                results["ours"].setdefault(name, {"runs": []})["runs"].append(run)
            if not rep % 2:
                naive()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    naive_rates = [r["posts_per_s"] or 1e-9 for r in naive_runs]
    results["naive"] = {
        **naive_runs[0],
        "posts_per_s": spread(naive_rates)["median"],
        "posts_per_s_spread": spread(naive_rates),
        "posts_per_cpu_s": spread([r["posts_per_cpu_s"] for r in naive_runs])["median"],
        "ids_check": {"ok": all(r["ids_check"]["ok"] for r in naive_runs)},
        "runs": naive_runs,
    }
    for setup in results["ours"].values():
        runs = setup["runs"]
        setup["posts_per_s"] = spread([r["posts_per_s"] for r in runs])
        setup["steady_posts_per_s"] = spread(
            [r["steady_posts_per_s"] for r in runs if r["steady_posts_per_s"]]
        )
        setup["first_result_s"] = spread([r["first_result_s"] for r in runs])
        per_round = [r["posts_per_s"] / n for r, n in zip(runs, naive_rates, strict=True)]
        setup["ratio_vs_naive"] = round(spread(per_round)["median"], 1)
        setup["ratio_vs_naive_per_round"] = [round(x, 2) for x in per_round]
        setup["ids_ok"] = all(r["ids_check"]["ok"] for r in runs)
    two = results["ours"]["2_workers_x_1_thread"]
    first_run = two["runs"][0]
    results["model"] = {
        "name": first_run.get("model"),
        "version": first_run.get("model_version"),
        "naive_weights": results["naive"]["weights"],
    }
    results["targets"] = {
        "posts_per_s_2_workers": 1000,
        "ratio_vs_naive": 10,
        "met_posts_per_s": two["posts_per_s"]["median"] >= 1000,
        "met_ratio": two["ratio_vs_naive"] >= 10,
    }

    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "stream" if args.model is None else f"stream-{args.model.replace(':', '-')}"
    stem = free_stem(f"{datetime.now(UTC):%Y-%m-%d}-{results['machine']['host']}-{tag}", RESULTS)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    nv = results["naive"]
    labels = {
        "2_workers_x_1_thread": "sentistream stream, 2 workers x 1 thread",
        "1_worker_x_2_threads": "sentistream stream, 1 worker x 2 threads",
        "1_worker_x_2_lanes": "sentistream stream, 1 worker x 2 lanes x 1 thread",
    }
    md = [
        f"# Stream benchmark {results['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, ISA {' '.join(m['isa'])}; onnxruntime "
        f"{m['onnxruntime']}, Python {m['python']}; load average at start "
        f"{' '.join(str(x) for x in results['loadavg_at_start'])}, at end "
        f"{' '.join(str(x) for x in results['loadavg_at_end'])}. Redis: a fresh "
        "`redis-server` (AOF, appendfsync everysec) per run on the same machine. "
        f"Model: {results['model']['name']}:{results['model']['version']} (shipped ONNX); "
        f"naive loop: transformers pipeline, {nv['weights']}, {nv['threads']} torch threads. "
        "Settings from the environment (the workers inherit them): "
        + (
            ", ".join(f"`{k}={v}`" for k, v in results["settings_from_environment"].items())
            or "none (the defaults)"
        )
        + ".",
        "",
        f"Posts: the first {args.posts} of `{args.data.name}` "
        f"(naive loop: the first {nv['posts']}). Ours: the clock starts when the worker "
        "processes are started (interpreter start and model load included) and stops when "
        "`XLEN sentistream:results` (+ dead letters) reaches the post count. Steady state: "
        "from the first result to the last. Naive: posts/s over the loop only (pipeline load "
        f"{nv['pipeline_load_s']} s not counted). Median (min-max) over {args.repeats} run(s) "
        "of each side, taken in turns (the naive loop after ours in odd rounds, before it in "
        "even ones); the ratio is the median of the per-round ratios.",
        "",
        "| setup | posts | posts/s end to end | steady-state posts/s | first result (s) "
        "| vs naive | posts per CPU-s | other processes' CPU | ids exactly once |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, setup in results["ours"].items():
        runs = setup["runs"]
        md.append(
            f"| {labels[name]} | {args.posts} | "
            f"{fmt_spread([r['posts_per_s'] for r in runs])} | "
            f"{fmt_spread([r['steady_posts_per_s'] for r in runs if r['steady_posts_per_s']])} | "
            f"{fmt_spread([r['first_result_s'] for r in runs])} | "
            f"{setup['ratio_vs_naive']}x | "
            f"{fmt_spread([r['posts_per_worker_cpu_s'] for r in runs])} | "
            f"{pct([r['cpu']['other_processes_share'] for r in runs])} | "
            f"{'yes' if setup['ids_ok'] else 'NO'} |"
        )
    md.append(
        f"| naive loop: XRANGE 1 -> transformers pipeline -> PUBLISH -> XADD | {nv['posts']} | "
        f"{fmt_spread(naive_rates)} | {fmt_spread(naive_rates)} | - | 1.0x | "
        f"{nv['posts_per_cpu_s']} | "
        f"{pct([r['cpu']['other_processes_share'] for r in nv['runs']])} | "
        f"{'yes' if nv['ids_check']['ok'] else 'NO'} |"
    )
    t = results["targets"]
    ing = first_run["ingest"]
    md += [
        "",
        f"Target: >= 1,000 posts/s end to end with two worker processes: "
        f"{'met' if t['met_posts_per_s'] else 'NOT met'} ({two['posts_per_s']['median']} "
        f"posts/s). Target: >= 10x the naive loop: {'met' if t['met_ratio'] else 'NOT met'} "
        f"({two['ratio_vs_naive']}x).",
        "",
        "Posts per CPU-s: posts over the CPU time of the worker processes (ours; Redis not "
        "included) or of the loop's process (naive). Other processes' CPU: the share of the "
        "machine's CPU capacity used during the timed window by processes outside the "
        "benchmark (from /proc/stat); above a few percent the machine was shared and the "
        "posts/s figures are lower than on an idle machine.",
        "",
        f"Ingest (not in the figures above): `sentistream ingest` pushed {ing['ingested']} posts "
        f"in {ing['wall_s']} s, process start included "
        f"({round(ing['ingested'] / ing['wall_s'], 1)} posts/s).",
        "",
        "Id check: every input id read back from the `data` JSON of the output stream, "
        "expected exactly once each (missing / duplicated / unexpected: "
        + "; ".join(
            f"{name} run {i + 1}: {r['ids_check']['missing']}/{r['ids_check']['duplicated']}/"
            f"{r['ids_check']['unexpected']}, dead-lettered {r['ids_check']['dead_lettered']}"
            for name, setup in results["ours"].items()
            for i, r in enumerate(setup["runs"])
        )
        + ").",
        "",
        "Commands:",
        "",
        *(f"- {k}: `{v}`" for k, v in results["commands"].items()),
        "",
        "Reproduce: `make bench-stream`.",
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
