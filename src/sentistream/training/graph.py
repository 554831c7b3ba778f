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

``split_quantized_attention`` rewrites ORT's ``QAttention`` as int8 Q/K/V projections and the
standard ``Attention`` op, and the contrib ``Gelu`` as the standard one (same logits, faster).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = [
    "model_opset",
    "opset_upgrade_blockers",
    "split_quantized_attention",
    "unfuse_skip_layer_norm",
    "unfuse_slow_cpu_ops",
]

log = logging.getLogger(__name__)


def model_opset(path: Path) -> int:
    """The default-domain opset an ONNX file imports."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


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


# ONNX Runtime 1.23 brought the standard ``Attention`` op (opset 23) to CPU; the standard
# ``Gelu`` is opset 20.
ATTENTION_OPSET = 23


def split_quantized_attention(src: Path, dst: Path, *, onnx_gelu: bool = True) -> dict[str, int]:
    """Rewrite every ``QAttention`` of ``src`` into ``dst`` as one ``MatMulIntegerToFloat`` per
    Q, K and V (the same int8 weights, per-column scales and biases, fed by the input's one
    ``DynamicQuantizeLinear``) and the standard ``Attention`` op (opset 23) with a boolean
    key mask built once from the ``attention_mask`` input; with ``onnx_gelu``, the contrib
    ``Gelu`` becomes the standard one (the same exact erf GELU). Returns how many of each op it
    rewrote (empty: none, and nothing is written). The standard ops need the model's opset
    raised (23, or 20 for the Gelu alone); a graph with a node that would be invalid there
    (:func:`opset_upgrade_blockers`, e.g. an opset-17 ``ReduceMean`` pooling) is left as it
    is, with a warning.

    Why: ORT's CPU ``QAttention`` computes the attention core (scores, softmax, weighted sum)
    slower than ``Attention``-23 does, and the projection is the same int8 GEMM either way.
    Measured on the shipped sentiment model, one thread, 1024 TweetEval validation tweets in
    batches of 32 sorted by length: the forward 5.0% faster (6 of 8 paired rounds), the
    standard ``Gelu`` another 2.7% (6 of 8); logits bit-identical (docs/performance.md).
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    has_mask = any(i.name == _MASK_INPUT for i in graph.input)
    nodes: list[onnx.NodeProto] = []
    counts = {"QAttention": 0, "Gelu": 0}
    for node in graph.node:
        if onnx_gelu and node.op_type == "Gelu" and node.domain == "com.microsoft":
            counts["Gelu"] += 1
            nodes.append(
                helper.make_node("Gelu", list(node.input), list(node.output), name=node.name)
            )
            continue
        pieces = _split_one_attention(node, inits, producers, has_mask)
        if pieces is None:
            nodes.append(node)
            continue
        counts["QAttention"] += 1
        new_inits, new_nodes = pieces
        graph.initializer.extend(new_inits)
        nodes.extend(new_nodes)
    done = {op: n for op, n in counts.items() if n}
    if not done:
        return done
    target = ATTENTION_OPSET if counts["QAttention"] else 20
    blockers = opset_upgrade_blockers(model, target)
    if blockers:
        log.warning(
            "%s: kept QAttention/Gelu as they are: raising the opset to %d would break %s",
            src,
            target,
            ", ".join(blockers),
        )
        return {}
    if counts["QAttention"] and has_mask:
        nodes = _key_mask_nodes(graph) + nodes
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, target)
    model.ir_version = max(model.ir_version, 10)  # opset 23 needs IR 10 (ORT reads up to 13)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return done


def opset_upgrade_blockers(model: Any, target: int) -> list[str]:
    """Default-domain nodes that would be invalid if the model's opset were raised to
    ``target`` (an attribute the newer schema dropped, e.g. ``ReduceMean``'s ``axes`` since
    opset 18, or more inputs than it takes), as ``"op (node)"``."""
    import onnx.defs

    blockers = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, target, "")
        except onnx.defs.SchemaError:
            blockers.append(f"{node.op_type} ({node.name or 'unnamed'}: no schema)")
            continue
        dropped = [a.name for a in node.attribute if a.name not in schema.attributes]
        if dropped or len(node.input) > schema.max_input:
            blockers.append(f"{node.op_type} ({node.name or 'unnamed'})")
    return blockers


_MASK_INPUT = "attention_mask"
_KEY_MASK = "split_attention/key_mask"


