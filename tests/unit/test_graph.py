"""Graph rewrites: SkipLayerNormalization -> Add + LayerNormalization and BiasGelu -> Add +
Gelu compute the same, and sessions configured as served do not fuse them back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

B, L, H = 3, 5, 16


def _fused_model(path: Path) -> None:
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)

    def const(name: str) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.FLOAT, [H], rng.normal(size=H).tolist())

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, L, H])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [B, L, H])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, L, H])
    ms = "com.microsoft"
    nodes = [
        # with a bias input (as the transformer optimizer emits after an attention output)
        helper.make_node(
            "SkipLayerNormalization", ["x", "s", "g1", "b1", "bias"], ["h"], domain=ms,
            epsilon=1e-12, name="sln_bias",
        ),
        # without one, and with the optional input+skip sum output used downstream
        helper.make_node(
            "SkipLayerNormalization", ["h", "x", "g2", "b2"], ["y0", "", "", "sum"], domain=ms,
            epsilon=1e-5, name="sln_sum",
        ),
        helper.make_node("Add", ["y0", "sum"], ["z"]),
        helper.make_node("BiasGelu", ["z", "gb"], ["y"], domain=ms, name="bias_gelu"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [x, s],
        [y],
        [const(n) for n in ("g1", "b1", "bias", "g2", "b2", "gb")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))


def _session(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    from sentistream.runtime.onnx import CPU_DISABLED_OPTIMIZERS

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(
        str(path),
        sess_options=opts,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=CPU_DISABLED_OPTIMIZERS,
    )


def test_unfused_ops_compute_the_same_and_stay_unfused(tmp_path: Path) -> None:
    from sentistream.training.graph import unfuse_skip_layer_norm, unfuse_slow_cpu_ops

    fused, unfused = tmp_path / "fused.onnx", tmp_path / "unfused.onnx"
    _fused_model(fused)
    assert unfuse_slow_cpu_ops(fused, unfused) == {"SkipLayerNormalization": 2, "BiasGelu": 1}
    ops = [n.op_type for n in onnx.load(str(unfused)).graph.node]
    assert "SkipLayerNormalization" not in ops and "BiasGelu" not in ops
    assert ops.count("LayerNormalization") == 2 and ops.count("Gelu") == 1
    assert ops.count("Add") == 5

    rng = np.random.default_rng(1)
    feed = {
        "x": rng.normal(size=(B, L, H)).astype(np.float32),
        "s": rng.normal(size=(B, L, H)).astype(np.float32),
    }
    want = _session(fused).run(None, feed)[0]
    got = _session(unfused, optimized=tmp_path / "as_served.onnx").run(None, feed)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    served_ops = {n.op_type for n in onnx.load(str(tmp_path / "as_served.onnx")).graph.node}
    assert not served_ops & {"SkipLayerNormalization", "BiasGelu"}  # ORT did not fuse them back

    assert unfuse_skip_layer_norm(unfused, tmp_path / "again.onnx") == 0  # nothing to do
    assert not (tmp_path / "again.onnx").exists()
    only_ln = tmp_path / "only_ln.onnx"
    assert unfuse_skip_layer_norm(fused, only_ln) == 2
    assert "BiasGelu" in {n.op_type for n in onnx.load(str(only_ln)).graph.node}


def test_split_attention_leaves_what_it_does_not_cover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A causal QAttention (or one fed by a quantizer other than DynamicQuantizeLinear) is not
    the encoder self-attention the rewrite covers: it stays, and with nothing else to rewrite
    no file is written; a contrib Gelu alone is rewritten to the standard one (opset 20),
    unless raising the opset would break another node (then nothing is, with a warning)."""
    from onnx import TensorProto, helper

    from sentistream.training.graph import model_opset, split_quantized_attention

    rng = np.random.default_rng(0)
    ms = "com.microsoft"
    inits = [
        helper.make_tensor("w", TensorProto.INT8, [H, 3 * H], rng.integers(-60, 60, 3 * H * H)),
        helper.make_tensor("bias", TensorProto.FLOAT, [3 * H], rng.normal(size=3 * H)),
        helper.make_tensor("w_scale", TensorProto.FLOAT, [3 * H], np.full(3 * H, 0.01)),
        helper.make_tensor("w_zp", TensorProto.INT8, [3 * H], np.zeros(3 * H, dtype=np.int8)),
    ]

    def attention_model(path: Path, gelu: bool, mean_pool: bool = False) -> None:
        nodes = [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            helper.make_node(
                "QAttention",
                ["xq", "w", "bias", "xs", "w_scale", "", "xz", "w_zp"],
                ["a"],
                domain=ms,
                num_heads=2,
                unidirectional=1,
            ),
            helper.make_node("Gelu", ["a"], ["g"], domain=ms)
            if gelu
            else helper.make_node("Identity", ["a"], ["g"]),
            # opset 17 form (axes as an attribute), invalid from opset 18 on
            helper.make_node("ReduceMean", ["g"], ["y"], axes=[1], keepdims=1)
            if mean_pool
            else helper.make_node("Identity", ["g"], ["y"]),
        ]
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, L, H])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, L, H])],
            inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)]
        )
        model.ir_version = 8
        onnx.save(model, str(path))

    causal, out = tmp_path / "causal.onnx", tmp_path / "out.onnx"
    attention_model(causal, gelu=False)
    assert split_quantized_attention(causal, out) == {}
    assert not out.exists()

    with_gelu = tmp_path / "gelu.onnx"
    attention_model(with_gelu, gelu=True)
    assert split_quantized_attention(with_gelu, out) == {"Gelu": 1}
    ops = [(n.op_type, n.domain) for n in onnx.load(str(out)).graph.node]
    assert ("QAttention", ms) in ops and ("Gelu", "") in ops and ("Gelu", ms) not in ops
    assert model_opset(out) == 20
    x = {"x": np.random.default_rng(1).normal(size=(B, L, H)).astype(np.float32)}
    np.testing.assert_allclose(
        _session(out).run(None, x)[0], _session(with_gelu).run(None, x)[0], rtol=1e-5, atol=1e-6
    )

    pooled, out2 = tmp_path / "pooled.onnx", tmp_path / "out2.onnx"
    attention_model(pooled, gelu=True, mean_pool=True)
    assert split_quantized_attention(pooled, out2) == {}  # opset 20 would break the ReduceMean
    assert not out2.exists()
    assert "ReduceMean" in caplog.text and "kept QAttention/Gelu" in caplog.text
