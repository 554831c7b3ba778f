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

from sentistream.errors import ModelLoadError
from sentistream.runtime.base import FloatArray, IdArray

__all__ = ["TorchBackend", "load_torch_model"]


class TorchBackend:
    name = "torch"

    def __init__(
        self, model: Any, task_names: list[str], device: str | None = None, multi_head: bool = True
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.task_names = task_names
        self.multi_head = multi_head

    @torch.inference_mode()
    def forward(self, input_ids: IdArray, attention_mask: IdArray) -> dict[str, FloatArray]:
        ids = torch.from_numpy(input_ids).to(self.device)
        mask = torch.from_numpy(attention_mask).to(self.device)
        if self.multi_head:
            outs = self.model(ids, mask)
        else:
            outs = (self.model(input_ids=ids, attention_mask=mask).logits,)
        return {
            t: np.asarray(o.float().cpu().numpy(), dtype=np.float32)
            for t, o in zip(self.task_names, outs, strict=True)
        }


def load_torch_model(source: str, task: str = "sentiment") -> dict[str, Any]:
    """Return backend, tokenizer, tasks, primary task and max length for ``source``.

    ``source`` is a sentistream checkpoint folder (``checkpoint.json``), a local Hugging Face
    model folder, or a Hugging Face hub id (downloaded when online).
    """
    path = Path(source).expanduser()
    if (path / "checkpoint.json").is_file():
        from sentistream.training.model import load_checkpoint

        model, ck_tokenizer, meta = load_checkpoint(path)
        return {
            "backend": TorchBackend(model, model.task_names),
            "tokenizer": ck_tokenizer,
            "tasks": model.tasks,
            "primary_task": meta.get("primary_task", model.task_names[0]),
            "max_length": int(meta.get("max_length", 128)),
            "max_chars": int(meta.get("max_chars", 1000)),
            "truncation": str(meta.get("truncation", "head")),
            "name": path.name,
            "version": "0",
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
        "backend": TorchBackend(hf_model, [task], multi_head=False),
        "tokenizer": tokenizer,
        "tasks": {task: labels},
        "primary_task": task,
        "max_length": max_len,
        "max_chars": 5000,
        "name": source.rstrip("/").split("/")[-1].lower(),
        "version": "0",
    }
