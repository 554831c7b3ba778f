"""int8 quantization with a parity target.

Dynamic int8 quantization (per-channel weights for every MatMul, the fused attention and the
embedding tables; activations quantized per batch) usually keeps the metric but can flip a few
percent of predictions. ``quantize_to_agreement`` measures argmax agreement with fp32 on
calibration texts (from the training split, so the validation figures stay honest) and, when
it is below the target, keeps the few MatMuls whose quantization flips most predictions in
fp32: it ranks every candidate by the agreement gained when it alone stays fp32, then adds them
greedily until the target is met.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["QUANT_OPS", "quantize", "quantize_to_agreement", "run_onnx"]

QUANT_OPS = ["MatMul", "Attention", "Gather", "EmbedLayerNormalization", "Gemm"]
Array = np.ndarray[Any, Any]


def quantize(
    src: Path,
    dst: Path,
    exclude: Sequence[str] = (),
    *,
    reduce_range: bool = True,
    op_types: Sequence[str] = QUANT_OPS,
) -> None:
    """Dynamic int8 quantization of ``src`` into ``dst``, nodes in ``exclude`` left fp32,
    ops of ``op_types`` only.

    ``reduce_range`` stores weights in 7 bits. CPUs without VNNI (AVX2, AVX-512F) multiply
    uint8 activations by int8 weights with ``VPMADDUBSW``, whose pairwise int16 sums saturate
    when both operands are large; 7-bit weights keep every sum in range, so the model computes
    the same on every x86 CPU (measured: 8-bit weights lost 0.6 points of sentiment macro-recall
    on an AVX2 EPYC against the VNNI machine they were exported on; docs/performance.md).
    """
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(op_types),
        nodes_to_exclude=list(exclude),
        per_channel=True,
        reduce_range=reduce_range,
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT},
    )


def run_onnx(path: Path, ids: list[list[int]], outputs: list[str], pad_id: int) -> list[Array]:
    """Outputs for pre-tokenized ids (length-sorted batches of 64), in input order."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    from sentistream.runtime.onnx import CPU_DISABLED_OPTIMIZERS

    sess = ort.InferenceSession(
        str(path),
        sess_options=opts,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=CPU_DISABLED_OPTIMIZERS,  # computed as served
    )
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    chunks: list[list[Array]] = [[] for _ in outputs]
    for start in range(0, len(order), 64):
        idx = order[start : start + 64]
        width = max(len(ids[i]) for i in idx)
        x = np.full((len(idx), width), pad_id, dtype=np.int64)
        m = np.zeros_like(x)
        for r, i in enumerate(idx):
            x[r, : len(ids[i])] = ids[i]
            m[r, : len(ids[i])] = 1
        for k, out in enumerate(sess.run(outputs, {"input_ids": x, "attention_mask": m})):
            chunks[k].append(out)
    inverse = np.argsort(np.asarray(order))
    return [np.concatenate(c)[inverse] for c in chunks]


def _candidates(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Attention") and n.name]


def quantize_to_agreement(
    src: Path,
    dst: Path,
    ids: list[list[int]],
    outputs: list[str],
    pad_id: int,
    *,
    target: float,
    max_fp32_nodes: int = 8,
    reduce_range: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Quantize ``src`` into ``dst`` keeping argmax agreement (all outputs) >= ``target``."""
    ref = run_onnx(src, ids, outputs, pad_id)

    def agreement(exclude: Sequence[str]) -> float:
        quantize(src, dst, exclude, reduce_range=reduce_range)
        got = run_onnx(dst, ids, outputs, pad_id)
        return float(
            np.mean([(r.argmax(-1) == g.argmax(-1)).mean() for r, g in zip(ref, got, strict=True)])
        )

    base = agreement([])
    log(f"int8 (all quantized): calibration agreement {base:.4f}, target {target:.4f}")
    report: dict[str, Any] = {
        "calibration_texts": len(ids),
        "all_quantized_agreement": base,
        "fp32_nodes": [],
        "calibration_agreement": base,
    }
    if base >= target or max_fp32_nodes == 0:
        return report
    gains = []
    for name in _candidates(src):
        gains.append((agreement([name]) - base, name))
        log(f"  sensitivity {name}: {gains[-1][0]:+.4f}")
    gains.sort(reverse=True)
    kept: list[str] = []
    best: tuple[float, int] = (base, 0)  # (agreement, prefix length)
    for gain, name in gains[:max_fp32_nodes]:
        if gain <= 0:
            break
        kept.append(name)
        score = agreement(kept)
        log(f"keep fp32: {name} -> agreement {score:.4f}")
        if score > best[0]:
            best = (score, len(kept))
        if score >= target:
            break
    # The shortest prefix that reached the target, else the shortest with the best agreement.
    score, length = best
    kept = kept[:length]
    quantize(
        src, dst, kept, reduce_range=reduce_range
    )  # dst must hold exactly the chosen exclusion set
    report.update({"fp32_nodes": kept, "calibration_agreement": score})
    return report
