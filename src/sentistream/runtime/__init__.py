"""The classifier core and its backends.

``load_classifier(settings)`` builds the :class:`Classifier` the CLI, servers and workers use:
from the model repository with ONNX Runtime by default, or with PyTorch/transformers
(``backend="torch"``) for a training checkpoint or any Hugging Face model id.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from sentistream.runtime.base import (
    Backend,
    Classifier,
    Prediction,
    TaskPrediction,
    configure_tokenizer,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from sentistream.config import Settings
    from sentistream.manifest import Manifest

__all__ = [
    "Backend",
    "Classifier",
    "Prediction",
    "TaskPrediction",
    "load_classifier",
    "load_onnx_classifier",
    "shared_tokenizer",
    "torch_model_ref",
]

# Tokenizers in use in this process, by (tokenizer.json's SHA-256, truncation, max_length).
# Weak values: an entry goes when the last model holding it is unloaded.
_tokenizers: weakref.WeakValueDictionary[tuple[str, str, int], Tokenizer] = (
    weakref.WeakValueDictionary()
)
_tokenizers_lock = threading.Lock()


def shared_tokenizer(folder: Path, manifest: Manifest) -> Tokenizer:
    """The tokenizer of the model version in ``folder``, configured for it, and the same object
    for every loaded model whose ``tokenizer.json`` has the same bytes (the manifest's verified
    SHA-256) and the same truncation. A server with several models or versions of one backbone
    keeps one copy and loads it once: a MiniLM WordPiece tokenizer takes ~7.5 MB and 25-30 ms to
    load; the every-model server, three of whose four models share one, answers first 0.73 ->
    0.69 s with a peak RSS of 252 -> 247 MB (6 paired cold starts; docs/performance.md). Safe
    to share: the classifier only encodes with it, and a later model with the same key finds it
    already configured (:func:`~sentistream.runtime.base.configure_tokenizer` changes nothing
    then)."""
    from tokenizers import Tokenizer

    digest = manifest.files.get("tokenizer.json")
    if not digest:
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    key = (digest, manifest.truncation, manifest.max_length)
    with _tokenizers_lock:
        tokenizer = _tokenizers.get(key)
        if tokenizer is None:
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            configure_tokenizer(tokenizer, manifest.truncation, manifest.max_length)
            _tokenizers[key] = tokenizer
    return tokenizer


def torch_model_ref(source: str) -> tuple[str, str]:
    """Name and version a torch-backend model answers under, read without loading it: a
    checkpoint's recorded ones (``sentistream dequantize`` keeps the int8 model's), else the
    folder or hub id's last part as a valid model name, version "0"."""
    path = Path(source).expanduser()
    meta: dict[str, object] = {}
    if (path / "checkpoint.json").is_file():
        meta = json.loads((path / "checkpoint.json").read_text())
    base = path.name if meta else source.rstrip("/").split("/")[-1]
    name = re.sub(r"[^a-z0-9._-]+", "-", str(meta.get("name", base)).lower()).strip("-._")
    version = str(meta.get("version", "0"))
    return name or "model", version if version.isdigit() else "0"


def load_onnx_classifier(
    folder: Path, settings: Settings, manifest: Manifest | None = None
) -> Classifier:
    """A classifier over one validated model version folder. ``manifest``: the folder's
    manifest when the caller has already read and verified it (its files are hashed once)."""
    from sentistream.manifest import load_manifest
    from sentistream.runtime.onnx import OnnxBackend

    manifest = manifest or load_manifest(folder)
    backend = OnnxBackend(
        folder / "model.onnx",
        {task: spec.output for task, spec in manifest.tasks.items()},
        intra_op_threads=settings.resolved_intra_op_threads(),
        inter_op_threads=settings.inter_op_threads,
        providers=settings.providers or None,
        x64_quant_precision=settings.x64_quant_precision,
    )
    return Classifier(
        backend,
        shared_tokenizer(folder, manifest),
        tasks={task: spec.labels for task, spec in manifest.tasks.items()},
        primary_task=manifest.primary_task,
        max_length=manifest.max_length,
        max_chars=manifest.max_chars,
        truncation=manifest.truncation,
        name=manifest.name,
        version=manifest.version,
        temperatures={task: spec.temperature for task, spec in manifest.tasks.items()},
        batch_size=settings.resolved_batch_size(),
        max_batch_tokens=settings.resolved_max_batch_tokens(),
        max_text_chars=settings.max_text_chars,
        lanes=settings.resolved_lanes(),
    )


def load_classifier(settings: Settings) -> Classifier:
    """The classifier named by ``settings.model`` with ``settings.backend``."""
    if settings.backend == "torch":
        from sentistream.repository import ModelRepository
        from sentistream.runtime.torch import load_torch_model

        source = settings.model
        repo = ModelRepository(settings.model_repository)
        if not Path(source).expanduser().exists() and repo.has(source):
            raise ValueError(
                "the torch backend loads a training checkpoint or a Hugging Face model; "
                f"{source!r} is an ONNX model in the repository (use --backend onnx)"
            )
        parts = load_torch_model(source, precision=settings.torch_precision)
        on_gpu = parts["backend"].on_gpu
        return Classifier(
            parts["backend"],
            parts["tokenizer"],
            tasks=parts["tasks"],
            primary_task=parts["primary_task"],
            max_length=parts["max_length"],
            max_chars=parts["max_chars"],
            truncation=parts.get("truncation", "head"),
            name=parts["name"],
            version=parts["version"],
            temperatures=parts.get("temperatures"),
            batch_size=settings.resolved_batch_size(on_gpu=on_gpu),
            max_batch_tokens=settings.resolved_max_batch_tokens(on_gpu=on_gpu),
            max_text_chars=settings.max_text_chars,
        )
    from sentistream.repository import ModelRepository

    repo = ModelRepository(settings.model_repository)
    return load_onnx_classifier(repo.resolve(settings.model), settings)