def _key_mask_nodes(graph: Any) -> list[Any]:
    """``attention_mask`` [B, S] -> boolean [B, 1, S, S] (True: attend to that key), the mask
    shape ORT's ``Attention``-23 takes."""
    from onnx import TensorProto as tensor_proto
    from onnx import helper

    p = "split_attention"
    constants = {f"{p}/axes": [1, 2], f"{p}/0": [0], f"{p}/1": [1], f"{p}/2": [2]}
    for name, values in constants.items():
        graph.initializer.append(
            helper.make_tensor(name, tensor_proto.INT64, [len(values)], values)
        )
    return [
        helper.make_node("Cast", [_MASK_INPUT], [f"{p}/bool"], to=tensor_proto.BOOL),
        helper.make_node("Unsqueeze", [f"{p}/bool", f"{p}/axes"], [f"{p}/b11s"]),
        helper.make_node("Shape", [_MASK_INPUT], [f"{p}/bs"]),
        helper.make_node("Slice", [f"{p}/bs", f"{p}/0", f"{p}/1"], [f"{p}/b"]),
        helper.make_node("Slice", [f"{p}/bs", f"{p}/1", f"{p}/2"], [f"{p}/s"]),
        helper.make_node("Concat", [f"{p}/b", f"{p}/1", f"{p}/s", f"{p}/s"], [f"{p}/b1ss"], axis=0),
        helper.make_node("Expand", [f"{p}/b11s", f"{p}/b1ss"], [_KEY_MASK]),
    ]


def _split_one_attention(
    node: Any,
    inits: dict[str, Any],
    producers: dict[str, Any],
    has_mask: bool,
) -> tuple[list[Any], list[Any]] | None:
    """The initializers and nodes that replace one ``QAttention``, or None when it is not the
    plain self-attention this rewrite covers (past state, relative bias, causal, packed
    weights, a mask not from ``attention_mask``)."""
    import numpy as np
    from onnx import helper, numpy_helper

    if node.op_type != "QAttention" or node.domain != "com.microsoft":
        return None
    inputs = list(node.input) + [""] * (9 - len(node.input))
    if len(node.input) > 9 or inputs[8] or any(node.output[1:]):  # past / present state
        return None
    x_q, weight, bias, x_scale, w_scale, mask_index, x_zp, w_zp = inputs[:8]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("unidirectional", 0) or set(attrs) - {"num_heads", "unidirectional", "scale"}:
        return None
    if mask_index and not has_mask:
        return None
    if any(name not in inits for name in (weight, bias, w_scale, w_zp)) or not x_zp:
        return None
    quantizer = producers.get(x_q)
    if quantizer is None or quantizer.op_type != "DynamicQuantizeLinear":
        return None
    w = numpy_helper.to_array(inits[weight])
    b = numpy_helper.to_array(inits[bias])
    scale = np.broadcast_to(numpy_helper.to_array(inits[w_scale]), (w.shape[1],))
    zero = np.broadcast_to(numpy_helper.to_array(inits[w_zp]), (w.shape[1],))
    if w.ndim != 2 or w.shape[1] % 3 or b.shape != (w.shape[1],):
        return None
    hidden = w.shape[1] // 3
    heads = int(attrs["num_heads"])
    name = node.name or f"QAttention_{weight}"
    new_inits, new_nodes, qkv = [], [], []
    for j, part in enumerate("qkv"):
        cols = slice(j * hidden, (j + 1) * hidden)
        # the exporter's naming (``*_quantized``, ``*_scale``), which the 7-bit rewrite reads
        names = [
            f"{name}/{part}_weight_{what}" for what in ("quantized", "scale", "zero_point")
        ] + [f"{name}/{part}_bias"]
        for init_name, array in zip(
            names, (w[:, cols], scale[cols], zero[cols], b[cols]), strict=True
        ):
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(array), init_name))
        out = f"{name}/{part}"
        new_nodes.append(
            helper.make_node(
                "MatMulIntegerToFloat",
                [x_q, names[0], x_scale, names[1], x_zp, names[2], names[3]],
                [out],
                name=f"{name}/{part}_matmul",
                domain="com.microsoft",
            )
        )
        qkv.append(out)
    extra: dict[str, Any] = {"scale": float(attrs["scale"])} if "scale" in attrs else {}
    new_nodes.append(
        helper.make_node(
            "Attention",
            [*qkv, _KEY_MASK if mask_index else ""],
            [node.output[0]],
            name=f"{name}/attention",
            q_num_heads=heads,
            kv_num_heads=heads,
            **extra,
        )
    )
    return new_inits, new_nodes
