"""Serverless profile: cold start and memory, the figures that decide a free-tier function.

For the CLI (``sentistream classify "I love this"``), the model server (``sentistream serve``:
start to ``/v2/health/ready`` 200, then the first ``POST /v1/classify`` answer) and, measured the
same way on the same network, a transformers + torch pipeline (``coldstart_probe.py
transformers``: import, load the fp32 checkpoint, answer one text; and ``hf_baseline.py``, the
FastAPI endpoint people write). Every figure is from fresh processes, repeated with ours and the
baseline taking turns, reported as median and spread:

- process start to first answer (wall clock, interpreter start included);
- import time, model load time and first-inference time (from inside the process);
- peak RSS (``ru_maxrss`` of the exited process; ``VmHWM`` of a live server);
- model file size.

    python benchmarks/serverless.py [--model tweet-sentiment] [--checkpoint runs/multi-v2]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, background_load, baseline_args, child_env, run_measured, spread

HERE = Path(__file__).resolve().parent
TEXT = "I love this"


def peak_rss_live_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _get(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - local server
            return int(r.status)
    except OSError:
        return 0


def _post_json(url: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    req = urllib.request.Request(  # noqa: S310 - local server
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
        out: dict[str, Any] = json.loads(r.read())
        return out


def server_cold_start(
    cmd: list[str], ready_url: str, classify_url: str, body: dict[str, Any], timeout: float = 120
) -> dict[str, float]:
    """Start a server process; seconds to ready and to the first answer, peak RSS after it."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env()
    )
    try:
        deadline = time.monotonic() + timeout
        while _get(ready_url, 0.5) != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode} before ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd} not ready in {timeout} s")
            time.sleep(0.01)
        ready = time.perf_counter() - started
        _post_json(classify_url, body)
        first = time.perf_counter() - started
        return {
            "ready_s": ready,
            "first_answer_s": first,
            "peak_rss_mb": peak_rss_live_mb(proc.pid),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    from sentistream.testing import free_port

    return free_port()


def ours_server_cmd(
    model: str, threads: int, only: bool = False, http_only: bool = False
) -> tuple[list[str], str, str, dict[str, Any]]:
    """``sentistream serve``: every model of the repository (the default), or with ``only``
    just ``model`` (``--serve-models``: one model per process); ``http_only`` adds
    ``--no-grpc-enabled`` (the serverless deployment: platforms that route one HTTP port)."""
    port, grpc = _free_port(), _free_port()
    cmd = [
        sys.executable, "-m", "sentistream", "serve", "--host", "127.0.0.1",
        "--http-port", str(port), "--grpc-port", str(grpc), "--model", model,
        "--lanes", str(threads), "--intra-op-threads", "1", "--log-level", "WARNING",
        "--model-poll-seconds", "0",
    ]  # fmt: skip
    if only:
        cmd += ["--serve-models", model]
    if http_only:
        cmd += ["--no-grpc-enabled"]
    base = f"http://127.0.0.1:{port}"
    return cmd, f"{base}/v2/health/ready", f"{base}/v1/classify", {"text": TEXT}


def baseline_server_cmd(
    checkpoint: Path | None, threads: int, model: str
) -> tuple[list[str], str, str, dict[str, Any]]:
    port = _free_port()
    cmd = [
        sys.executable,
        str(HERE / "hf_baseline.py"),
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    cmd += baseline_args(checkpoint, model)
    base = f"http://127.0.0.1:{port}"
    return cmd, f"{base}/ready", f"{base}/predict", {"text": TEXT}


def byte_compile_package() -> str:
    """Compile sentistream's modules to bytecode first, as ``pip install`` does for an installed
    package (a wheel, the Docker image). An editable install under ``PYTHONDONTWRITEBYTECODE=1``
    (set on this project's machines) would otherwise compile them from source at every process
    start: ~10 ms of the CLI's and the server's cold start here, a cost no installed package
    pays. The baseline's packages (transformers, torch) were compiled when pip installed them."""
    import sentistream

    package = Path(sentistream.__file__).parent
    ok = compileall.compile_dir(str(package), quiet=1)
    return f"compiled before timing ({'ok' if ok else 'with errors'}), as pip install does"


def _probe(kind: str, model: str, checkpoint: Path | None, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "coldstart_probe.py"), kind, "--model", model,
           "--threads", str(threads)]  # fmt: skip
    if kind == "transformers":
        cmd += baseline_args(checkpoint, model)
    run = run_measured(cmd, child_env())
    phases: dict[str, Any] = json.loads(run["stdout"].strip().splitlines()[-1])
    return {**phases, "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"]}


