"""Checkpoint -> ONNX fp32 -> graph optimisation -> int8 -> parity check -> model folder.

``export(config)`` writes ``<output>/model.onnx`` (int8: weights of every MatMul and the
embedding tables), ``tokenizer.json``, ``manifest.json`` and the model card ``README.md``, and
returns the folder. It refuses to publish a model whose int8 predictions agree with fp32 on
fewer than ``min_agreement`` of the verification texts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from sentistream.manifest import MANIFEST_FORMAT, file_sha256, load_manifest
from sentistream.metrics import classification_report
from sentistream.training.calibration import calibrate
from sentistream.training.card import render_model_card
from sentistream.training.data import LabelledSplit, load_split, load_train_val
from sentistream.training.finetune import encode_texts, source_specs
from sentistream.training.graph import (
    model_opset,
    split_quantized_attention,
    unfuse_slow_cpu_ops,
)
from sentistream.training.model import MultiTaskModel, load_checkpoint
from sentistream.training.quantize import quantize, quantize_to_agreement, run_onnx

__all__ = ["ExportConfig", "export"]


class ExportConfig(BaseModel):
    checkpoint: Path = Field(description="folder written by `sentistream train`")
    output: Path = Field(description="model version folder, e.g. models/tweet-sentiment/1")
    name: str | None = Field(None, description="model name (default: output's parent name)")
    version: str | None = Field(None, description="version (default: output folder name)")
    verify_data: Path | None = Field(None, description="labelled data for parity and metrics")
    verify_split: str = "val"
    min_agreement: float = Field(0.98, ge=0, le=1)
    keep_fp32: bool = False
    optimize: bool = Field(True, description="fuse attention/LayerNorm/GELU before quantizing")
    opset: int = 17
    calibration_split: str = Field(
        "train",
        description="split of --verify-data whose texts "
        "steer quantization (never the verification split)",
    )
    calibration_size: int = Field(3000, ge=0, description="calibration texts (0: no search)")
    max_fp32_nodes: int = Field(
        8, ge=0, description="most MatMuls kept fp32 to reach the agreement target"
    )
    parity_target: float | None = Field(
        None,
        ge=0,
        le=1,
        description="calibration agreement the fp32-node search aims at "
        "(default: min_agreement + 0.01); lower keeps more of the graph int8 (faster)",
    )
    gelu_approximation: bool = Field(
        False,
        description="replace the exact (erf) GELU by the tanh approximation (FastGelu): "
        "cheaper on CPU; verification measures the effect",
    )
    reduce_range: bool = Field(
        True,
        description="7-bit weights: the same results on CPUs without VNNI (no VPMADDUBSW "
        "saturation); 8-bit only for models that will run on VNNI/AMX CPUs alone",
    )
    verify_all_tasks: bool = Field(
        True, description="also verify the other tasks on the data they were trained on"
    )
    max_length: int | None = Field(
        None,
        ge=8,
        le=512,
        description="serving token budget (default: the training one); a longer budget lets "
        "long texts show more of themselves than training did - verification measures it",
    )
    unfuse: bool = Field(
        True,
        description="SkipLayerNormalization -> Add + LayerNormalization and BiasGelu -> Add + "
        "Gelu in the int8 graph (ORT's fused CPU kernels are slower; sentistream.training.graph)",
    )
    split_attention: bool = Field(
        True,
        description="QAttention -> int8 Q/K/V MatMulIntegerToFloat + standard Attention "
        "(opset 23), contrib Gelu -> standard Gelu in the int8 graph (faster on CPU, the same "
        "logits; sentistream.training.graph)",
    )
    calibrate: bool = Field(True, description="fit a softmax temperature per verified task")
    profile: bool = Field(
        True, description="store the drift reference profile (primary task's validation texts)"
    )
    report_sections: list[dict[str, str]] = Field(
        default_factory=list, description="extra model-card sections: {title, markdown}"
    )
    command_line: str | None = Field(None, description="training command for the model card")
    description: str = ""
    parent_version: str | None = None


def _verification_sets(
    config: ExportConfig, meta: dict[str, Any], primary: str, task_names: list[str]
) -> dict[str, Path]:
    """Labelled data per task: ``--verify-data`` for the primary task, and for the other tasks
    the data they were trained on: TweetEval folders (their split) or CSV/TSV sources (the
    training run's seeded hold-out)."""
    sets: dict[str, Path] = {}
    if config.verify_data is not None:
        sets[primary] = config.verify_data
    if config.verify_all_tasks:
        for task, info in (meta.get("task_data") or {}).items():
            path = Path(info["path"])
            if task not in task_names or task in sets:
                continue
            if (path / f"{config.verify_split}_text.txt").exists() or (
                not path.is_dir() and all(p.is_file() for p, _ in source_specs(path))
            ):
                sets[task] = path
    return {t: sets[t] for t in task_names if t in sets}


def _labelled_split(
    path: Path, split: str, meta: dict[str, Any], labels: list[str]
) -> tuple[LabelledSplit, dict[str, tuple[int, int]]]:
    """A TweetEval folder's split, or the validation hold-out of CSV/TSV source(s) exactly as
    the training run drew it (same seed and fraction); with the row range of each source."""
    if path.is_dir():
        data = load_split(path, split)
        return data, {str(path): (0, len(data.texts))}
    cfg = meta.get("training_config", {})
    holdout_seed = cfg.get("holdout_seed")
    texts: list[str] = []
    ys: list[int] = []
    ranges: dict[str, tuple[int, int]] = {}
    for source, _ in source_specs(path):
        _, val = load_train_val(
            source,
            val_fraction=float(cfg.get("val_fraction", 0.1)),
            seed=int(holdout_seed if holdout_seed is not None else cfg.get("seed", 42)),
            text_column=str(cfg.get("text_column", "text")),
            label_column=str(cfg.get("label_column", "label")),
        )
        ranges[str(source)] = (len(texts), len(texts) + len(val.texts))
        texts += val.texts
        ys += val.labels
    return LabelledSplit(texts, ys, labels, f"{path}[val]"), ranges


class _Wrapper(torch.nn.Module):
    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(input_ids, attention_mask))


