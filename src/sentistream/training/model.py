"""The trainable model: one encoder, mean pooling, one linear head per task.

A checkpoint folder holds ``model.safetensors`` (encoder + heads), ``encoder_config.json``
(the transformers config), ``tokenizer.json`` and ``checkpoint.json`` (tasks, labels, max
length, cleaning version, provenance). It loads without any network and without pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

__all__ = ["MultiTaskModel", "load_checkpoint", "save_checkpoint"]


class MultiTaskModel(nn.Module):
    """Encoder -> masked mean pooling -> dropout -> one linear head per task.

    ``forward`` returns a tuple of logits, one ``[batch, n_labels]`` tensor per task in
    ``task_names`` order, so every task costs a single encoder pass.
    """

    def __init__(self, encoder: Any, tasks: dict[str, list[str]], dropout: float = 0.1) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a model needs at least one task")
        self.encoder = encoder
        self.tasks = {name: list(labels) for name, labels in tasks.items()}
        self.task_names = list(tasks)
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(hidden, len(labels)) for name, labels in tasks.items()}
        )

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled: torch.Tensor = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return pooled

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        pooled = self.dropout(self.pooled(input_ids, attention_mask))
        return tuple(self.heads[name](pooled) for name in self.task_names)


def save_checkpoint(
    model: MultiTaskModel, tokenizer: Tokenizer, folder: Path, meta: dict[str, Any]
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "encoder_config.json").write_text(model.encoder.config.to_json_string())
    tokenizer.save(str(folder / "tokenizer.json"))
    # checkpoint.json is written with sorted keys: ``task_order`` keeps the head order.
    info = {**meta, "tasks": model.tasks, "task_order": model.task_names}
    (folder / "checkpoint.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    return folder


def load_checkpoint(
    folder: Path, attn_implementation: str | None = None
) -> tuple[MultiTaskModel, Tokenizer, dict[str, Any]]:
    """Load a checkpoint folder; ``attn_implementation="eager"`` gives an attention graph that
    ONNX Runtime's optimizer can fuse (used by export)."""
    from transformers import AutoConfig, AutoModel

    for name in ("model.safetensors", "encoder_config.json", "tokenizer.json", "checkpoint.json"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder} is not a training checkpoint: {name} missing")
    meta = json.loads((folder / "checkpoint.json").read_text())
    config = AutoConfig.from_pretrained(str(folder / "encoder_config.json"))
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    encoder = AutoModel.from_config(config, **kwargs)  # type: ignore[no-untyped-call]
    order = meta.get("task_order") or list(meta["tasks"])
    tasks = {name: meta["tasks"][name] for name in order}
    model = MultiTaskModel(encoder, tasks, dropout=float(meta.get("dropout", 0.1)))
    state = load_file(str(folder / "model.safetensors"))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state)
    model.eval()
    return model, Tokenizer.from_file(str(folder / "tokenizer.json")), meta
