"""Helpers shared by the benchmark suite (``suite.py``), the roofline, the serverless profile,
the tuning log and the CI guard: library versions, background-load detection, interleaved
(ABAB) timing and medians with spread.
"""

from __future__ import annotations

import importlib.metadata
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classify import RESULTS, machine, rss_mb, spread

__all__ = [
    "RESULTS",
    "ROOT",
    "background_load",
    "baseline_args",
    "child_env",
    "interleaved",
    "library_versions",
    "machine",
    "model_layers",
    "ratio_spread",
    "rss_mb",
    "run_measured",
    "spread",
    "val_texts",
]

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
BACKGROUND_PATTERN = "sentistream (train|distill|adapt)"


def model_layers(model: str) -> int | None:
    """Encoder depth of a served model (its manifest's backbone), for a same-network baseline."""
    import json

    from sentistream.config import Settings
    from sentistream.repository import ModelRepository

    folder = ModelRepository(Settings().model_repository).resolve(model)
    layers = json.loads((folder / "manifest.json").read_text()).get("backbone", {})
    value = layers.get("num_hidden_layers")
    return int(value) if value else None


def baseline_args(checkpoint: Path | None, model: str) -> list[str]:
    """Flags that give the transformers baseline the same network as ``model``: its fp32
    checkpoint when there is one, else the pretrained backbone cut to the model's depth."""
    if checkpoint is not None:
        return ["--checkpoint", str(checkpoint)]
    layers = model_layers(model)
    return ["--layers", str(layers)] if layers else []


def library_versions() -> dict[str, str | None]:
    """Installed versions of what the figures depend on (None when not installed)."""
    out: dict[str, str | None] = {}
    for dist in (
        "sentistream",
        "onnxruntime",
        "onnxruntime-gpu",
        "onnx",
        "tokenizers",
        "numpy",
        "torch",
        "transformers",
        "fastapi",
        "uvicorn",
        "grpcio",
        "redis",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["python"] = sys.version.split()[0]
    return out


def _stopped(pid: str) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP), from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] in {"T", "t"}


def background_load() -> dict[str, Any]:
    """Training processes and load average now: figures taken while training runs are noisy."""
    try:
        found = subprocess.run(
            ["pgrep", "-af", BACKGROUND_PATTERN], capture_output=True, text=True, check=False
        ).stdout
    except FileNotFoundError:  # no procps
        found = ""
    procs = [line for line in found.splitlines() if line.strip() and "pgrep" not in line]
    running = [line for line in procs if not _stopped(line.split()[0])]
    return {
        "training_processes": procs,
        # a training paused with SIGSTOP (state T) for the benchmark takes no CPU
        "paused_training_processes": [line for line in procs if line not in running],
        "contaminated": bool(running),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def child_env(**extra: str) -> dict[str, str]:
    """Environment for benchmark children: no tokenizer threads fighting the runtime's, and
    sleeping (not spinning) OpenMP threads while training shares the machine."""
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",
        **extra,
    }
    if background_load()["contaminated"]:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


# A tiny launcher (``python -S``, ~9 MB) forks and execs the measured command, then reports the
# child's wall time and ru_maxrss. Linux carries the *parent's* resident set over a fork into
# the child's ru_maxrss, so a child started straight from a benchmark process that has loaded
# torch would report the benchmark's own memory; from the launcher the figure is the child's.
_LAUNCHER = """
import os, sys, time
out = sys.argv[1]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as fh:
    fh.write(f"{wall} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall time (fork to exit), peak RSS (MB), stdout and stderr of one child process."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rusage") as fh:
        proc = subprocess.run(
            [sys.executable, "-S", "-c", _LAUNCHER, fh.name, *cmd],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        wall, maxrss, code = fh.read().split()
    if int(code) != 0 or proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({code}): {proc.stderr[-2000:]}")
    return {
        "wall_s": float(wall),
        "peak_rss_mb": int(maxrss) / 1024,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


def val_texts(data: Path, limit: int | None = None) -> list[str]:
    """The TweetEval validation texts (one per line), the realistic tweet lengths we use."""
    lines = (data / "val_text.txt").read_text(encoding="utf-8").split("\n")
    texts = [t for t in lines if t.strip()]
    return texts[:limit] if limit else texts


def interleaved(
    variants: dict[str, Callable[[], float]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Call every variant once per round, in turn (A B A B ...; order flipped every other
    round), so slow drift of a shared machine hits each alike. Each call returns a rate."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(variants[name]())
    return out


def ratio_spread(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """Median and spread of per-round ratios (rounds paired, so shared noise cancels)."""
    return spread([a / b for a, b in zip(num, den, strict=True) if b > 0])


def timed_rate(fn: Callable[[], object], items: int) -> float:
    """Items per second of one call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    return items / (time.perf_counter() - t0)


def free_stem(base: str, folder: Path) -> str:
    """``base``, or ``base-2``, ``base-3``...: a later run of the day never replaces an earlier
    one (the host name of these VMs is the same on every machine)."""
    stem = base
    for k in range(2, 1000):
        if not (folder / f"{stem}.json").exists():
            break
        stem = f"{base}-{k}"
    return stem


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")