def _export_fp32(model: MultiTaskModel, path: Path, opset: int) -> list[str]:
    outputs = [f"logits_{t}" for t in model.task_names]
    vocab = int(model.encoder.config.vocab_size)
    ids = torch.randint(min(5, vocab - 1), vocab, (2, 16), dtype=torch.long)
    mask = torch.ones_like(ids)
    dynamic = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
    }
    dynamic.update({o: {0: "batch"} for o in outputs})
    torch.onnx.export(
        _Wrapper(model).eval(),
        (ids, mask),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=outputs,
        dynamic_axes=dynamic,
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )
    return outputs


def _optimize(src: Path, dst: Path, model: MultiTaskModel, gelu_approximation: bool) -> bool:
    """ONNX Runtime's transformer fusions (attention, SkipLayerNorm, BiasGelu or FastGelu)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = model.encoder.config
    if getattr(cfg, "model_type", "") not in {"bert", "roberta", "distilbert", "xlm-roberta"}:
        shutil.copy(src, dst)
        return False
    options = FusionOptions("bert")
    options.enable_gelu_approximation = gelu_approximation
    opt = optimize_model(
        str(src),
        model_type="bert",
        num_heads=int(cfg.num_attention_heads),
        hidden_size=int(cfg.hidden_size),
        opt_level=1,
        use_gpu=False,
        optimization_options=options,
    )
    opt.save_model_to_file(str(dst))
    return True


def _calibration_ids(config: ExportConfig, tokenizer: Any, max_chars: int) -> list[list[int]]:
    """Token ids of up to ``calibration_size`` texts of the calibration split (seeded sample)."""
    import random

    from sentistream.text import clean_or_empty

    if config.verify_data is None or config.calibration_size == 0:
        return []
    try:
        split = load_split(config.verify_data, config.calibration_split)
    except FileNotFoundError:
        return []
    texts = split.texts
    if len(texts) > config.calibration_size:
        texts = random.Random(0).sample(texts, config.calibration_size)
    cleaned = [c for c in (clean_or_empty(t, max_chars) for t in texts) if c]
    return [e.ids for e in tokenizer.encode_batch(cleaned)]


def export(config: ExportConfig) -> Path:
    """Publish a checkpoint as a verified int8 ONNX model folder; returns the folder."""
    from sentistream.text import clean_or_empty

    model, tokenizer, meta = load_checkpoint(config.checkpoint, attn_implementation="eager")
    name = config.name or config.output.parent.name
    version = config.version or config.output.name
    if config.output.name != version:
        raise ValueError(f"output folder {config.output} must be named after version {version}")
    max_length = int(config.max_length or meta["max_length"])
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    task_names = model.task_names
    primary = meta.get("primary_task", task_names[0])
    config.output.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.fp32.onnx"
        outputs = _export_fp32(model, fp32, config.opset)
        optimized = Path(tmp) / "model.opt.onnx"
        fused = (
            _optimize(fp32, optimized, model, config.gelu_approximation)
            if config.optimize
            else False
        )
        if not config.optimize:
            shutil.copy(fp32, optimized)
        int8 = config.output / "model.onnx"
        pad_id = tokenizer.token_to_id("[PAD]") or 0
        calibration = _calibration_ids(config, tokenizer, int(meta.get("max_chars", 1000)))
        if calibration:
            quant_report = quantize_to_agreement(
                optimized,
                int8,
                calibration,
                outputs,
                pad_id,
                target=(
                    config.parity_target
                    if config.parity_target is not None
                    else min(1.0, config.min_agreement + 0.01)
                ),
                max_fp32_nodes=config.max_fp32_nodes,
                reduce_range=config.reduce_range,
            )
        else:
            quantize(optimized, int8, reduce_range=config.reduce_range)
            quant_report = {"calibration_texts": 0, "fp32_nodes": []}
        unfused = unfuse_slow_cpu_ops(int8, int8) if config.unfuse else {}
        split_ops = split_quantized_attention(int8, int8) if config.split_attention else {}
        if config.keep_fp32:
            shutil.copy(fp32, config.output / "model.fp32.onnx")

        verification: dict[str, Any] = {}
        metrics: dict[str, Any] = dict(meta.get("val_metrics", {}))
        temperature_fits: dict[str, Any] = {}
        truncation = str(meta.get("truncation", "head"))
        max_chars = int(meta.get("max_chars", 1000))
        per_task: dict[str, Any] = {}
        verified_sets = _verification_sets(config, meta, primary, task_names)
        profile_texts: dict[str, list[str]] = {}
        for task, path in verified_sets.items():
            split, ranges = _labelled_split(path, config.verify_split, meta, model.tasks[task])
            profile_texts[task] = split.texts
            texts = [clean_or_empty(t, max_chars) for t in split.texts]
            ids = encode_texts(tokenizer, texts, max_length, truncation)
            ref = run_onnx(fp32, ids, outputs, pad_id)
            q = run_onnx(int8, ids, outputs, pad_id)
            k = task_names.index(task)
            labels = model.tasks[task]
            agree = float((ref[k].argmax(-1) == q[k].argmax(-1)).mean())
            rep32 = classification_report(split.labels, ref[k].argmax(-1).tolist(), labels, task)
            rep8 = classification_report(split.labels, q[k].argmax(-1).tolist(), labels, task)
            per_task[task] = {
                "data": str(path),
                "split": config.verify_split,
                "n": len(ids),
                "argmax_agreement_int8_vs_fp32": round(agree, 5),
                "max_abs_logit_diff": float(np.abs(ref[k] - q[k]).max()),
                "fp32_official_score": round(rep32["official_score"], 5),
                "int8_official_score": round(rep8["official_score"], 5),
            }
            metrics[task] = {"int8": rep8, "fp32": rep32}
            if len(ranges) > 1:  # one task from several sources: a report per source too
                for source, (a, b) in ranges.items():
                    metrics[f"{task}:{Path(source).parent.name}"] = {
                        kind: classification_report(
                            split.labels[a:b], out[k][a:b].argmax(-1).tolist(), labels, task
                        )
                        for kind, out in (("int8", q), ("fp32", ref))
                    }
            if config.calibrate:
                temperature_fits[task] = calibrate(q[k], np.asarray(split.labels))
        if per_task:
            main = primary if primary in per_task else next(iter(per_task))
            verification = {"task": main, **per_task[main], "tasks": per_task}
            print(json.dumps(per_task, indent=2))
            agree = per_task[main]["argmax_agreement_int8_vs_fp32"]
            if agree < config.min_agreement:
                raise ValueError(
                    f"int8 agrees with fp32 on {agree:.4f} of {per_task[main]['n']} "
                    f"{main} texts, below {config.min_agreement}: not publishing"
                )
        if temperature_fits:
            print(json.dumps(temperature_fits, indent=2))

    tokenizer.save(str(config.output / "tokenizer.json"))
    files = {f: file_sha256(config.output / f) for f in ("model.onnx", "tokenizer.json")}
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "description": config.description,
        "primary_task": primary,
        "tasks": {
            t: {
                "labels": model.tasks[t],
                "output": f"logits_{t}",
                "temperature": temperature_fits.get(t, {}).get("temperature", 1.0),
            }
            for t in task_names
        },
        "max_length": max_length,
        "truncation": truncation,
        "cleaning_version": meta["cleaning_version"],
        "max_chars": int(meta.get("max_chars", 1000)),
        "signature": {
            "inputs": [
                {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
            ],
            "outputs": [
                {"name": f"logits_{t}", "dtype": "float32", "shape": ["batch", len(model.tasks[t])]}
                for t in task_names
            ],
        },
        "base_model": meta.get("base_model", "unknown"),
        "backbone": meta.get("backbone", {}),
        "training_data": {
            "path": meta.get("data"),
            "fingerprint": meta.get("data_fingerprint"),
            "train_examples": meta.get("train_examples"),
            "val_examples": meta.get("val_examples"),
        },
        "training": {
            "config": meta.get("training_config", {}),
            "best_step": meta.get("best_step"),
            "steps": meta.get("steps"),
            "seconds": meta.get("train_seconds"),
            "device": meta.get("device"),
            "history": meta.get("history", []),
            **{
                k: meta[k]
                for k in (
                    "task_data",
                    "examples_per_epoch",
                    "distilled_from",
                    "teacher_val_metrics",
                    "student_layers",
                    "layer_search",
                    "transfer_set",
                    "teachers",
                    "teacher_annealing",
                )
                if k in meta
            },
        },
        "training_command": config.command_line,
        "metrics": {
            "validation": metrics,
            "verification": verification,
            **({"calibration": temperature_fits} if temperature_fits else {}),
        },
        "quantization": {
            "method": "onnxruntime dynamic quantization, per-channel weights",
            "weights": (
                "int8 (MatMul/attention weights and embedding tables)"
                + (", 7-bit range (no saturation on non-VNNI CPUs)" if config.reduce_range else "")
            ),
            "reduce_range": config.reduce_range,
            "fp32_nodes": quant_report["fp32_nodes"],
            "calibration": {k: v for k, v in quant_report.items() if k != "fp32_nodes"},
            "activations": "uint8, dynamic per batch",
            "graph_fusions": fused,
            **({"unfused": unfused} if unfused else {}),
            **({"split_attention": split_ops} if split_ops else {}),
            "gelu": "tanh approximation (FastGelu)" if config.gelu_approximation else "exact",
            "opset": model_opset(config.output / "model.onnx"),
            "model_bytes": (config.output / "model.onnx").stat().st_size,
        },
        "files": files,
        "report_sections": config.report_sections,
        "parent_version": config.parent_version,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (config.output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    load_manifest(config.output)  # refuse to leave a folder we could not load ourselves
    if config.profile and primary in profile_texts:
        _store_profile(config.output, profile_texts[primary], f"{verified_sets[primary]} (val)")
        manifest = json.loads((config.output / "manifest.json").read_text())
    (config.output / "README.md").write_text(render_model_card(manifest))
    return config.output


def _store_profile(folder: Path, texts: list[str], data: str) -> None:
    """The drift reference profile of the exported int8 model on the primary task's
    validation texts, stored in the manifest (what the stream worker compares live traffic to)."""
    from sentistream.config import Settings
    from sentistream.drift import build_reference_profile, store_reference_profile
    from sentistream.runtime import load_onnx_classifier

    classifier = load_onnx_classifier(folder, Settings())
    profile = build_reference_profile(classifier, texts, data=data)
    store_reference_profile(folder, profile)
