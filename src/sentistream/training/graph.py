"""Graph rewrites of an exported model that keep its weights and change only how ONNX Runtime
computes it.

``unfuse_skip_layer_norm``: ONNX Runtime's transformer optimizer fuses each residual add and
the LayerNorm after it into one ``SkipLayerNormalization`` node. On CPU that fused kernel is
slow: measured with ONNX Runtime 1.31 on the 2-core AMD EPYC (AVX-512), a [30, 29, 384] batch
takes ~2.0 ms in ``SkipLayerNormalization`` and ~0.3 ms as ``Add`` + ``LayerNormalization``
(``benchmarks/tuning.py``, docs/performance.md), and the fused node was a fifth of the int8
model's forward time. The rewrite restores ``Add`` (input + skip, then + bias) and the standard
``LayerNormalization`` (opset 17), with the same epsilon; the runtime then loads the model with
ORT's ``SkipLayerNormFusion`` disabled on CPU so that the session does not fuse it back.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["unfuse_skip_layer_norm"]


def unfuse_skip_layer_norm(src: Path, dst: Path) -> int:
    """Rewrite every ``SkipLayerNormalization`` of ``src`` into ``dst``; returns how many
    (0: the graph has none and nothing is written)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 17:
        raise ValueError(f"{src} uses opset {opset}: LayerNormalization needs opset 17")
    nodes = []
    count = 0
    for node in graph.node:
        if node.op_type != "SkipLayerNormalization" or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        count += 1
        inputs = list(node.input) + [""] * (5 - len(node.input))
        x, skip, gamma, beta, bias = inputs[:5]
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        outputs = list(node.output) + [""] * (4 - len(node.output))
        name = node.name or f"SkipLayerNormalization_{count}"
        summed = f"{name}/skip_sum"
        nodes.append(helper.make_node("Add", [x, skip], [summed], name=f"{name}/add_skip"))
        if bias:
            with_bias = outputs[3] or f"{name}/skip_bias_sum"
            nodes.append(
                helper.make_node("Add", [summed, bias], [with_bias], name=f"{name}/add_bias")
            )
            summed = with_bias
        elif outputs[3]:
            nodes.append(helper.make_node("Identity", [summed], [outputs[3]], name=f"{name}/sum"))
        ln_inputs = [summed, gamma] + ([beta] if beta else [])
        nodes.append(
            helper.make_node(
                "LayerNormalization",
                ln_inputs,
                [outputs[0], outputs[1], outputs[2]] if outputs[1] or outputs[2] else [outputs[0]],
                name=f"{name}/layer_norm",
                axis=-1,
                epsilon=epsilon,
            )
        )
    if count == 0:
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return count
