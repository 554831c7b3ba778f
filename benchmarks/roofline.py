"""Roofline: this machine's matrix-multiply peak measured with ONNX Runtime itself, the model's
operations per post counted from real token lengths, and model FLOP utilisation (MFU).

Peak: two one-node ONNX graphs built here with ``onnx.helper``: ``MatMulInteger`` (uint8
activations x int8 weights, the kernel int8 inference runs on) and ``MatMul`` (fp32), on a large
square shape and on the model's own shapes (rows = tokens of a 32-post batch), with the serving
session options and thread count. Ops = 2 x M x K x N per call.

Model ops per post of n tokens: for every weight matrix K x N in the graph (``MatMulInteger``,
``MatMul``, ``MatMulIntegerToFloat``, ``QAttention``/``Attention`` QKV) 2 x n x K x N, plus per
attention layer the scores and the weighted sum, 2 x 2 x n^2 x H, plus the classifier head once
per post. For the shipped MiniLM (H = 384, intermediate 4H, 6 layers) that is per layer
2 x (12 n H^2 + 2 n^2 H), the formula of the issue. Ops of matrices stored as int8 count as int8
ops, the rest as fp32 ops.

MFU = useful ops per second (real token lengths, padding not counted) / measured int8 peak.
"Mixed-peak utilisation" divides the ideal time (int8 ops at the int8 peak plus fp32 ops at the
fp32 peak) by the measured time: it is the fair figure for a graph that keeps some layers fp32.

    python benchmarks/roofline.py --data ../shared/data/tweeteval/sentiment [--model NAME]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import DATA, background_load, spread, val_texts

__all__ = [
    "ModelOps",
    "count_model_ops",
    "measure_mfu",
    "measure_peak",
    "roofline",
]

LINEAR_OPS = {
    "MatMulInteger",
    "MatMul",
    "QAttention",
    "Attention",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "Gemm",
}
ATTENTION_OPS = {"QAttention", "Attention", "MultiHeadAttention"}
INT8_TYPES = {2, 3}  # onnx.TensorProto.UINT8, INT8


def session_options(threads: int) -> Any:
    """The serving options of ``OnnxBackend`` (sequential, all graph optimisations, no spin)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def matmul_graph(kind: str, m: int, k: int, n: int) -> bytes:
    """A one-node model: ``Y = A @ B`` with B a constant weight, like every layer of the model."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "int8":
        b = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "B")
        a_zp = numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zp")
        node = helper.make_node("MatMulInteger", ["A", "B", "a_zp"], ["Y"])
        a = helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])
        y = helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])
        inits = [b, a_zp]
    elif kind == "fp32":
        b = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])
        inits = [b]
    else:
        raise ValueError(f"unknown kind {kind!r}")
    graph = helper.make_graph([node], f"peak_{kind}", [a], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def measure_peak(
    kind: str,
    threads: int,
    m: int,
    k: int,
    n: int,
    seconds: float = 1.0,
    repeats: int = 5,
    providers: list[str] | None = None,
) -> dict[str, Any]:
    """Ops/s of one matmul shape: median over ``repeats`` timed windows of ``seconds`` each,
    on the serving providers (CUDA first when onnxruntime-gpu and a GPU are present)."""
    import onnxruntime as ort

    from sentistream.runtime.onnx import available_providers

    session = ort.InferenceSession(
        matmul_graph(kind, m, k, n),
        sess_options=session_options(threads),
        providers=available_providers(providers),
    )
    rng = np.random.default_rng(1)
    a = (
        rng.integers(0, 256, (m, k), dtype=np.uint8)
        if kind == "int8"
        else rng.standard_normal((m, k)).astype(np.float32)
    )
    feed = {"A": a}
    ops = 2.0 * m * k * n
    session.run(None, feed)
    rates: list[float] = []
    for _ in range(repeats):
        calls = 0
        t0 = time.perf_counter()
        while True:
            session.run(None, feed)
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
        rates.append(ops * calls / elapsed)
    return {
        "kind": kind,
        "shape_mkn": [m, k, n],
        "threads": threads,
        "provider": session.get_providers()[0],
        "ops_per_s": spread(rates),
    }


@dataclass(frozen=True)
class ModelOps:
    """Per-token and per-post multiply-accumulates of one ONNX model, split by weight dtype."""

    hidden: int
    layers: int
    intermediate: int
    int8_macs_per_token: int
    fp32_macs_per_token: int
    int8_macs_per_post: int  # heads applied once per post (after pooling)
    fp32_macs_per_post: int
    weight_shapes: list[tuple[str, int, int, str]]
    quantized_attention_layers: int = 0

    def ops(self, n: int) -> tuple[float, float]:
        """(int8 ops, fp32 ops) of one post of ``n`` tokens; attention scores are fp32."""
        attention = self.layers * 2 * n * n * self.hidden
        int8 = 2.0 * (self.int8_macs_per_token * n + self.int8_macs_per_post)
        fp32 = 2.0 * (self.fp32_macs_per_token * n + self.fp32_macs_per_post + attention)
        return int8, fp32

    def issue_formula(self, n: int) -> float:
        """Per layer 2 (12 n H^2 + 2 n^2 H), times layers: the textbook BERT count."""
        h = self.hidden
        return float(self.layers * 2 * (12 * n * h * h + 2 * n * n * h))


def count_model_ops(model_path: Path, head_max_width: int = 64) -> ModelOps:
    """Read every weight matrix of the graph. A weight with at most ``head_max_width`` outputs
    is a task head (applied once per post, after pooling); the others run on every token."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    per_token = {"int8": 0, "fp32": 0}
    per_post = {"int8": 0, "fp32": 0}
    shapes: list[tuple[str, int, int, str]] = []
    layers = 0
    quantized_attention = 0
    hidden = 0
    intermediate = 0
    for node in model.graph.node:
        if node.op_type in ATTENTION_OPS:
            layers += 1
            quantized_attention += node.op_type == "QAttention"
        if node.op_type not in LINEAR_OPS:
            continue
        weights = [inits[x] for x in node.input[1:3] if x in inits and len(inits[x].dims) == 2]
        if not weights:
            continue
        w = weights[0]
        k, n = int(w.dims[0]), int(w.dims[1])
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute):
            k, n = n, k
        dtype = "int8" if w.data_type in INT8_TYPES else "fp32"
        shapes.append((node.op_type, k, n, dtype))
        if n <= head_max_width:
            per_post[dtype] += k * n
        else:
            per_token[dtype] += k * n
            if node.op_type in ATTENTION_OPS:
                hidden = k
            elif k > n:
                intermediate = max(intermediate, k)
    if layers and not hidden:
        # attention as the standard op (opset 23): Q, K and V are separate square MatMuls
        square = Counter(k for _, k, n, _ in shapes if k == n)
        hidden = square.most_common(1)[0][0] if square else 0
    if not layers or not hidden:
        raise ValueError(f"{model_path}: no attention layers found; cannot count ops")
    return ModelOps(
        hidden=hidden,
        layers=layers,
        intermediate=intermediate,
        int8_macs_per_token=per_token["int8"],
        fp32_macs_per_token=per_token["fp32"],
        int8_macs_per_post=per_post["int8"],
        fp32_macs_per_post=per_post["fp32"],
        weight_shapes=shapes,
        quantized_attention_layers=quantized_attention,
    )


