"""An fp32 training checkpoint rebuilt from a shipped int8 ONNX model (needs the [train] extra).

The package ships int8 ONNX graphs for CPUs; their fp32 training parents are not shipped (four
times the size). On a GPU host the torch backend wants fp32 (or fp16/bf16) weights, so
``sentistream dequantize NAME --output DIR`` writes a checkpoint folder (the same format
``sentistream train`` writes: ``model.safetensors``, ``encoder_config.json``, ``tokenizer.json``,
``checkpoint.json``) whose weights are the int8 weights times their scales, ``(q - zero_point)
* scale`` per output column: exactly the weights the int8 graph multiplies by. What it cannot
recover is the rounding of the int8 export itself, so labels agree with the parent's to within
the quantization error (measured on the shipped model: docs/performance.md, accelerator path).

Reads the graphs ``sentistream export`` and ``rebuild`` write for BERT-family encoders:
``QEmbedLayerNormalization`` or ``EmbedLayerNormalization`` embeddings; per layer a
``QAttention``, a fp32 ``Attention`` or the split form (three ``MatMulIntegerToFloat`` + the
standard ``Attention``); ``MatMulInteger`` or fp32 ``MatMul`` linears named after their module;
fp32 layer norms and biases under their module names. Anything else is refused with the names
of the weights it could not find.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DequantizeError", "checkpoint_from_onnx", "dequantized_state"]

_LAYER_OF_ATTENTION_OUTPUT = re.compile(r"/layer\.(\d+)/attention/output/dense/")
_FLOAT = np.float32


class DequantizeError(ValueError):
    """The graph is not one this module knows how to read back into a checkpoint."""


def _dequant(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """``(q - zero_point) * scale``; per-column (last axis) or per-tensor parameters."""
    return ((q.astype(_FLOAT) - zero_point.astype(_FLOAT)) * scale.astype(_FLOAT)).astype(_FLOAT)


class _Graph:
    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.nodes = list(model.graph.node)
        self.init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def array(self, name: str) -> np.ndarray:
        if name not in self.init:
            raise DequantizeError(f"expected a constant weight named {name!r}")
        return self.init[name]

    def quantized(self, name: str) -> np.ndarray:
        """A ``*_quantized`` initializer dequantized with its ``*_scale`` / ``*_zero_point``."""
        stem = name.removesuffix("_quantized")
        return _dequant(
            self.array(name), self.array(stem + "_scale"), self.array(stem + "_zero_point")
        )

    def weight(self, name: str) -> np.ndarray:
        return (
            self.quantized(name) if name.endswith("_quantized") else self.array(name).astype(_FLOAT)
        )

    def attention_layer(self, node: Any) -> int:
        """The encoder layer of an attention node or of one of its Q/K/V projections: the
        layer whose attention output projection its output reaches within a few hops (the
        fused attentions' node names are numbered in fusion order, not by layer)."""
        frontier, seen = list(node.output), set()
        for _ in range(4):
            following: list[str] = []
            for name in frontier:
                for consumer in self.consumers.get(name, []):
                    if consumer.name in seen:
                        continue
                    seen.add(consumer.name)
                    match = _LAYER_OF_ATTENTION_OUTPUT.search(consumer.name)
                    if match:
                        return int(match.group(1))
                    following.extend(consumer.output)
            frontier = following
        raise DequantizeError(f"cannot tell which encoder layer attention node {node.name!r} is in")


def _module_of_matmul(node: Any, weight: str) -> str | None:
    """State-dict prefix of the linear a MatMul/MatMulInteger node computes, from its weight's
    name (``model.heads.X.weight_quantized``) or, for anonymous weights, from the node's name
    (``/model/encoder/encoder/layer.0/intermediate/dense/MatMul_quant``)."""
    if weight.startswith("model.") and ".weight" in weight:
        return weight[len("model.") : weight.index(".weight")]
    if node.name.startswith("/model/"):
        parts = node.name[len("/model/") :].split("/")[:-1]
        if parts and parts[0] == "encoder":
            return ".".join(parts)
    return None


def dequantized_state(model_path: Path, heads: list[str]) -> tuple[dict[str, np.ndarray], float]:
    """fp32 weights of a ``MultiTaskModel`` (encoder + ``heads``) read out of an int8 ONNX
    graph, and the layer-norm epsilon; keys as in ``MultiTaskModel.state_dict()``."""
    import onnx

    graph = _Graph(onnx.load(str(model_path)))
    state: dict[str, np.ndarray] = {}
    epsilon = 1e-12
    for name, value in graph.init.items():
        if name.startswith("model.") and (name.endswith(".weight") or name.endswith(".bias")):
            state[name[len("model.") :]] = value.astype(_FLOAT)
    # encoder layer -> "q" / "k" / "v" -> (weight [in, out], bias)
    qkv: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for node in graph.nodes:
        op = node.op_type
        if op in ("QEmbedLayerNormalization", "EmbedLayerNormalization"):
            names = ("word_embeddings", "position_embeddings", "token_type_embeddings")
            inputs = list(node.input)
            for i, part in enumerate(names):
                state[f"encoder.embeddings.{part}.weight"] = graph.weight(inputs[2 + i])
            state["encoder.embeddings.LayerNorm.weight"] = graph.weight(inputs[5])
            state["encoder.embeddings.LayerNorm.bias"] = graph.weight(inputs[6])
            for attr in node.attribute:
                if attr.name == "epsilon":
                    epsilon = float(attr.f)
        elif (
            op in ("QAttention", "Attention")
            and len(node.input) > 2
            and node.input[1] in graph.init
        ):
            # Fused: one [hidden, 3 * hidden] weight, Q|K|V, and its [3 * hidden] bias.
            layer = graph.attention_layer(node)
            weight = graph.weight(node.input[1])
            bias = graph.array(node.input[2]).astype(_FLOAT)
            for j, chunk in enumerate(np.split(weight, 3, axis=1)):
                qkv.setdefault(layer, {})["qkv"[j]] = (chunk, np.split(bias, 3)[j])
        elif op == "MatMulIntegerToFloat":
            # Split attention: {node}/{q|k|v}_matmul with its bias as the 7th input.
            which = node.name.rsplit("/", 1)[-1][:1]
            if which not in "qkv" or len(node.input) < 7:
                raise DequantizeError(f"unknown MatMulIntegerToFloat node {node.name!r}")
            qkv.setdefault(graph.attention_layer(node), {})[which] = (
                graph.quantized(node.input[1]),
                graph.array(node.input[6]).astype(_FLOAT),
            )
        elif op in ("MatMulInteger", "MatMul") and node.input[1] in graph.init:
            module = _module_of_matmul(node, node.input[1])
            if module is None:
                raise DequantizeError(f"cannot tell which linear layer {node.name!r} computes")
            if module.split(".")[0] not in ("encoder", "heads"):
                module = f"heads.{module}"
            # ONNX keeps [in, out]; torch Linear keeps [out, in].
            state[f"{module}.weight"] = np.ascontiguousarray(graph.weight(node.input[1]).T)
    for layer, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise DequantizeError(f"layer {layer} lacks some of Q/K/V: has {sorted(parts)}")
        prefix = f"encoder.encoder.layer.{layer}.attention.self"
        for which, module in (("q", "query"), ("k", "key"), ("v", "value")):
            weight, bias = parts[which]
            state[f"{prefix}.{module}.weight"] = np.ascontiguousarray(weight.T)
            state[f"{prefix}.{module}.bias"] = bias
    for head in heads:
        if f"heads.{head}.weight" not in state:
            raise DequantizeError(f"the graph has no weights for head {head!r}")
    return state, epsilon


def checkpoint_from_onnx(folder: Path, output: Path) -> Path:
    """Write a training checkpoint to ``output`` from the model version ``folder`` (a verified
    manifest, ``model.onnx`` and ``tokenizer.json``). Returns ``output``."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel, BertConfig

    from sentistream.manifest import load_manifest
    from sentistream.training.model import MultiTaskModel, save_checkpoint

    manifest = load_manifest(folder)
    backbone = json.loads((folder / "manifest.json").read_text()).get("backbone", {})
    if backbone.get("model_type", "bert") != "bert":
        raise DequantizeError(f"only BERT-family encoders are supported, not {backbone}")
    heads = list(manifest.tasks)
    state, epsilon = dequantized_state(folder / "model.onnx", heads)
    word = state.get("encoder.embeddings.word_embeddings.weight")
    inter = state.get("encoder.encoder.layer.0.intermediate.dense.weight")
    if word is None or inter is None:
        raise DequantizeError("the graph has no embeddings or no first encoder layer")
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("encoder.encoder.layer."))
    config = BertConfig(
        vocab_size=int(word.shape[0]),
        hidden_size=int(word.shape[1]),
        num_hidden_layers=layers,
        num_attention_heads=int(backbone.get("num_attention_heads", 12)),
        intermediate_size=int(inter.shape[0]),
        max_position_embeddings=int(
            state["encoder.embeddings.position_embeddings.weight"].shape[0]
        ),
        type_vocab_size=int(state["encoder.embeddings.token_type_embeddings.weight"].shape[0]),
        layer_norm_eps=epsilon,
        hidden_act="gelu",
    )
    # AutoModel, as load_checkpoint builds it: BERT's pooler comes along, unused by the mean
    # pooling head (the int8 graph has none); it keeps a seeded initialisation.
    torch.manual_seed(0)
    encoder = AutoModel.from_config(config)  # type: ignore[no-untyped-call]
    model = MultiTaskModel(encoder, {t: spec.labels for t, spec in manifest.tasks.items()})
    expected = model.state_dict()
    unused = ("position_ids", "encoder.pooler.")
    missing = sorted(k for k in expected if k not in state and not any(u in k for u in unused))
    if missing:
        raise DequantizeError(f"{folder / 'model.onnx'} has no weights for {missing[:8]}")
    tensors = {k: torch.from_numpy(state[k]) for k in expected if k in state}
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise DequantizeError(
                f"{key}: the graph's weight is {tuple(tensor.shape)}, the model needs "
                f"{tuple(expected[key].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    meta = {
        "kind": "sentistream-checkpoint",
        "primary_task": manifest.primary_task,
        "max_length": manifest.max_length,
        "max_chars": manifest.max_chars,
        "truncation": manifest.truncation,
        "cleaning_version": manifest.cleaning_version,
        "temperatures": {t: spec.temperature for t, spec in manifest.tasks.items()},
        "source": f"dequantized from {manifest.name} v{manifest.version} (int8 ONNX)",
        "name": manifest.name,
        "version": manifest.version,
    }
    return save_checkpoint(model, Tokenizer.from_file(str(folder / "tokenizer.json")), output, meta)
