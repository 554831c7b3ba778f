"""Fine-tune a pretrained encoder with a classification head on a labelled dataset.

Short and linear: load data -> clean -> tokenize (fast Rust tokenizer, the same file the
served model uses) -> length-bucketed batches with per-batch padding -> AdamW with linear
warmup/decay, class-weighted cross-entropy, bf16 autocast -> evaluate on validation every
``eval_every`` steps with the task's official metric -> keep the best weights, stop early when
they stop improving -> write a checkpoint folder and return its path.
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
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from sentistream.metrics import classification_report
from sentistream.text import CLEANING_VERSION, DEFAULT_MAX_CHARS, clean_or_empty
from sentistream.training.backbone import DEFAULT_BACKBONE, backbone_info, load_backbone
from sentistream.training.data import fingerprint, load_train_val
from sentistream.training.model import MultiTaskModel, save_checkpoint

__all__ = ["FinetuneConfig", "finetune"]


class FinetuneConfig(BaseModel):
    """Everything that determines a fine-tuning run (saved inside the checkpoint)."""

    data: Path = Field(description="TweetEval task folder, or a CSV/TSV with text/label columns")
    output: Path = Field(description="checkpoint folder to write")
    task: str = Field("sentiment", description="task name (selects the official metric)")
    base_model: str = Field(DEFAULT_BACKBONE, description="packaged backbone, folder or hub id")
    val_data: Path | None = Field(None, description="separate validation file for CSV/TSV data")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="hold-out share when no val split")
    text_column: str = "text"
    label_column: str = "label"
    epochs: float = Field(3.0, gt=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = 0.01
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_length: int = Field(128, ge=8, le=512)
    max_chars: int = Field(DEFAULT_MAX_CHARS, ge=16)
    dropout: float = Field(0.1, ge=0, lt=1)
    class_weighting: str = Field("balanced", pattern="^(balanced|sqrt|none)$")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    eval_every: int = Field(0, ge=0, description="steps between evaluations (0: twice per epoch)")
    patience: int = Field(4, ge=1, description="evaluations without improvement before stopping")
    seed: int = 42
    bf16: bool = Field(True, description="bf16 autocast (CPU and GPU)")
    device: str = Field("auto", description="auto, cpu or cuda")
    max_train_examples: int | None = Field(None, description="subsample train (smoke tests)")
    max_val_examples: int | None = None
    threads: int | None = Field(None, description="torch CPU threads (default: all cores)")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def _encode(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [enc.ids for enc in tokenizer.encode_batch(texts)]


def _batches(
    lengths: list[int], batch_size: int, rng: random.Random, shuffle: bool
) -> list[list[int]]:
    """Length-bucketed batches: shuffle, sort within chunks of 50 batches, shuffle batches."""
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    if shuffle:
        rng.shuffle(batches)
    return batches


def _collate(
    ids: list[list[int]], idx: list[int], device: torch.device
) -> tuple[torch.Tensor, ...]:
    width = max(len(ids[i]) for i in idx)
    input_ids = np.zeros((len(idx), width), dtype=np.int64)
    mask = np.zeros((len(idx), width), dtype=np.int64)
    for row, i in enumerate(idx):
        seq = ids[i]
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)


def _class_weights(labels: list[int], n: int, mode: str) -> torch.Tensor:
    counts = np.bincount(np.asarray(labels), minlength=n).astype(np.float64)
    counts = np.maximum(counts, 1.0)
    if mode == "none":
        w = np.ones(n)
    else:
        w = counts.sum() / (n * counts)
        if mode == "sqrt":
            w = np.sqrt(w)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


@torch.no_grad()
def predict_logits(
    model: MultiTaskModel,
    ids: list[list[int]],
    device: torch.device,
    batch_size: int = 128,
    bf16: bool = False,
) -> list[np.ndarray[Any, Any]]:
    """Logits per task for pre-tokenized ids, in input order."""
    model.eval()
    outputs: list[list[np.ndarray[Any, Any]]] = [[] for _ in model.task_names]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, mask = _collate(ids, idx, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids, mask)
        for t, out in enumerate(logits):
            outputs[t].append(out.float().cpu().numpy())
    inverse = np.argsort(np.asarray(order))
    return [np.concatenate(chunks)[inverse] for chunks in outputs]


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def finetune(config: FinetuneConfig) -> Path:
    """Run one fine-tuning; returns the checkpoint folder (best validation weights)."""
    _seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _pick_device(config.device)
    train, val = load_train_val(
        config.data,
        val_path=config.val_data,
        val_fraction=config.val_fraction,
        seed=config.seed,
        text_column=config.text_column,
        label_column=config.label_column,
    )
    rng = random.Random(config.seed)
    if config.max_train_examples and len(train.texts) > config.max_train_examples:
        keep = sorted(rng.sample(range(len(train.texts)), config.max_train_examples))
        train = type(train)(
            [train.texts[i] for i in keep],
            [train.labels[i] for i in keep],
            train.label_names,
            train.source,
        )
    if config.max_val_examples and len(val.texts) > config.max_val_examples:
        val = type(val)(
            val.texts[: config.max_val_examples],
            val.labels[: config.max_val_examples],
            val.label_names,
            val.source,
        )
    labels = train.label_names
    encoder, tokenizer, source = load_backbone(config.base_model)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=config.max_length)

    t0 = time.perf_counter()
    train_ids = _encode(tokenizer, [clean_or_empty(t, config.max_chars) for t in train.texts])
    val_ids = _encode(tokenizer, [clean_or_empty(t, config.max_chars) for t in val.texts])
    print(
        f"tokenized {len(train_ids)} train / {len(val_ids)} val texts "
        f"in {time.perf_counter() - t0:.1f}s on {device}",
        flush=True,
    )

    model = MultiTaskModel(encoder, {config.task: labels}, dropout=config.dropout).to(device)
    lengths = [len(x) for x in train_ids]
    steps_per_epoch = math.ceil(len(train_ids) / config.batch_size)
    total_steps = max(1, int(steps_per_epoch * config.epochs))
    warmup = int(total_steps * config.warmup_ratio)
    eval_every = config.eval_every or max(1, steps_per_epoch // 2)

    no_decay = ("bias", "LayerNorm.weight", "layer_norm", "norm.weight")
    params = [
        {
            "params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
            "weight_decay": config.weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(params, lr=config.lr)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    weights = _class_weights(train.labels, len(labels), config.class_weighting).to(device)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    y = torch.tensor(train.labels, dtype=torch.long)

    best_score, best_state, best_step, history = -1.0, None, 0, []
    evals_without_gain, step, stop = 0, 0, False
    progress = tqdm(total=total_steps, desc=f"train {config.task}", unit="step", mininterval=2.0)
    epoch = 0
    while step < total_steps and not stop:
        for idx in _batches(lengths, config.batch_size, rng, shuffle=True):
            model.train()
            input_ids, mask = _collate(train_ids, idx, device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16):
                (logits,) = model(input_ids, mask)
            loss = loss_fn(logits.float(), y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", best=f"{best_score:.4f}")
            if step % eval_every == 0 or step == total_steps:
                (val_logits,) = predict_logits(model, val_ids, device, bf16=config.bf16)
                report = classification_report(
                    val.labels, val_logits.argmax(-1).tolist(), labels, config.task
                )
                score = report["official_score"]
                history.append(
                    {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 3),
                        "val_official": score,
                        "val_accuracy": report["accuracy"],
                    }
                )
                tqdm.write(
                    f"step {step} epoch {step / steps_per_epoch:.2f} "
                    f"val {report['official_metric']}={score:.4f} acc={report['accuracy']:.4f}"
                )
                if score > best_score:
                    best_score, best_step, evals_without_gain = score, step, 0
                    best_state = {
                        k: v.detach().clone().cpu() for k, v in model.state_dict().items()
                    }
                else:
                    evals_without_gain += 1
                    if evals_without_gain >= config.patience:
                        tqdm.write(f"early stop: no gain in {config.patience} evaluations")
                        stop = True
            if step >= total_steps or stop:
                break
        epoch += 1
    progress.close()
    assert best_state is not None
    model.load_state_dict(best_state)
    model.to("cpu")
    (val_logits,) = predict_logits(model, val_ids, torch.device("cpu"), bf16=False)
    final = classification_report(val.labels, val_logits.argmax(-1).tolist(), labels, config.task)
    meta = {
        "kind": "sentistream-checkpoint",
        "task": config.task,
        "primary_task": config.task,
        "max_length": config.max_length,
        "max_chars": config.max_chars,
        "cleaning_version": CLEANING_VERSION,
        "dropout": config.dropout,
        "base_model": config.base_model,
        "base_model_source": source,
        "backbone": backbone_info(encoder),
        "data": str(config.data),
        "data_fingerprint": fingerprint(config.data),
        "train_examples": len(train_ids),
        "val_examples": len(val_ids),
        "training_config": json.loads(config.model_dump_json()),
        "best_step": best_step,
        "steps": step,
        "history": history,
        "val_metrics": {config.task: final},
        "train_seconds": round(time.perf_counter() - t0, 1),
        "device": str(device),
    }
    out = save_checkpoint(model, tokenizer, config.output, meta)
    print(
        f"best val {final['official_metric']}={final['official_score']:.4f} "
        f"(step {best_step}); checkpoint -> {out}",
        flush=True,
    )
    return out