# Kernel groups of an optimised ORT graph: int8 linear layers (their attention scores are
# fp32 math inside QAttention), fp32 linear layers, and everything else (layer norms, GELU,
# quantisation of activations, embeddings, pooling).
INT8_KERNELS = {"DynamicQuantizeMatMul", "MatMulInteger", "QAttention", "MatMulIntegerToFloat"}
FP32_KERNELS = {"MatMul", "FusedMatMul", "Gemm", "Attention", "MultiHeadAttention"}


def op_profile(
    model_path: Path,
    classifier: Any,
    cleaned: list[str],
    ops: ModelOps,
    threads: int,
    peak_int8: float,
    peak_fp32: float,
) -> dict[str, Any]:
    """Where forward time goes, from ONNX Runtime's own profiler over bucketed batches of
    ``cleaned``: share per op type, and the efficiency of the int8 and fp32 matmul kernels
    (ops they executed, padding included, per second of their own time, over the peak)."""
    import tempfile

    import onnxruntime as ort

    from sentistream.runtime.onnx import CPU_DISABLED_OPTIMIZERS

    ids = classifier.encode(cleaned)
    plan = classifier.plan_batches([len(x) for x in ids])
    options = session_options(threads)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(
            str(model_path),
            sess_options=options,
            providers=classifier.backend.providers,
            # as served: the fusions OnnxBackend turns off on CPU stay off here
            disabled_optimizers=CPU_DISABLED_OPTIMIZERS,
        )
        batches = [classifier._pad(ids, idx) for idx in plan]
        for input_ids, mask in batches:
            session.run(None, {"input_ids": input_ids, "attention_mask": mask})
        trace_path = session.end_profiling()
        events = json.loads(Path(trace_path).read_text())
        Path(trace_path).unlink()
    by_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += int(e["dur"])
    total_us = sum(by_op.values()) or 1
    int8_us = sum(v for k, v in by_op.items() if k in INT8_KERNELS)
    fp32_us = sum(v for k, v in by_op.items() if k in FP32_KERNELS)
    h = ops.hidden
    q_layers = ops.quantized_attention_layers
    f_layers = ops.layers - q_layers
    int8_ops = fp32_ops = 0.0
    for input_ids, _ in batches:
        rows, w = int(input_ids.shape[0]), int(input_ids.shape[1])
        int8_ops += 2.0 * rows * (ops.int8_macs_per_token * w + ops.int8_macs_per_post)
        int8_ops += 2.0 * rows * q_layers * 2 * w * w * h
        fp32_ops += 2.0 * rows * (ops.fp32_macs_per_token * w + ops.fp32_macs_per_post)
        fp32_ops += 2.0 * rows * f_layers * 2 * w * w * h
    return {
        "batches": len(batches),
        "posts": len(cleaned),
        "share_by_op_type": {k: round(v / total_us, 4) for k, v in by_op.most_common()},
        "share_int8_kernels": round(int8_us / total_us, 4),
        "share_fp32_kernels": round(fp32_us / total_us, 4),
        "share_other": round(1 - (int8_us + fp32_us) / total_us, 4),
        "int8_kernel_efficiency": round(int8_ops / (int8_us / 1e6) / peak_int8, 4)
        if int8_us
        else None,
        "fp32_kernel_efficiency": round(fp32_ops / (fp32_us / 1e6) / peak_fp32, 4)
        if fp32_us
        else None,
        "note": "profiling adds a little overhead per node; shares, not absolute times",
    }


