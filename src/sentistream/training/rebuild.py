"""A served model folder -> a new version with the same weights and today's graph choices.

The rewrites, each measured (docs/performance.md) and each optional:

- ``quantize_all``: older exports kept a few MatMuls in fp32 (the ones whose quantization
  flipped most predictions on calibration texts). On the shipped sentiment model those nodes
  cost a third of the forward time and bought no validation metric. The rebuild quantizes
  what the source left in fp32 with the same dynamic per-channel scheme (the int8 weights
  already in the graph are untouched, so the result is what an export of the original
  checkpoint with no fp32 nodes gives).
- ``unfuse``: ``SkipLayerNormalization`` -> ``Add`` + ``LayerNormalization`` and ``BiasGelu``
  -> ``Add`` + ``Gelu`` (:mod:`sentistream.training.graph`): ORT's fused CPU kernels are
  slower than the ops they replace (~7x and ~1.6x for those ops).
- ``split_attention``: each ``QAttention`` -> three ``MatMulIntegerToFloat`` (Q, K, V: the
  same int8 weights) + the standard ``Attention`` op (opset 23), and the contrib ``Gelu`` ->
  the standard one (:func:`sentistream.training.graph.split_quantized_attention`): ORT's CPU
  ``Attention``-23 computes the attention core faster than ``QAttention`` does; the logits are
  bit-identical.
- ``seven_bit_weights`` (off by default): 8-bit int8 matmul weights (``MatMulInteger``,
  ``QAttention``) become 7-bit (``q7 = round(q8 / 2)``, scale doubled), what ``export`` does
  by default since it measured the saturation problem: x86 CPUs without VNNI multiply
  uint8 x int8 with ``VPMADDUBSW``, whose int16 pair sums saturate for weights outside
  [-64, 64], so an 8-bit model scores lower there than on the VNNI machine that verified it.
  7-bit weights compute exactly on every x86 CPU, at full u8s8 speed.

Every task is verified on the data the source was verified on (agreement with the source,
official metrics of both), the temperatures are refitted, the drift profile rebuilt, and a new
version folder is written with its card. It refuses to publish when a task's official metric
drops by more than ``max_drop``.
"""

from __future__ import annotations

import copy
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from sentistream.manifest import file_sha256, load_manifest
from sentistream.metrics import classification_report
from sentistream.training.graph import (
    model_opset,
    split_quantized_attention,
    unfuse_slow_cpu_ops,
)

__all__ = ["RebuildConfig", "rebuild"]


class RebuildConfig(BaseModel):
    source: Path = Field(description="served model version folder (model.onnx + manifest)")
    output: Path = Field(description="new version folder, e.g. models/tweet-sentiment/2")
    version: str | None = Field(None, description="version (default: output folder name)")
    quantize_all: bool = Field(True, description="quantize the MatMuls the source kept fp32")
    unfuse: bool = Field(
        True,
        description="SkipLayerNormalization -> Add + LayerNormalization, BiasGelu -> Add + Gelu "
        "(faster on CPU)",
    )
    split_attention: bool = Field(
        True,
        description="QAttention -> int8 Q/K/V MatMulIntegerToFloat + standard Attention "
        "(opset 23), contrib Gelu -> standard Gelu (faster on CPU, the same logits)",
    )
    seven_bit_weights: bool = Field(
        False, description="requantize 8-bit int8 matmul weights to 7 bits (exact on AVX2)"
    )
    max_drop: float = Field(
        0.005, ge=0, le=1, description="largest official-metric drop allowed on any task"
    )
    min_agreement: float = Field(
        0.97, ge=0, le=1, description="smallest argmax agreement with the source on any task"
    )
    description: str | None = None
    command_line: str | None = Field(None, description="this command, for the model card")


