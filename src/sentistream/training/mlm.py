"""Domain adaptation: continue masked-language-model pretraining of the backbone on tweets.

The output folder is a plain encoder folder (``config.json`` + safetensors + ``tokenizer.json``)
that ``sentistream train --base-model FOLDER`` fine-tunes like the packaged backbone. Dynamic
masking (BERT's 15%, of which 80% [MASK], 10% a random token, 10% unchanged) is redrawn every
batch; batches are length-bucketed like fine-tuning's (about half the padded tokens of random
batches); the vocabulary projection runs only on masked positions, which makes a step about a
third cheaper than scoring every position.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from tqdm import tqdm

from sentistream.text import DEFAULT_MAX_CHARS
from sentistream.training.backbone import DEFAULT_BACKBONE, resolve_backbone
from sentistream.training.data import fingerprint
from sentistream.training.finetune import (
    bucketed_batches,
    collate,
    pick_device,
    resolve_bf16,
    warmup_linear_decay,
)
from sentistream.training.unlabeled import load_unlabeled, validation_texts

__all__ = ["MlmConfig", "mask_tokens", "pretrain_mlm"]


class MlmConfig(BaseModel):
    """Everything that determines a domain-adaptation run (saved next to the weights)."""

    data: list[Path] = Field(description="JSONL stream files, TweetEval folders (train split)")
    output: Path = Field(description="encoder folder to write")
    base_model: str = Field(DEFAULT_BACKBONE, description="packaged backbone, folder or hub id")
    exclude_val: list[Path] = Field(
        default_factory=list, description="TweetEval folders whose val texts are left out"
    )
    steps: int = Field(1500, ge=1)
    head_steps: int = Field(
        200, ge=0, description="first steps train only the (new) MLM head, encoder frozen"
    )
    batch_size: int = Field(64, ge=1)
    lr: float = Field(5e-5, gt=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = 0.01
    mask_prob: float = Field(0.15, gt=0, lt=1)
    max_length: int = Field(64, ge=8, le=512)
    max_chars: int = Field(DEFAULT_MAX_CHARS, ge=16)
    max_texts: int | None = None
    seed: int = 42
    bf16: bool | None = Field(None, description="bf16 autocast; default: where the hardware has it")
    device: str = "auto"
    threads: int | None = None


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: list[int],
    mask_id: int,
    vocab_size: int,
    prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input ids, labels with -100 where nothing is predicted); at least one masked
    position per batch, never a special or padding token."""
    labels = input_ids.clone()
    candidates = attention_mask.bool()
    for sid in special_ids:
        candidates &= input_ids != sid
    draw = torch.rand(input_ids.shape, generator=generator) < prob
    chosen = draw & candidates
    if not bool(chosen.any()) and bool(candidates.any()):
        first = candidates.nonzero()[0]
        chosen[first[0], first[1]] = True
    labels[~chosen] = -100
    masked = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=generator)
    masked[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = torch.randint(vocab_size, input_ids.shape, generator=generator)[swap]
    return masked, labels


def _mlm_loss(
    model: Any,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    freeze_encoder: bool = False,
) -> Any:
    if hasattr(model, "bert") and hasattr(model, "cls"):
        with torch.set_grad_enabled(not freeze_encoder):
            hidden = model.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        picked = labels != -100
        logits = model.cls(hidden[picked])
        return torch.nn.functional.cross_entropy(logits.float(), labels[picked])
    return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss


def pretrain_mlm(config: MlmConfig) -> Path:
    from tokenizers import Tokenizer
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    config = config.model_copy(update={"bf16": resolve_bf16(config.bf16, device)})
    source = resolve_backbone(config.base_model)
    model = AutoModelForMaskedLM.from_pretrained(source, use_safetensors=True).float().to(device)
    local = Path(source)
    if local.is_dir() and (local / "tokenizer.json").exists():
        tokenizer = Tokenizer.from_file(str(local / "tokenizer.json"))
    else:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True).backend_tokenizer
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=config.max_length)

    exclude = validation_texts(config.exclude_val, config.max_chars)
    texts = load_unlabeled(
        config.data, exclude=exclude, max_chars=config.max_chars, limit=config.max_texts
    )
    if not texts:
        raise ValueError("no unlabeled texts to adapt on")
    ids = [e.ids for e in tokenizer.encode_batch(texts)]
    special = [
        i
        for i in (tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "<s>", "</s>"))
        if i is not None
    ]
    mask_id = tokenizer.token_to_id("[MASK]")
    if mask_id is None:
        mask_id = tokenizer.token_to_id("<mask>")
    if mask_id is None:
        raise ValueError("the tokenizer has no [MASK] token")
    print(
        f"{len(texts)} unlabeled texts ({len(exclude)} validation texts excluded); "
        f"{config.steps} steps of {config.batch_size} on {device}",
        flush=True,
    )

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    warmup = int(config.steps * config.warmup_ratio)

    scheduler = warmup_linear_decay(optimizer, config.steps, warmup)
    rng = random.Random(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    vocab = int(model.config.vocab_size)
    batches: list[list[int]] = []
    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    for step in tqdm(range(config.steps), desc="mlm", unit="step", mininterval=2.0):
        if not batches:  # a new pass: shuffled, length-bucketed (little padding)
            fresh = list(range(len(ids)))
            rng.shuffle(fresh)
            batches = bucketed_batches(fresh, lambda i: len(ids[i]), config.batch_size, rng)
        idx = batches.pop()
        input_ids, mask = collate([ids[i] for i in idx], torch.device("cpu"))
        masked, labels = mask_tokens(
            input_ids, mask, special, mask_id, vocab, config.mask_prob, gen
        )
        with torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=bool(config.bf16)
        ):
            loss = _mlm_loss(
                model,
                masked.to(device),
                mask.to(device),
                labels.to(device),
                freeze_encoder=step < config.head_steps,
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.item()))
        if (step + 1) % 100 == 0:
            tqdm.write(f"step {step + 1} mlm loss {np.mean(losses[-100:]):.4f}")

    out = config.output
    out.mkdir(parents=True, exist_ok=True)
    model.base_model.save_pretrained(out, safe_serialization=True)
    tokenizer.no_truncation()
    tokenizer.save(str(out / "tokenizer.json"))
    window = max(1, min(100, len(losses) // 5))  # a fifth of a short run
    first, last = np.mean(losses[:window]), np.mean(losses[-window:])
    report = {
        "kind": "sentistream-mlm",
        "base_model": config.base_model,
        "config": json.loads(config.model_dump_json()),
        "texts": len(texts),
        "data_fingerprints": {str(p): fingerprint(p) for p in config.data},
        "loss_start": round(float(first), 4),
        "loss_end": round(float(last), 4),
        "epochs_over_texts": round(config.steps * config.batch_size / len(texts), 3),
        "seconds": round(time.perf_counter() - t0, 1),
        "device": str(device),
        "perplexity_end": round(math.exp(min(20.0, float(last))), 2),
    }
    (out / "adaptation.json").write_text(json.dumps(report, indent=2))
    print(f"mlm loss {first:.3f} -> {last:.3f}; encoder -> {out}", flush=True)
    return out
