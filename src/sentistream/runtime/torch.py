"""PyTorch/transformers backend (needs the ``[train]`` extra).

Loads a sentistream training checkpoint folder, or any Hugging Face sequence-classification
model: a local folder, or a hub id when the machine is online. Safetensors only. Uses a GPU
when one is present. This module is never imported on the default (ONNX) serving path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from sentistream.config import TORCH_PRECISIONS as PRECISIONS
from sentistream.errors import ModelLoadError
from sentistream.runtime import torch_model_ref
from sentistream.runtime.base import FloatArray, IdArray

__all__ = ["PRECISIONS", "TorchBackend", "load_torch_model", "resolve_precision"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """Check ``precision`` against the device: tf32, fp16 and bf16 need a CUDA device (a CPU
    runs them emulated or not at all), bf16 one that has it.

    fp32 is the default everywhere: on an H200 the shipped 22M-parameter model ran no faster in
    fp16, bf16 or tf32 (4,945 / 4,919 / 5,399 vs 4,792 posts/s, run-to-run spread wider than
    the differences), since its GPU forward is a fifth of a classify call and the host's text
    cleaning, tokenizing and result building the rest (docs/performance.md, accelerator path).
    Larger models are where the lower precisions pay.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device (this one is {device})")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16 support: use fp16 or fp32")
    return precision


class TorchBackend:
    """A torch module on one device. ``precision``: fp32, tf32 (fp32 weights, TF32 matmuls),
    fp16 or bf16 (weights and activations; logits come back as float32)."""

    name = "torch"

    def __init__(
        self,
        model: Any,
        task_names: list[str],
        device: str | None = None,
        multi_head: bool = True,
        precision: str = "fp32",
    ) -> None:
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.task_names = task_names
        self.multi_head = multi_head

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @torch.inference_mode()
    def forward(self, input_ids: IdArray, attention_mask: IdArray) -> dict[str, FloatArray]:
        ids = torch.from_numpy(input_ids).to(self.device, non_blocking=True)
        mask = torch.from_numpy(attention_mask).to(self.device, non_blocking=True)
        if self.on_gpu and self.precision in ("fp32", "tf32"):
            # A process-wide torch switch: set per call so each backend gets what it asked for.
            torch.backends.cuda.matmul.allow_tf32 = self.precision == "tf32"
        if self.multi_head:
            outs = self.model(ids, mask)
        else:
            outs = (self.model(input_ids=ids, attention_mask=mask).logits,)
        return {
            t: np.asarray(o.float().cpu().numpy(), dtype=np.float32)
            for t, o in zip(self.task_names, outs, strict=True)
        }


def load_torch_model(
    source: str, task: str = "sentiment", precision: str = "fp32", device: str | None = None
) -> dict[str, Any]:
    """Return backend, tokenizer, tasks, primary task and max length for ``source``.

    ``source`` is a sentistream checkpoint folder (``checkpoint.json``), a local Hugging Face
    model folder, or a Hugging Face hub id (downloaded when online).
    """
    path = Path(source).expanduser()
    name, version = torch_model_ref(source)
    if (path / "checkpoint.json").is_file():
        from sentistream.training.model import load_checkpoint

        model, ck_tokenizer, meta = load_checkpoint(path)
        return {
            "backend": TorchBackend(model, model.task_names, device=device, precision=precision),
            "tokenizer": ck_tokenizer,
            "tasks": model.tasks,
            "primary_task": meta.get("primary_task", model.task_names[0]),
            "max_length": int(meta.get("max_length", 128)),
            "max_chars": int(meta.get("max_chars", 1000)),
            "truncation": str(meta.get("truncation", "head")),
            "name": name,
            "version": version,
            "temperatures": meta.get("temperatures"),
        }
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        hf_model = AutoModelForSequenceClassification.from_pretrained(source, use_safetensors=True)
        hf_tok = AutoTokenizer.from_pretrained(source, use_fast=True)
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors
        raise ModelLoadError(f"cannot load Hugging Face model {source!r}: {exc}") from exc
    tokenizer: Tokenizer = hf_tok.backend_tokenizer
    id2label = hf_model.config.id2label
    labels = [str(id2label[i]).lower() for i in range(len(id2label))]
    max_len = int(min(getattr(hf_tok, "model_max_length", 512) or 512, 512))
    return {
        "backend": TorchBackend(
            hf_model, [task], device=device, multi_head=False, precision=precision
        ),
        "tokenizer": tokenizer,
        "tasks": {task: labels},
        "primary_task": task,
        "max_length": max_len,
        "max_chars": 5000,
        "name": name,
        "version": version,
    }