def _quantize_rest(src: Path, dst: Path, reduce_range: bool) -> list[str]:
    """Dynamic int8 for the MatMul/Attention nodes that still carry fp32 weights (their
    names; none: nothing is written)."""
    import onnx
    from onnx import TensorProto

    from sentistream.training.quantize import quantize

    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    pending = [
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Attention") and len(n.input) > 1 and n.input[1] in weights
    ]
    if not pending:
        return []  # nothing written: the source is int8 throughout
    quantize(src, dst, reduce_range=reduce_range, op_types=["MatMul", "Attention"])
    return pending


def _verify(
    manifest: dict[str, Any], source: Path, output: Path
) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[str]], dict[str, Any]]:
    """Per task: agreement with the source and both official metrics; new int8 reports;
    validation texts (for the drift profile); temperatures refitted on the new logits."""
    from tokenizers import Tokenizer

    from sentistream.text import clean_or_empty
    from sentistream.training.calibration import calibrate
    from sentistream.training.export import _labelled_split
    from sentistream.training.finetune import encode_texts
    from sentistream.training.quantize import run_onnx

    old_ver = manifest.get("metrics", {}).get("verification", {})
    sets = old_ver.get("tasks") or ({old_ver["task"]: old_ver} if old_ver.get("task") else {})
    if not sets:
        raise ValueError(f"{source} records no verification data to check the new model on")
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.no_padding()
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    meta = {"training_config": manifest.get("training", {}).get("config", {})}
    order = list(manifest["tasks"])
    outputs = [manifest["tasks"][t]["output"] for t in order]
    per_task: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    texts_of: dict[str, list[str]] = {}
    temperatures: dict[str, Any] = {}
    for task, old in sets.items():
        labels = manifest["tasks"][task]["labels"]
        split, _ = _labelled_split(Path(old["data"]), old.get("split", "val"), meta, labels)
        texts_of[task] = split.texts
        cleaned = [clean_or_empty(t, int(manifest["max_chars"])) for t in split.texts]
        ids = encode_texts(
            tokenizer, cleaned, int(manifest["max_length"]), str(manifest.get("truncation", "head"))
        )
        k = order.index(task)
        ref = run_onnx(source / "model.onnx", ids, outputs, pad_id)[k]
        new = run_onnx(output / "model.onnx", ids, outputs, pad_id)[k]
        rep_old = classification_report(split.labels, ref.argmax(-1).tolist(), labels, task)
        rep_new = classification_report(split.labels, new.argmax(-1).tolist(), labels, task)
        agree = float((ref.argmax(-1) == new.argmax(-1)).mean())
        source_agree = old.get("argmax_agreement_int8_vs_fp32")
        per_task[task] = {
            "data": old["data"],
            "split": old.get("split", "val"),
            "n": len(ids),
            "argmax_agreement_with_source": round(agree, 5),
            "max_abs_logit_diff_vs_source": float(np.abs(ref - new).max()),
            "source_int8_official_score": round(rep_old["official_score"], 5),
            "fp32_official_score": old.get("fp32_official_score"),
            "int8_official_score": round(rep_new["official_score"], 5),
            # agree(new, fp32) >= agree(new, source) + agree(source, fp32) - 1
            **(
                {
                    "argmax_agreement_int8_vs_fp32_lower_bound": round(
                        agree + float(source_agree) - 1, 5
                    )
                }
                if source_agree is not None
                else {}
            ),
        }
        reports[task] = rep_new
        temperatures[task] = calibrate(new, np.asarray(split.labels))
    return per_task, reports, texts_of, temperatures


def _op_counts(counts: dict[str, int]) -> str:
    """``{"A": 2, "B": 1}`` -> ``"A (2) and B (1)"``, for the card."""
    return " and ".join(f"{op} ({n})" for op, n in counts.items())


