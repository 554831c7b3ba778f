"""The model folder format: ``models/<name>/<version>/`` with ``model.onnx``, ``tokenizer.json``,
``manifest.json`` and a model card ``README.md``.

The manifest says what the model is (tasks and labels, primary task, max length, cleaning
version, input/output signature), where it came from (base model, training data fingerprint,
training command, parent version) and how good it is (metrics). Loading validates all of it and
fails with a clear :class:`~sentistream.errors.ModelLoadError` on a broken folder. Only ONNX and
safetensors files are ever loaded: never pickle.
"""

from __future__ import annotations

import hashlib
import json
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sentistream.errors import ModelLoadError

__all__ = [
    "MANIFEST_FORMAT",
    "SUPPORTED_CLEANING_VERSIONS",
    "FeatureProfile",
    "Manifest",
    "ReferenceProfile",
    "TaskSpec",
    "TensorSpec",
    "file_sha256",
    "load_manifest",
]

MANIFEST_FORMAT = "sentistream-model/1"
SUPPORTED_CLEANING_VERSIONS = frozenset({"1"})
REQUIRED_FILES = ("model.onnx", "tokenizer.json", "manifest.json")
SAFE_WEIGHT_SUFFIXES = (".onnx", ".safetensors")


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: Literal["int64", "int32", "float32", "float16", "string"]
    shape: list[int | str]


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[str] = Field(min_length=2)
    output: str = Field(description="name of the model output holding this task's logits")
    temperature: float = Field(1.0, gt=0, description="calibration temperature for softmax")
    metric: str | None = None

    @field_validator("labels")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        return v


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class FeatureProfile(BaseModel):
    """One binned distribution of a reference profile: named ``bins`` (categorical) or
    ``cuts`` (inner cut points of a numeric feature: ``len(cuts) + 1`` bins)."""

    model_config = ConfigDict(extra="forbid")

    bins: list[str] | None = None
    cuts: list[float] | None = None
    proportions: list[float]

    @model_validator(mode="after")
    def _shape(self) -> FeatureProfile:
        if (self.bins is None) == (self.cuts is None):
            raise ValueError("a feature has either 'bins' or 'cuts'")
        n = len(self.bins) if self.bins is not None else len(self.cuts or []) + 1
        if len(self.proportions) != n:
            raise ValueError(f"{len(self.proportions)} proportions for {n} bins")
        if any(p < 0 for p in self.proportions) or abs(sum(self.proportions) - 1) > 1e-3:
            raise ValueError("proportions must be non-negative and sum to 1")
        if self.cuts is not None and any(a >= b for a, b in pairwise(self.cuts)):
            raise ValueError("cuts must increase")
        return self


class ReferenceProfile(BaseModel):
    """Distributions of the primary task's predictions and of the inputs on reference data
    (see :mod:`sentistream.drift`); the stream worker measures drift against it."""

    model_config = ConfigDict(extra="allow")

    format: Literal["sentistream-profile/1"] = "sentistream-profile/1"
    task: str
    n: int = Field(ge=1)
    data: str | None = None
    features: dict[str, FeatureProfile]
    mean: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_labels(self) -> ReferenceProfile:
        if "label" not in self.features or self.features["label"].bins is None:
            raise ValueError("a reference profile needs the 'label' feature with its bins")
        return self


class Manifest(BaseModel):
    """``manifest.json`` of one model version."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    format: Literal["sentistream-model/1"] = "sentistream-model/1"
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str = Field(pattern=r"^[0-9]+$")
    description: str = ""
    primary_task: str
    tasks: dict[str, TaskSpec]
    max_length: int = Field(ge=8, le=8192)
    truncation: Literal["head", "head_tail"] = Field(
        "head", description="head: keep the first max_length tokens; head_tail: head + tail"
    )
    cleaning_version: str
    max_chars: int = Field(ge=1)
    signature: Signature
    base_model: str
    training_data: dict[str, Any] = Field(default_factory=dict)
    training_command: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    quantization: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256:...")
    parent_version: str | None = None
    created_at: str
    reference_profile: ReferenceProfile | None = Field(
        None, description="reference distributions for drift monitoring (sentistream profile)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.primary_task not in self.tasks:
            raise ValueError(f"primary_task {self.primary_task!r} is not one of the tasks")
        if self.cleaning_version not in SUPPORTED_CLEANING_VERSIONS:
            raise ValueError(
                f"cleaning_version {self.cleaning_version!r} is not supported by this "
                f"sentistream (supported: {sorted(SUPPORTED_CLEANING_VERSIONS)})"
            )
        outputs = {o.name for o in self.signature.outputs}
        for task, spec in self.tasks.items():
            if spec.output not in outputs:
                raise ValueError(f"task {task!r} reads output {spec.output!r}, not in signature")
        for name in self.files:
            if "/" in name or name.startswith("."):
                raise ValueError(f"file entry {name!r} must be a plain file name")
        profile = self.reference_profile
        if profile is not None:
            if profile.task not in self.tasks:
                raise ValueError(f"reference_profile.task {profile.task!r} is not one of the tasks")
            if profile.features["label"].bins != self.tasks[profile.task].labels:
                raise ValueError("reference_profile label bins differ from the task's labels")
        return self


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def load_manifest(folder: Path, *, verify_hashes: bool = True) -> Manifest:
    """Read and validate ``folder/manifest.json`` and the files it names."""
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {folder} does not exist")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise ModelLoadError(f"model folder {folder} is missing {', '.join(missing)}")
    try:
        raw = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{folder}/manifest.json is not valid JSON: {exc}") from exc
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}" for e in exc.errors()
        )
        raise ModelLoadError(f"{folder}/manifest.json is invalid: {problems}") from exc
    if folder.name != manifest.version:
        raise ModelLoadError(
            f"{folder}: folder name {folder.name!r} differs from manifest version "
            f"{manifest.version!r}"
        )
    for path in folder.iterdir():
        if path.suffix in {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt"}:
            raise ModelLoadError(
                f"{path} is a pickle-based weight file; only ONNX and safetensors are loaded"
            )
    if verify_hashes:
        for name, expected in manifest.files.items():
            path = folder / name
            if not path.is_file():
                raise ModelLoadError(f"{folder}: manifest lists {name} but the file is missing")
            actual = file_sha256(path)
            if actual != expected:
                raise ModelLoadError(
                    f"{path} does not match its manifest checksum (corrupted or replaced file)"
                )
    return manifest