class _TimedBackend:
    """Wraps a backend: accumulates forward time and executed (padded) tokens (summed over
    lanes when forward passes run at once)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.seconds = 0.0
        self.padded: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        t0 = time.perf_counter()
        out = self.inner.forward(input_ids, attention_mask)
        with self._lock:
            self.seconds += time.perf_counter() - t0
            self.padded.append((int(input_ids.shape[0]), int(input_ids.shape[1])))
        return out


def measure_mfu(
    classifier: Any,
    texts: list[str],
    ops: ModelOps,
    peak_int8: float,
    peak_fp32: float,
    repeats: int = 3,
    batch1_texts: int = 300,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Achieved ops/s and utilisation of the classifier core at batch 1, 8, 32 (requests of that
    many posts in arrival order) and bucketed (the whole set sorted by length into batches);
    ``only``: just these of them.

    With ``classifier.lanes`` > 1 forward passes overlap: the forward share is the lanes'
    occupancy (summed forward time over wall time x lanes) and the forward-only MFU divides by
    the forward time per lane."""
    cleaned = [classifier.prepare(t) for t in texts]
    lengths = [len(x) for x in classifier.encode(cleaned)]
    useful = [ops.ops(n) for n in lengths]
    configs: dict[str, tuple[list[str], int]] = {
        "batch_1": (cleaned[:batch1_texts], 1),
        "batch_8": (cleaned, 8),
        "batch_32": (cleaned, 32),
        "bucketed": (cleaned, len(cleaned)),
    }
    if only is not None:
        configs = {k: v for k, v in configs.items() if k in only}
    lanes = max(1, int(getattr(classifier, "lanes", 1)))
    timed = _TimedBackend(classifier.backend)
    original = classifier.backend
    classifier.backend = timed
    out: dict[str, Any] = {}
    try:
        classifier.classify_clean(cleaned[:64])  # warm-up
        for name, (subset, chunk) in configs.items():
            n_posts = len(subset)
            int8_ops = sum(u[0] for u in useful[:n_posts])
            fp32_ops = sum(u[1] for u in useful[:n_posts])
            total = int8_ops + fp32_ops
            wall: list[float] = []
            core: list[float] = []
            executed: float = 0.0
            for _ in range(repeats):
                timed.seconds = 0.0
                timed.padded = []
                t0 = time.perf_counter()
                for i in range(0, n_posts, chunk):
                    classifier.classify_clean(subset[i : i + chunk])
                wall.append(time.perf_counter() - t0)
                core.append(timed.seconds)
                executed = sum(rows * sum(ops.ops(width)) for rows, width in timed.padded)
            med_wall = statistics.median(wall)
            med_core = statistics.median(core) / lanes  # forward time per lane
            out[name] = {
                "posts": n_posts,
                "request_size": chunk,
                "batch_size_setting": classifier.batch_size,
                "max_batch_tokens": classifier.max_batch_tokens,
                "lanes": lanes,
                "posts_per_s": spread([n_posts / w for w in wall]),
                "useful_gops_per_post": round(total / n_posts / 1e9, 4),
                "padding_overhead": round(executed / total, 4),
                "achieved_gops_per_s": spread([total / w / 1e9 for w in wall]),
                "forward_share_of_time": round(med_core / med_wall, 4),
                # What the utilisation figures are computed from (apply_peaks).
                "int8_ops": int8_ops,
                "fp32_ops": fp32_ops,
                "executed_ops": executed,
                "median_wall_s": med_wall,
                "median_forward_s_per_lane": med_core,
            }
    finally:
        classifier.backend = original
    return apply_peaks(out, peak_int8, peak_fp32)