def requantize_seven_bit(src: Path, dst: Path) -> list[str]:
    """Write ``src`` with its 8-bit ``MatMulInteger``/``QAttention`` weights as 7-bit ones
    (``round(q / 2)`` in [-64, 64], the per-channel scale doubled: the same real values to
    half a 7-bit step); returns the weights rewritten (none: nothing is written)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    weights = sorted(
        {
            n.input[1]
            for n in model.graph.node
            if n.op_type in ("MatMulInteger", "MatMulIntegerToFloat", "QAttention")
            and len(n.input) > 1
        }
    )
    done: list[str] = []
    for name in weights:
        if name not in inits or not name.endswith("_quantized"):
            continue
        q = numpy_helper.to_array(inits[name])
        scale_name = name[: -len("_quantized")] + "_scale"
        if q.dtype != np.int8 or scale_name not in inits:
            continue
        if int(np.abs(q.astype(np.int16)).max()) <= 64:
            continue  # already 7-bit
        q7 = np.clip(np.round(q.astype(np.float32) / 2), -64, 64).astype(np.int8)
        scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32) * 2
        inits[name].CopyFrom(numpy_helper.from_array(q7, name))
        inits[scale_name].CopyFrom(numpy_helper.from_array(scale, scale_name))
        done.append(name)
    if done:
        onnx.save(model, str(dst))
    return done


def rebuild(config: RebuildConfig) -> Path:
    """Publish ``source`` rewritten (see the module doc) as a new version folder."""
    from sentistream.training.card import render_model_card
    from sentistream.training.export import _store_profile

    source, output = config.source, config.output
    load_manifest(source)  # checksums and schema of what we start from
    manifest: dict[str, Any] = json.loads((source / "manifest.json").read_text())
    version = config.version or output.name
    if output.name != version:
        raise ValueError(f"output folder {output} must be named after version {version}")
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"{output} exists and is not empty: pick a new version folder")
    quant = manifest.get("quantization", {})
    output.mkdir(parents=True, exist_ok=True)
    try:
        nodes: list[str] = []
        unfused: dict[str, int] = {}
        current = source / "model.onnx"
        if config.quantize_all:
            nodes = _quantize_rest(
                current, output / "model.onnx", bool(quant.get("reduce_range", True))
            )
            current = output / "model.onnx" if nodes else current
        if config.unfuse:
            unfused = unfuse_slow_cpu_ops(current, output / "model.onnx")
            current = output / "model.onnx" if unfused else current
        seven: list[str] = []
        if config.seven_bit_weights:
            seven = requantize_seven_bit(current, output / "model.onnx")
            current = output / "model.onnx" if seven else current
        split: dict[str, int] = {}
        if config.split_attention:
            split = split_quantized_attention(current, output / "model.onnx")
        if not nodes and not unfused and not seven and not split:
            raise ValueError(
                f"nothing to rebuild in {source}: no fp32 MatMul left to quantize, no "
                "SkipLayerNormalization/BiasGelu to unfuse, no 8-bit weight to make 7-bit and "
                "no QAttention/contrib Gelu to make standard (or those rewrites switched off)"
            )
        per_task, reports, texts_of, temperatures = _verify(manifest, source, output)
        print(json.dumps(per_task, indent=2), flush=True)
        for task, v in per_task.items():
            drop = v["source_int8_official_score"] - v["int8_official_score"]
            if drop > config.max_drop or v["argmax_agreement_with_source"] < config.min_agreement:
                raise ValueError(
                    f"{task}: official score {v['source_int8_official_score']:.4f} -> "
                    f"{v['int8_official_score']:.4f}, agreement with the source "
                    f"{v['argmax_agreement_with_source']:.4f} (allowed: drop <= "
                    f"{config.max_drop}, agreement >= {config.min_agreement}): not publishing"
                )
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    shutil.copy(source / "tokenizer.json", output / "tokenizer.json")

    new = copy.deepcopy(manifest)
    old_name = f"{manifest['name']}:{manifest['version']}"
    new["version"] = version
    if config.description:
        new["description"] = config.description
    for task, t in temperatures.items():
        new["tasks"][task]["temperature"] = t["temperature"]
    validation = new.setdefault("metrics", {}).setdefault("validation", {})
    for task, report in reports.items():
        validation.setdefault(task, {})["int8"] = report
    primary = new["primary_task"] if new["primary_task"] in per_task else next(iter(per_task))
    new["metrics"]["verification"] = {"task": primary, **per_task[primary], "tasks": per_task}
    new["metrics"]["calibration"] = temperatures
    new["quantization"] = {
        **quant,
        **(
            {
                "weights": str(quant.get("weights", "int8")).replace(
                    "int8 (MatMul/attention weights", "int8 (every MatMul/attention weight"
                ),
                "fp32_nodes": [],
                "requantized_nodes": nodes,
            }
            if nodes
            else {}
        ),
        "rebuilt_from": old_name,
        "model_bytes": (output / "model.onnx").stat().st_size,
    }
    if unfused:
        new["quantization"]["unfused"] = unfused
    if split:
        new["quantization"]["split_attention"] = split
        new["quantization"]["opset"] = model_opset(output / "model.onnx")
    if seven:
        new["quantization"]["reduce_range"] = True
        new["quantization"]["seven_bit_weights"] = len(seven)
    new["files"] = {f: file_sha256(output / f) for f in ("model.onnx", "tokenizer.json")}
    new["parent_version"] = manifest["version"]
    new["rebuild_command"] = config.command_line
    new["created_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    new.pop("reference_profile", None)  # rebuilt below from the new model's outputs
    new.pop("performance", None)  # the source's benchmark figures are not this model's
    rows = [
        f"| {task} | {v['n']} | {v['source_int8_official_score']:.4f} | "
        f"{v['int8_official_score']:.4f} | {v['argmax_agreement_with_source']:.2%} |"
        for task, v in per_task.items()
    ]
    changes = []
    if nodes:
        changes.append(
            f"the {len(nodes)} MatMul/attention nodes it kept in fp32 are int8 here too "
            "(dynamic per-channel quantization, as every other node)"
        )
    if unfused:
        changes.append(
            f"its fused {_op_counts(unfused)} nodes are the ops they fused "
            "(Add + LayerNormalization, Add + Gelu): the same computation, faster on CPU"
        )
    if seven:
        changes.append(
            f"its {len(seven)} 8-bit matmul weights are 7-bit (round(q / 2), scale doubled), so "
            "x86 CPUs without VNNI, whose VPMADDUBSW saturates 8-bit products, compute them "
            "exactly: the same results on every x86 CPU"
        )
    if split:
        changes.append(
            f"its {_op_counts(split)} nodes are standard ops (QAttention: int8 Q, K and V "
            "MatMulIntegerToFloat + Attention, opset 23; Gelu: the opset-20 Gelu): the same "
            "computation, faster on CPU"
        )
    section = {
        "title": f"Rebuilt from {old_name}",
        "markdown": "\n".join(
            [
                f"The same trained weights as {old_name}; " + "; ".join(changes) + ". "
                "Validation, official metric:",
                "",
                f"| task | texts | {old_name} | this version | argmax agreement |",
                "| --- | --- | --- | --- | --- |",
                *rows,
                "",
                "Reproduce: `" + (config.command_line or "sentistream rebuild") + "`",
            ]
        ),
    }
    sections = [
        s
        for s in new.get("report_sections") or []
        if not s["title"].startswith(("Rebuilt from", "Requantized from"))
    ]
    new["report_sections"] = [*sections, section]
    (output / "manifest.json").write_text(json.dumps(new, indent=2) + "\n")
    load_manifest(output)
    _store_profile(output, texts_of[primary], f"{per_task[primary]['data']} (val)")
    final = json.loads((output / "manifest.json").read_text())
    (output / "README.md").write_text(render_model_card(final))
    return output
