"""The distillation transfer set and the teachers' view of it.

Transfer set: every task's labelled training texts (each source as the teacher's run split it:
the same hold-outs, so no validation text leaks in) plus unlabeled tweets, minus every validation
text and every text of the ``exclude`` sets (the check sets), cleaned and de-duplicated.

Teachers score it once. Each checkpoint teacher reads the texts with its own tokenizer and
length (an MPNet teacher and a MiniLM student do not share a vocabulary), in chunks saved as
they finish under a cache folder shared by runs, so an interrupted scoring resumes where it
stopped and the students of several seeds reuse one scoring. Several teachers form an ensemble:
the (weighted) mean of their probabilities.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sentistream.training.data import LabelledSplit

__all__ = [
    "TransferSet",
    "build_transfer_set",
    "ensemble_logits",
    "join_ensemble",
    "model_folder_ensemble",
    "run_splits",
    "score_checkpoint",
    "softmax",
]

Array = np.ndarray[Any, Any]
IGNORE = -100


def softmax(x: Array) -> Array:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def ensemble_logits(
    per_teacher: list[list[Array]], weights: list[float] | None = None
) -> list[Array]:
    """Log of the weighted mean probability of several teachers, per task."""
    if not per_teacher:
        raise ValueError("no teachers")
    w = np.asarray(weights if weights is not None else [1.0] * len(per_teacher), dtype=np.float64)
    if len(w) != len(per_teacher) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"teacher weights {list(w)} do not fit {len(per_teacher)} teachers")
    w = w / w.sum()
    out = []
    for k in range(len(per_teacher[0])):
        probs = sum(
            wi * softmax(t[k].astype(np.float64)) for wi, t in zip(w, per_teacher, strict=True)
        )
        out.append(np.log(np.clip(probs, 1e-9, 1.0)).astype(np.float32))
    return out


def join_ensemble(logits: Array, n_models: int, probs: Array) -> Array:
    """Log of the mean probability once one more model (``probs``) joins an ensemble of
    ``n_models`` whose mean probability is ``softmax(logits)``."""
    mixed = (softmax(logits) * n_models + probs) / (n_models + 1)
    out: Array = np.log(np.clip(mixed, 1e-9, 1.0)).astype(np.float32)
    return out


def model_folder_ensemble(
    folders: list[Path], tasks: dict[str, list[str]], texts: list[str]
) -> list[Array]:
    """Ensemble logits (log mean probability) of model-folder teachers, every task, one ONNX
    pass per teacher over the (cleaned) texts."""
    from sentistream.training.teachers import model_folder_logits

    sums: list[Array] = []
    for folder in folders:
        probs = [softmax(o) for o in model_folder_logits(folder, tasks, texts)]
        sums = probs if not sums else [a + b for a, b in zip(sums, probs, strict=True)]
    return [np.log(np.clip(p / len(folders), 1e-9, 1.0)).astype(np.float32) for p in sums]


def _digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _save(path: Path, logits: list[Array]) -> None:
    arrays: dict[str, Any] = {f"logits_{i}": x for i, x in enumerate(logits)}
    arrays["tasks"] = np.asarray(len(logits))
    np.savez(path, **arrays)


def score_checkpoint(
    folder: Path,
    texts: list[str],
    cache_dir: Path,
    *,
    device: Any = None,
    bf16: bool = False,
    chunk: int = 4096,
) -> list[Array]:
    """Logits of the training checkpoint at ``folder`` for every task (its head order) over the
    cleaned ``texts``, with its own tokenizer, max length and truncation. Chunks are saved under
    ``cache_dir`` as they finish (resumable) and the whole result is cached there, keyed by the
    checkpoint's weights and the texts."""
    import torch

    from sentistream.training.finetune import encode_texts, pick_device, predict_logits
    from sentistream.training.model import load_checkpoint

    weights = folder / "model.safetensors"
    stat = weights.stat()
    ident = hashlib.sha256(
        f"{folder.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    ).hexdigest()[:12]
    key = f"{ident}-{_digest(texts)}"
    final = cache_dir / f"scores-{key}.npz"
    if final.exists():
        with np.load(final) as z:
            return [np.asarray(z[f"logits_{i}"]) for i in range(int(z["tasks"]))]
    model, tokenizer, meta = load_checkpoint(folder)
    tokenizer.no_padding()
    device = device or pick_device("auto")
    model.to(device)
    parts = cache_dir / f"scores-{key}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    (parts / "teacher.json").write_text(json.dumps({"teacher": str(folder), "n": len(texts)}))
    max_length = int(meta.get("max_length", 128))
    truncation = str(meta.get("truncation", "head"))
    started, done = time.perf_counter(), 0
    chunks: list[list[Array]] = []
    for n, start in enumerate(range(0, len(texts), chunk)):
        path = parts / f"chunk-{n:05d}.npz"
        if path.exists():
            with np.load(path) as z:
                chunks.append([np.asarray(z[f"logits_{i}"]) for i in range(int(z["tasks"]))])
            continue
        ids = encode_texts(tokenizer, texts[start : start + chunk], max_length, truncation)
        with torch.no_grad():
            logits = predict_logits(model, ids, device, batch_size=128, bf16=bf16)
        tmp = parts / f"chunk-{n:05d}.tmp.npz"
        _save(tmp, logits)
        tmp.replace(path)
        chunks.append(logits)
        done += len(ids)
        rate = done / max(1e-9, time.perf_counter() - started)
        print(
            f"teacher {folder.name}: {min(start + chunk, len(texts))}/{len(texts)} texts "
            f"({rate:.0f}/s)",
            flush=True,
        )
    result = [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
    tmp = cache_dir / f"scores-{key}.tmp.npz"
    _save(tmp, result)
    tmp.replace(final)
    for path in parts.iterdir():
        path.unlink()
    parts.rmdir()
    return result


def run_splits(
    path: Path, run_config: dict[str, Any]
) -> tuple[LabelledSplit, LabelledSplit, dict[str, tuple[int, int]]]:
    """Train and validation of one task exactly as a run with ``run_config`` (a checkpoint's
    ``training_config``) split them: TweetEval's own splits, the same seeded hold-outs of the
    other sources, with each source's validation row range."""
    from sentistream.training.finetune import FinetuneConfig, _load_sources

    keys = {"val_fraction", "seed", "holdout_seed", "text_column", "label_column", "label_names"}
    fields = {k: v for k, v in run_config.items() if k in keys}
    config = FinetuneConfig(output=Path(), **fields)
    return _load_sources(config, path, True, random.Random(config.seed))


@dataclass
class TransferSet:
    """Cleaned transfer texts with gold labels per task (``IGNORE`` where none), how many are
    labelled, and each task's validation split (cleaned texts, labels, per-source ranges)."""

    texts: list[str]
    labels: list[list[int]]
    n_labelled: int
    val: dict[str, tuple[list[str], list[int], dict[str, tuple[int, int]]]]
    n_excluded: int = 0


def build_transfer_set(
    task_paths: dict[str, Path],
    task_labels: dict[str, list[str]],
    run_config: dict[str, Any],
    *,
    unlabeled: list[Path],
    max_unlabeled: int | None,
    exclude: list[Path],
    max_chars: int,
    seed: int,
    max_train_examples: int | None = None,
) -> TransferSet:
    """The transfer set of a teacher whose run trained ``task_paths`` with ``run_config`` (its
    ``training_config``: hold-out fraction and seed, columns), see the module doc."""
    from sentistream.text import clean_or_empty
    from sentistream.training.finetune import excluded_texts
    from sentistream.training.unlabeled import load_unlabeled

    banned = excluded_texts(exclude, max_chars)
    rng = random.Random(seed)
    names = list(task_labels)
    texts: list[str] = []
    labels: list[list[int]] = []
    index: dict[str, int] = {}
    val: dict[str, tuple[list[str], list[int], dict[str, tuple[int, int]]]] = {}
    pending: list[tuple[int, str, int]] = []
    for k, name in enumerate(names):
        train, valid, ranges = run_splits(task_paths[name], run_config)
        if train.label_names != task_labels[name]:
            raise ValueError(
                f"{task_paths[name]}: labels {train.label_names} differ from the teacher's "
                f"{task_labels[name]}"
            )
        val[name] = ([clean_or_empty(t, max_chars) for t in valid.texts], valid.labels, ranges)
        keep = list(range(len(train.texts)))
        if max_train_examples and len(keep) > max_train_examples:
            keep = sorted(rng.sample(keep, max_train_examples))
        pending += [(k, clean_or_empty(train.texts[i], max_chars), train.labels[i]) for i in keep]
    held_out = {t for texts_, _, _ in val.values() for t in texts_} | banned
    n_excluded = 0
    for k, text, y in pending:
        if text in held_out:
            n_excluded += 1
            continue
        row = index.get(text)
        if row is None:
            row = index[text] = len(texts)
            texts.append(text)
            labels.append([IGNORE] * len(names))
        labels[row][k] = y
    n_labelled = len(texts)
    extra = (
        load_unlabeled(
            unlabeled,
            exclude=held_out | set(index),
            max_chars=max_chars,
            limit=max_unlabeled,
            seed=seed,
        )
        if unlabeled
        else []
    )
    texts.extend(extra)
    labels.extend([[IGNORE] * len(names)] * len(extra))
    return TransferSet(texts, labels, n_labelled, val, n_excluded)