def _summary(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    return {k: spread([float(r[k]) for r in runs]) for k in keys}


def serverless_profile(
    model: str,
    checkpoint: Path | None,
    *,
    repeats: int = 5,
    threads: int = 2,
    include_servers: bool = True,
) -> dict[str, Any]:
    """Every cold-start figure, ours and the transformers pipeline taking turns."""
    from sentistream.config import Settings
    from sentistream.repository import ModelRepository

    folder = ModelRepository(Settings().model_repository).resolve(model)
    cli = [str(Path(sys.executable).with_name("sentistream")), "classify", "--model", model, TEXT]
    if not Path(cli[0]).exists():
        cli = [sys.executable, "-m", "sentistream", *cli[1:]]
    bytecode = byte_compile_package()
    # Warm the page cache for both, so run 1 is not the only one reading from disk.
    run_measured(cli, child_env())
    _probe("transformers", model, checkpoint, threads)

    cli_runs: list[dict[str, Any]] = []
    probe_ours: list[dict[str, Any]] = []
    probe_hf: list[dict[str, Any]] = []
    server_ours: list[dict[str, float]] = []
    server_one: list[dict[str, float]] = []
    server_http: list[dict[str, float]] = []
    server_hf: list[dict[str, float]] = []
    for _ in range(repeats):
        r = run_measured(cli, child_env())
        cli_runs.append({"wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"]})
        probe_ours.append(_probe("ours", model, None, threads))
        probe_hf.append(_probe("transformers", model, checkpoint, threads))
        if include_servers:
            server_ours.append(server_cold_start(*ours_server_cmd(model, threads)))
            server_one.append(server_cold_start(*ours_server_cmd(model, threads, only=True)))
            server_http.append(
                server_cold_start(*ours_server_cmd(model, threads, only=True, http_only=True))
            )
            server_hf.append(server_cold_start(*baseline_server_cmd(checkpoint, threads, model)))
    phase_keys = ["wall_s", "import_s", "load_s", "first_answer_s", "peak_rss_mb"]
    ckpt_file = checkpoint / "model.safetensors" if checkpoint else None
    out: dict[str, Any] = {
        "model": model,
        "threads": threads,
        "bytecode": bytecode,
        "repeats": repeats,
        "background": background_load(),
        "text": TEXT,
        "cli": {
            "command": f'sentistream classify --model {model} "{TEXT}"',
            **_summary(cli_runs, ["wall_s", "peak_rss_mb"]),
        },
        "ours_in_process": {
            "command": f"python benchmarks/coldstart_probe.py ours --model {model}",
            **_summary(probe_ours, phase_keys),
        },
        "transformers_pipeline": {
            "command": "python benchmarks/coldstart_probe.py transformers"
            + (f" --checkpoint {checkpoint}" if checkpoint else ""),
            "weights": probe_hf[0].get("weights"),
            **_summary(probe_hf, phase_keys),
        },
        "model_files_mb": {
            "onnx_int8": round((folder / "model.onnx").stat().st_size / 1e6, 2),
            "tokenizer": round((folder / "tokenizer.json").stat().st_size / 1e6, 2),
            "fp32_checkpoint": round(ckpt_file.stat().st_size / 1e6, 2)
            if ckpt_file and ckpt_file.exists()
            else None,
        },
    }
    if include_servers:
        keys = ["ready_s", "first_answer_s", "peak_rss_mb"]
        out["server"] = {
            "command": f"sentistream serve --model {model} (ready: GET /v2/health/ready, "
            "answer: POST /v1/classify)",
            **_summary(server_ours, keys),
        }
        out["server_one_model"] = {
            "command": f"sentistream serve --model {model} --serve-models {model} (the "
            "serverless shape: one model per process)",
            **_summary(server_one, keys),
        }
        out["server_serverless"] = {
            "command": f"sentistream serve --model {model} --serve-models {model} "
            "--no-grpc-enabled (the serverless shape: one model, HTTP only, as "
            "deploy/serverless/cloudrun.yaml)",
            **_summary(server_http, keys),
        }
        out["baseline_server"] = {
            "command": "python benchmarks/hf_baseline.py --port P (FastAPI + transformers "
            "pipeline; ready: GET /ready, answer: POST /predict)",
            **_summary(server_hf, keys),
        }
    cli_first = out["cli"]["wall_s"]["median"]
    hf_first = out["transformers_pipeline"]["wall_s"]["median"]
    out["ratios"] = {
        "first_answer_transformers_over_cli": round(hf_first / cli_first, 2),
        "peak_rss_transformers_over_cli": round(
            out["transformers_pipeline"]["peak_rss_mb"]["median"]
            / out["cli"]["peak_rss_mb"]["median"],
            2,
        ),
    }
    if include_servers:
        out["ratios"]["server_ready_baseline_over_ours"] = round(
            out["baseline_server"]["ready_s"]["median"] / out["server"]["ready_s"]["median"], 2
        )
        out["ratios"]["server_rss_baseline_over_ours"] = round(
            out["baseline_server"]["peak_rss_mb"]["median"]
            / out["server"]["peak_rss_mb"]["median"],
            2,
        )
    out["targets"] = {
        "first_answer_s": 0.5,
        "peak_rss_mb": 200,
        "cli_first_answer_met": cli_first < 0.5,
        "cli_peak_rss_met": out["cli"]["peak_rss_mb"]["median"] < 200,
    }
    if include_servers:
        for key in ("server", "server_one_model", "server_serverless"):
            out["targets"][f"{key}_first_answer_met"] = out[key]["first_answer_s"]["median"] < 0.5
            out["targets"][f"{key}_peak_rss_met"] = out[key]["peak_rss_mb"]["median"] < 200
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tweet-sentiment")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "multi-v2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--no-servers", action="store_true")
    args = parser.parse_args()
    checkpoint = args.checkpoint if (args.checkpoint / "model.safetensors").exists() else None
    result = serverless_profile(
        args.model,
        checkpoint,
        repeats=args.repeats,
        threads=args.threads,
        include_servers=not args.no_servers,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