def _fastest(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The :func:`measure_peak` result with the highest median ops/s."""
    return max(measured, key=lambda r: float(r["ops_per_s"]["median"]))


def apply_peaks(rows: dict[str, Any], peak_int8: float, peak_fp32: float) -> dict[str, Any]:
    """(Re)compute the utilisation figures of :func:`measure_mfu` rows against these peaks."""
    for row in rows.values():
        total = row["int8_ops"] + row["fp32_ops"]
        wall, core = row["median_wall_s"], row["median_forward_s_per_lane"]
        ideal_s = row["int8_ops"] / peak_int8 + row["fp32_ops"] / peak_fp32
        row["mfu_vs_int8_peak"] = round(total / wall / peak_int8, 4)
        row["mixed_peak_utilisation"] = round(ideal_s / wall, 4)
        row["mfu_forward_only"] = round(total / core / peak_int8, 4)
        row["mfu_forward_only_executed_ops"] = round(row["executed_ops"] / core / peak_int8, 4)
    return rows


def roofline(
    model: str,
    data: Path,
    *,
    threads: int | None = None,
    quick: bool = False,
    texts_limit: int | None = None,
) -> dict[str, Any]:
    """The whole roofline section of the suite for ``model`` (NAME or NAME:VERSION)."""
    from sentistream.config import Settings
    from sentistream.repository import ModelRepository
    from sentistream.runtime import load_classifier

    settings = Settings(model=model)
    threads = threads or settings.resolved_intra_op_threads()
    folder = ModelRepository(settings.model_repository).resolve(model)
    ops = count_model_ops(folder / "model.onnx")
    seconds, repeats = (0.3, 3) if quick else (1.0, 5)
    big = 1024 if quick else 2048
    providers = settings.providers or None
    peaks = {
        kind: measure_peak(kind, threads, big, big, big, seconds, repeats, providers)
        for kind in ("int8", "fp32")
    }
    # The model's own shapes: a 32-post batch of ~32 tokens is 1024 rows.
    model_shapes = sorted({(k, n) for _, k, n, _ in ops.weight_shapes if n > 64})
    shape_peaks: dict[str, list[dict[str, Any]]] = {"int8": [], "fp32": []}
    for kind in ("int8", "fp32"):
        for k, n in model_shapes:
            shape_peaks[kind].append(
                measure_peak(kind, threads, 1024, k, n, seconds / 2, max(3, repeats - 2), providers)
            )
    # The peak is the fastest matmul measured, over the square shape and the model's own: a
    # "peak" below what a real shape reaches would overstate every utilisation figure.
    fastest = {kind: _fastest([peaks[kind], *shape_peaks[kind]]) for kind in ("int8", "fp32")}
    peak_int8 = fastest["int8"]["ops_per_s"]["median"]
    peak_fp32 = fastest["fp32"]["ops_per_s"]["median"]
    texts = val_texts(data, texts_limit or (500 if quick else None))
    settings_run = settings.model_copy(update={"intra_op_threads": threads})
    classifier = load_classifier(settings_run)
    lengths = [len(x) for x in classifier.encode([classifier.prepare(t) for t in texts])]
    mean_int8, mean_fp32 = (
        float(np.mean([ops.ops(n)[0] for n in lengths])),
        float(np.mean([ops.ops(n)[1] for n in lengths])),
    )
    mfu = measure_mfu(
        classifier,
        texts,
        ops,
        peak_int8,
        peak_fp32,
        repeats=2 if quick else 3,
        batch1_texts=100 if quick else 300,
    )
    # The shipped default of `classify --input` and `serve`: one single-threaded lane per core
    # (Settings.with_lane_per_core), the same file in one call.
    if threads > 1:
        laned = load_classifier(
            settings.model_copy(update={"lanes": threads, "intra_op_threads": 1})
        )
        mfu["bucketed_lanes"] = measure_mfu(
            laned,
            texts,
            ops,
            peak_int8,
            peak_fp32,
            repeats=2 if quick else 3,
            only=["bucketed"],
        )["bucketed"]
        del laned
    # The same fastest shapes once more, right after the timed runs: a machine that sped up in
    # between (a VM's neighbours going quiet) raises the peak instead of inflating the MFU.
    after: dict[str, dict[str, Any]] = {}
    for kind in ("int8", "fp32"):
        m, k, n = fastest[kind]["shape_mkn"]
        after[kind] = measure_peak(
            kind, threads, m, k, n, seconds / 2, max(3, repeats - 2), providers
        )
    peak_int8 = max(peak_int8, after["int8"]["ops_per_s"]["median"])
    peak_fp32 = max(peak_fp32, after["fp32"]["ops_per_s"]["median"])
    apply_peaks(mfu, peak_int8, peak_fp32)
    profile = op_profile(
        folder / "model.onnx",
        classifier,
        [classifier.prepare(t) for t in texts],
        ops,
        threads,
        peak_int8,
        peak_fp32,
    )
    best = max(mfu.values(), key=lambda r: r["mfu_vs_int8_peak"])
    return {
        "model": f"{classifier.name}:{classifier.version}",
        "threads": threads,
        "background": background_load(),
        "peak": peaks,
        "peak_at_model_shapes": shape_peaks,
        "peak_after": after,
        # What every utilisation figure divides by: the fastest shape, before or after.
        "peak_used": {
            "int8": {"ops_per_s": peak_int8, "shape_mkn": fastest["int8"]["shape_mkn"]},
            "fp32": {"ops_per_s": peak_fp32, "shape_mkn": fastest["fp32"]["shape_mkn"]},
            "int8_drift_after_over_before": round(
                after["int8"]["ops_per_s"]["median"] / fastest["int8"]["ops_per_s"]["median"], 4
            ),
        },
        "model_ops": {
            **{k: v for k, v in asdict(ops).items() if k != "weight_shapes"},
            "weights": [
                {"op": op, "k": k, "n": n, "dtype": d} for op, k, n, d in ops.weight_shapes
            ],
        },
        "tokens": {
            "texts": len(lengths),
            "mean": round(float(np.mean(lengths)), 2),
            "median": float(np.median(lengths)),
            "p95": round(float(np.percentile(lengths, 95)), 1),
            "max": int(max(lengths)),
        },
        "ops_per_post": {
            "mean_gops": round((mean_int8 + mean_fp32) / 1e9, 4),
            "int8_share": round(mean_int8 / (mean_int8 + mean_fp32), 4),
            "issue_formula_gops_at_mean_length": round(
                ops.issue_formula(round(float(np.mean(lengths)))) / 1e9, 4
            ),
        },
        # The hardware ceiling: posts/s if every op ran at the measured int8 peak (no layer
        # norms, no tokenization, no I/O). No runtime gets past it with this network.
        "ceiling_posts_per_s_at_int8_peak": round(peak_int8 / (mean_int8 + mean_fp32), 1),
        "mfu": mfu,
        "profile": profile,
        "target_mfu": 0.6,
        "best_mfu": best["mfu_vs_int8_peak"],
        "met_target": best["mfu_vs_int8_peak"] >= 0.6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA / "tweeteval" / "sentiment")
    parser.add_argument("--model", default="tweet-sentiment")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = roofline(args.model, args.data, threads=args.threads, quick=args.quick)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
