"""Graph rewrites of an exported model that keep its weights and change only how ONNX Runtime
computes it.

ONNX Runtime's transformer optimizer fuses each residual add and the LayerNorm after it into
one ``SkipLayerNormalization`` node, and each FFN bias add and the GELU after it into
``BiasGelu``. On CPU both fused kernels are slower than the ops they replace. Measured with
ONNX Runtime 1.31 on the 2-core AMD EPYC (AVX-512), 2 threads, one batch of 30 posts x 29
tokens: ``SkipLayerNormalization`` ~2.0 ms vs ``Add`` + ``LayerNormalization`` ~0.3 ms
([30, 29, 384]); ``BiasGelu`` 1.2 ms vs ``Add`` + ``Gelu`` 0.74 ms ([30, 29, 1536], identical
outputs). In the int8 model they were a fifth and an eighth of the forward time
(docs/performance.md, tuning log).

``unfuse_slow_cpu_ops`` restores ``Add`` (input + skip, then + bias) and the standard
``LayerNormalization`` (opset 17, same epsilon), and ``Add`` + ``Gelu`` (the exact erf GELU
that ``BiasGelu`` computes). The runtime loads models with ORT's ``SkipLayerNormFusion`` and
``BiasGeluFusion`` disabled on CPU so that the session does not fuse them back.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["unfuse_skip_layer_norm", "unfuse_slow_cpu_ops"]


def unfuse_skip_layer_norm(src: Path, dst: Path) -> int:
    """Rewrite every ``SkipLayerNormalization`` of ``src`` into ``dst``; returns how many
    (0: the graph has none and nothing is written)."""
    return unfuse_slow_cpu_ops(src, dst, bias_gelu=False).get("SkipLayerNormalization", 0)


def unfuse_slow_cpu_ops(
    src: Path, dst: Path, *, skip_layer_norm: bool = True, bias_gelu: bool = True
) -> dict[str, int]:
    """Rewrite the ``SkipLayerNormalization`` and ``BiasGelu`` nodes of ``src`` into ``dst``;
    returns how many of each op it rewrote (empty: none, and nothing is written)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 17:
        raise ValueError(f"{src} uses opset {opset}: LayerNormalization needs opset 17")
    nodes = []
    count = 0
    gelus = 0
    for node in graph.node:
        if bias_gelu and node.op_type == "BiasGelu" and node.domain == "com.microsoft":
            gelus += 1
            name = node.name or f"BiasGelu_{gelus}"
            biased = f"{name}/biased"
            nodes.append(
                helper.make_node("Add", list(node.input[:2]), [biased], name=f"{name}/add")
            )
            nodes.append(
                helper.make_node(
                    "Gelu", [biased], [node.output[0]], name=f"{name}/gelu", domain="com.microsoft"
                )
            )
            continue
        if (
            not skip_layer_norm
            or node.op_type != "SkipLayerNormalization"
            or node.domain != "com.microsoft"
        ):
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
    done = {op: n for op, n in (("SkipLayerNormalization", count), ("BiasGelu", gelus)) if n}
    if not done:
        return done
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return done
