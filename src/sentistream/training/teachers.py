"""Single-task teachers for multi-task training ("Born-Again Multi-task Networks", Clark et al.
2019): each taught task's training texts are scored once by a teacher that was trained on that
task alone, and the multi-task model learns from a mix of the teacher's probabilities and the gold
label whose gold share grows linearly from 0 to 1 over training (teacher annealing): early on the
student imitates the single-task specialists, by the end it is trained on the gold labels alone.

A teacher is a training checkpoint folder (``sentistream train`` output, torch) or a served model
folder (``model.onnx`` + ``manifest.json``, ONNX Runtime); it must have the task with the same
labels. Probabilities are a plain softmax of the logits (no calibration temperature). They are
cached in ``<output>/teacher_<task>.npz``, keyed by the teacher folder and the texts, so a resumed
run does not score again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "is_model_folder",
    "model_folder_logits",
    "parse_teacher_specs",
    "teacher_probabilities",
]

Array = np.ndarray[Any, Any]


def parse_teacher_specs(specs: list[str]) -> dict[str, Path]:
    """``["sentiment=runs/single-sentiment", ...]`` -> ``{"sentiment": Path(...)}``."""
    out: dict[str, Path] = {}
    for spec in specs:
        task, sep, path = spec.partition("=")
        if not sep or not task.strip() or not path.strip():
            raise ValueError(f"teacher spec {spec!r}: expected TASK=FOLDER")
        if task.strip() in out:
            raise ValueError(f"two teachers for task {task.strip()!r}")
        out[task.strip()] = Path(path.strip())
    return out


def _softmax(x: Array) -> Array:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def _checkpoint_logits(
    folder: Path, task: str, labels: list[str], texts: list[str], max_length: int
) -> Array:
    import torch

    from sentistream.training.finetune import encode_texts, pick_device, predict_logits
    from sentistream.training.model import load_checkpoint

    model, tokenizer, meta = load_checkpoint(folder)
    _check_task(folder, task, labels, model.tasks)
    tokenizer.no_padding()
    ids = encode_texts(tokenizer, texts, max_length, str(meta.get("truncation", "head")))
    device = pick_device("auto")
    with torch.no_grad():
        logits = predict_logits(model.to(device), ids, device, batch_size=256)
    return np.asarray(logits[model.task_names.index(task)], dtype=np.float32)


def is_model_folder(path: Path) -> bool:
    """A served model folder (ONNX + manifest) rather than a training checkpoint."""
    return (path / "manifest.json").exists() and (path / "model.onnx").exists()


def model_folder_logits(folder: Path, tasks: dict[str, list[str]], texts: list[str]) -> list[Array]:
    """Logits of a served model folder (ONNX Runtime) for ``tasks`` (name -> the labels the
    caller expects, checked against the manifest) over ``texts`` (already cleaned), one pass
    for every task."""
    from tokenizers import Tokenizer

    from sentistream.manifest import load_manifest
    from sentistream.training.finetune import encode_texts
    from sentistream.training.quantize import run_onnx

    manifest = load_manifest(folder)
    have = {t: s.labels for t, s in manifest.tasks.items()}
    for task, labels in tasks.items():
        _check_task(folder, task, labels, have)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    ids = encode_texts(tokenizer, texts, manifest.max_length, manifest.truncation)
    pads = [tokenizer.token_to_id(t) for t in ("[PAD]", "<pad>")]
    pad_id = next((p for p in pads if p is not None), 0)
    outputs = [manifest.tasks[t].output for t in tasks]
    return [
        np.asarray(x, dtype=np.float32)
        for x in run_onnx(folder / "model.onnx", ids, outputs, pad_id)
    ]


def _check_task(folder: Path, task: str, labels: list[str], have: dict[str, list[str]]) -> None:
    if task not in have:
        raise ValueError(f"teacher {folder} has no task {task!r} (it has {sorted(have)})")
    if list(have[task]) != list(labels):
        raise ValueError(f"teacher {folder}: {task} labels {have[task]} differ from {labels}")


def teacher_probabilities(
    folder: Path,
    task: str,
    labels: list[str],
    texts: list[str],
    max_length: int,
    cache_dir: Path,
) -> Array:
    """``[len(texts), len(labels)]`` probabilities of the teacher at ``folder`` for ``task``
    (``texts`` already cleaned), cached under ``cache_dir``."""
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]
    key = json.dumps({"teacher": str(folder.resolve()), "texts": digest, "n": len(texts)})
    cache = cache_dir / f"teacher_{task}.npz"
    if cache.exists():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                return np.asarray(z["probs"], dtype=np.float32)
    if is_model_folder(folder):
        [logits] = model_folder_logits(folder, {task: labels}, texts)
    elif (folder / "checkpoint.json").exists():
        logits = _checkpoint_logits(folder, task, labels, texts, max_length)
    else:
        raise FileNotFoundError(
            f"teacher {folder} is neither a training checkpoint nor a model folder"
        )
    probs = _softmax(logits.astype(np.float64)).astype(np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, key=np.asarray(key), probs=probs)
    return probs
