"""Pure helpers of the benchmark suite: the hardware bound of the classify ratio and result
file names that never replace an earlier run of the day."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from benchlib import free_stem  # noqa: E402


def _spread(x: float) -> dict[str, float]:
    return {"median": x, "min": x, "max": x, "n": 1}


def _results(ceiling: float, pipeline: float) -> dict[str, object]:
    return {
        "classify": {
            "posts": 2000,
            "target_ratio": 10,
            "runs": {
                # 2000 posts in 5.0 s wall, 4.5 s in process: 0.5 s of process start.
                "sentistream classify": {
                    "posts_per_s": _spread(400.0),
                    "in_process_posts_per_s": _spread(2000 / 4.5),
                },
                "transformers pipeline (batch_size=1)": {"posts_per_s": _spread(pipeline)},
            },
        },
        "roofline": {"ceiling_posts_per_s_at_int8_peak": ceiling},
    }


def test_hardware_bound_counts_process_start_and_the_ceiling() -> None:
    suite = pytest.importorskip("suite")  # imports matplotlib lazily, numpy at import
    bound = suite.hardware_bound(_results(ceiling=500.0, pipeline=50.0))
    assert bound["process_start_s"] == pytest.approx(0.5)
    # 2000 posts at 500/s = 4 s, + 0.5 s start: 444.4 posts/s, 8.89x a 50 posts/s pipeline.
    assert bound["best_file_posts_per_s"] == pytest.approx(444.4, abs=0.1)
    assert bound["best_ratio_vs_default_pipeline"] == pytest.approx(8.89, abs=0.01)
    assert bound["target_reachable_with_this_network"] is False
    fast = suite.hardware_bound(_results(ceiling=2000.0, pipeline=50.0))
    assert fast["target_reachable_with_this_network"] is True
    assert suite.hardware_bound({"classify": {"runs": {}}}) is None  # no roofline section


def test_free_stem_never_reuses_a_result_name(tmp_path: Path) -> None:
    assert free_stem("2026-12-02-vm", tmp_path) == "2026-12-02-vm"
    (tmp_path / "2026-12-02-vm.json").write_text("{}")
    assert free_stem("2026-12-02-vm", tmp_path) == "2026-12-02-vm-2"
    (tmp_path / "2026-12-02-vm-2.json").write_text("{}")
    assert free_stem("2026-12-02-vm", tmp_path) == "2026-12-02-vm-3"


def test_stream_results_record_settings_but_never_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench_stream import settings_overrides

    monkeypatch.setenv("SENTISTREAM_STREAM_BATCH_SIZE", "512")
    monkeypatch.setenv("SENTISTREAM_REDIS_URL", "redis://:hunter2@localhost:6379/0")
    monkeypatch.setenv("SENTISTREAM_AUTH_TOKEN", "hunter2")
    monkeypatch.setenv("SENTISTREAM_X_BEARER_TOKEN", "hunter2")
    recorded = settings_overrides()
    assert recorded["SENTISTREAM_STREAM_BATCH_SIZE"] == "512"
    assert "hunter2" not in repr(recorded)


def test_gpu_report_renders_the_committed_h200_runs() -> None:
    """The GPU benchmark's Markdown is rebuilt from its JSON alone (both committed runs: the
    full one and the where-the-time-goes one), naming the GPU and every section measured."""
    import json

    from gpu import markdown

    results = REPO / "benchmarks" / "results"
    full = json.loads((results / "2026-12-04-nvidia-h200-gpu.json").read_text())
    page = markdown(full)
    assert "NVIDIA H200" in page and "## Errors" not in page
    for heading in ("Precision check", "Classifier core", "File in, file out", "matmul peak"):
        assert heading in page
    assert full["core"]["variants"]["pipeline fp32 batch 1"]["vs_pipeline_b1"] == 1.0
    stages = markdown(json.loads((results / "2026-12-04-nvidia-h200-gpu-2.json").read_text()))
    assert "Where the time goes" in stages and "| lanes 2 |" in stages
    assert markdown({"errors": {"core": "Traceback ...\nRuntimeError: boom"}}).endswith(
        "- core: RuntimeError: boom\n"
    )
