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
