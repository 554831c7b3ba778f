"""The roofline's operation count and peak measurement (benchmarks/roofline.py); reading and
building ONNX graphs needs ``onnx`` (the [train] extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="needs the [train] extra")
pytestmark = pytest.mark.train

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from roofline import count_model_ops, measure_peak  # noqa: E402

SHIPPED = REPO / "src" / "sentistream" / "models" / "tweet-sentiment" / "1" / "model.onnx"


def test_ops_read_from_the_graph_match_the_textbook_bert_count() -> None:
    ops = count_model_ops(SHIPPED)
    assert (ops.layers, ops.hidden, ops.intermediate) == (6, 384, 1536)
    # Every per-token weight of a layer (QKV, output, FFN in and out) is 12 H^2 MACs.
    assert ops.int8_macs_per_token + ops.fp32_macs_per_token == 6 * 12 * 384 * 384
    # The 3-label head runs once per post, after pooling.
    assert ops.int8_macs_per_post + ops.fp32_macs_per_post == 384 * 3
    for n in (1, 29, 128):
        int8, fp32 = ops.ops(n)
        head = 2 * 384 * 3
        assert int8 + fp32 - head == pytest.approx(ops.issue_formula(n), rel=1e-12)


def test_int8_and_fp32_ops_follow_the_weight_dtypes() -> None:
    ops = count_model_ops(SHIPPED)
    dtypes = {d for _, _, _, d in ops.weight_shapes}
    assert dtypes <= {"int8", "fp32"}
    int8, fp32 = ops.ops(30)
    # Most weights are int8; the attention scores (n^2 H per layer) always count as fp32.
    assert int8 > fp32 > 6 * 2 * 2 * 30 * 30 * 384
    assert ops.quantized_attention_layers <= ops.layers


@pytest.mark.parametrize("kind", ["int8", "fp32"])
def test_peak_measurement_runs_a_real_matmul(kind: str) -> None:
    result = measure_peak(kind, 1, 64, 64, 64, seconds=0.05, repeats=2)
    assert result["kind"] == kind and result["shape_mkn"] == [64, 64, 64]
    assert result["ops_per_s"]["median"] > 1e6
    import onnxruntime as ort

    assert result["provider"] in ort.get_available_providers()


def test_a_paused_training_process_does_not_contaminate_a_run() -> None:
    """Benchmarks pause training with SIGSTOP; a stopped process takes no CPU."""
    import signal
    import subprocess
    import time

    from benchlib import _stopped

    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert not _stopped(str(proc.pid))
        proc.send_signal(signal.SIGSTOP)
        for _ in range(50):
            if _stopped(str(proc.pid)):
                break
            time.sleep(0.02)
        assert _stopped(str(proc.pid))
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)
        assert not _stopped(str(proc.pid))
        assert not _stopped("999999999")  # gone: not stopped
    finally:
        proc.kill()
        proc.wait()


def test_mfu_with_lanes_counts_overlapping_passes_once() -> None:
    """Two lanes run forward passes at once: the forward share is the lanes' occupancy (at most
    1), every post is counted once, and ``only`` measures just the named request shapes."""
    from roofline import measure_mfu

    from sentistream.config import Settings
    from sentistream.runtime import load_classifier

    ops = count_model_ops(REPO / "src" / "sentistream" / "models" / "tweet-sentiment" / "2" /
                          "model.onnx")  # fmt: skip
    texts = [f"post number {i} " + "really good " * (i % 9) for i in range(96)]
    laned = load_classifier(
        Settings(model="tweet-sentiment:2", lanes=2, intra_op_threads=1, batch_size=8)
    )
    out = measure_mfu(laned, texts, ops, 1e12, 1e11, repeats=1, only=["bucketed"])
    assert list(out) == ["bucketed"]
    row = out["bucketed"]
    assert row["lanes"] == 2 and row["posts"] == 96
    assert 0 < row["forward_share_of_time"] <= 1.0
    assert row["padding_overhead"] >= 1.0
    # The forward-only MFU divides by the time per lane, so it is at least the wall-clock MFU.
    assert row["mfu_forward_only"] >= row["mfu_vs_int8_peak"] > 0


def test_utilisation_is_recomputed_against_the_final_peak() -> None:
    """The roofline measures the peak again after the timed runs and divides by the higher of
    the two: doubling the peak halves every utilisation figure, and the fastest shape wins."""
    from roofline import _fastest, apply_peaks

    row = {"int8_ops": 8e9, "fp32_ops": 2e9, "executed_ops": 11e9, "median_wall_s": 1.0,
           "median_forward_s_per_lane": 0.5}  # fmt: skip
    first = dict(apply_peaks({"r": dict(row)}, 20e9, 5e9)["r"])
    second = apply_peaks({"r": dict(row)}, 40e9, 10e9)["r"]
    assert first["mfu_vs_int8_peak"] == 0.5 and first["mfu_forward_only"] == 1.0
    assert first["mixed_peak_utilisation"] == pytest.approx(8 / 20 + 2 / 5)
    for key in ("mfu_vs_int8_peak", "mixed_peak_utilisation", "mfu_forward_only",
                "mfu_forward_only_executed_ops"):  # fmt: skip
        assert second[key] == pytest.approx(first[key] / 2, abs=1e-4)
    shapes = [{"shape_mkn": [s, s, s], "ops_per_s": {"median": r}} for s, r in
              ((2048, 6.7e11), (1024, 8.4e11), (512, 7.9e11))]  # fmt: skip
    assert _fastest(shapes)["shape_mkn"] == [1024, 1024, 1024]


def test_split_attention_model_counts_the_same_ops_as_its_source() -> None:
    """tweet-sentiment v3 is v2 with QAttention split into Q/K/V MatMulIntegerToFloat + the
    weightless standard Attention: the same weight matrices, so the same ops."""
    models = REPO / "src" / "sentistream" / "models" / "tweet-sentiment"
    v2 = count_model_ops(models / "2" / "model.onnx")
    v3 = count_model_ops(models / "3" / "model.onnx")
    assert (v3.layers, v3.hidden, v3.intermediate) == (v2.layers, v2.hidden, v2.intermediate)
    assert v3.int8_macs_per_token == v2.int8_macs_per_token == 6 * 12 * 384 * 384
    assert v3.fp32_macs_per_token == v2.fp32_macs_per_token == 0
    assert v3.ops(29) == v2.ops(29)
    assert v3.quantized_attention_layers == 0 < v2.quantized_attention_layers
