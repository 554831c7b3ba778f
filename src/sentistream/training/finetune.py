"""Fine-tune a pretrained encoder with one classification head per task, jointly.

Short and linear: load every task's data -> clean -> tokenize (the same fast tokenizer file the
served model uses) -> each epoch draws a task-balanced sample (task ``i`` gets a share
proportional to ``n_i ** alpha``: alpha=1 is proportional, 0 uniform) -> length-bucketed mixed
batches with per-batch padding -> AdamW with linear warmup/decay, per-task class-weighted
cross-entropy where each example contributes only to the heads of the tasks it has a label for
(the others are masked) -> evaluate every task on validation every ``eval_every`` steps with its
official metric -> keep the best weights (mean official score over tasks), stop early when they
stop improving -> write a checkpoint folder. With ``ema`` the evaluated and kept weights are an
exponential moving average of the trained ones (Polyak averaging).

A run can resume: the optimizer, scheduler, RNG and position are saved under
``<output>/resume/`` at every evaluation, and ``--resume`` continues from there.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from sentistream.metrics import classification_report
from sentistream.text import CLEANING_VERSION, DEFAULT_MAX_CHARS, clean_or_empty
from sentistream.training.backbone import DEFAULT_BACKBONE, backbone_info, load_backbone
from sentistream.training.data import LabelledSplit, fingerprint, load_train_val
from sentistream.training.model import MultiTaskModel, save_checkpoint
from sentistream.training.teachers import parse_teacher_specs, teacher_probabilities

__all__ = [
    "IGNORE",
    "FinetuneConfig",
    "TaskData",
    "WeightAverage",
    "bucketed_batches",
    "encode_texts",
    "excluded_texts",
    "finetune",
    "masked_multitask_loss",
    "parse_task_specs",
    "pick_device",
    "predict_logits",
    "resolve_bf16",
    "task_sample_counts",
    "warmup_linear_decay",
]

T = TypeVar("T")

IGNORE = -100  # label of a task an example has no annotation for


class FinetuneConfig(BaseModel):
    """Everything that determines a fine-tuning run (saved inside the checkpoint)."""

    data: Path | None = Field(
        None, description="TweetEval task folder, or a CSV/TSV with text/label columns"
    )
    output: Path = Field(description="checkpoint folder to write")
    task: str = Field("sentiment", description="task name for --data (selects the metric)")
    tasks: list[str] = Field(
        default_factory=list,
        description="NAME=PATH per task for a multi-task model (the first is the primary task)",
    )
    base_model: str = Field(DEFAULT_BACKBONE, description="packaged backbone, folder or hub id")
    val_data: Path | None = Field(None, description="separate validation file for CSV/TSV data")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="hold-out share when no val split")
    text_column: str = Field("text", description="CSV/TSV text column ('sentence' if absent)")
    label_column: str = "label"
    label_names: list[str] | None = Field(
        None, description="names for integer labels 0..n-1 of CSV/TSV data, e.g. negative,positive"
    )
    epochs: float = Field(3.0, gt=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = 0.01
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_length: int = Field(128, ge=8, le=512)
    truncation: str = Field(
        "head", pattern="^(head|head_tail)$", description="head, or head_tail for long texts"
    )
    max_chars: int = Field(DEFAULT_MAX_CHARS, ge=16)
    dropout: float = Field(0.1, ge=0, lt=1)
    class_weighting: str = Field("balanced", pattern="^(balanced|sqrt|none)$")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    task_sampling_alpha: float = Field(
        0.75, ge=0, le=1, description="task share per epoch ~ size**alpha (multi-task)"
    )
    eval_every: int = Field(0, ge=0, description="steps between evaluations (0: twice per epoch)")
    patience: int = Field(4, ge=1, description="evaluations without improvement before stopping")
    ema: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="evaluate and keep an exponential moving average of the weights with this "
        "decay per step (e.g. 0.999; 0: the raw weights)",
    )
    seed: int = 42
    holdout_seed: int | None = Field(
        None,
        description="seed of the validation hold-outs drawn from CSV/TSV/JSONL sources "
        "(default: --seed); fix it so that runs with different seeds are judged on the same "
        "hold-out",
    )
    bf16: bool | None = Field(
        None, description="bf16 autocast; default: where the hardware has it (resolve_bf16)"
    )
    device: str = Field("auto", description="auto (GPU when present), cpu or cuda")
    resume: bool = Field(False, description="continue from <output>/resume/ when present")
    teachers: list[str] = Field(
        default_factory=list,
        description="TASK=FOLDER: a single-task teacher per task (checkpoint or model folder); "
        "its probabilities are mixed with the gold labels, gold share annealed 0 -> 1",
    )
    select_against: list[str] = Field(
        default_factory=list,
        description="TASK=SCORE or TASK=FOLDER (a checkpoint or model folder: its validation "
        "score) per task, e.g. the single-task models: keep the weights with the smallest "
        "worst-task gap to them instead of the best mean score (the multi-task goal: no "
        "task loses more than a point)",
    )
    exclude: list[Path] = Field(
        default_factory=list,
        description="labelled or text files (e.g. the check sets) whose texts, once cleaned, are "
        "dropped from training: a model is never trained on the sets it is judged on",
    )
    max_train_examples: int | None = Field(None, description="subsample train (smoke tests)")
    max_val_examples: int | None = None
    threads: int | None = Field(None, description="torch CPU threads (default: all cores)")

    def task_specs(self) -> list[tuple[str, Path]]:
        if self.tasks:
            return parse_task_specs(self.tasks)
        if self.data is None:
            raise ValueError("give --data (one task) or --tasks NAME=PATH ... (several)")
        return [(self.task, self.data)]


def reference_score(spec: str, task: str) -> float:
    """A number, or a checkpoint / model folder whose recorded validation score for ``task``
    is the reference (checkpoint: ``val_metrics``; model folder: the fp32 validation figure,
    like the figures training reports)."""
    try:
        return float(spec)
    except ValueError:
        pass
    folder = Path(spec)
    try:
        if (folder / "checkpoint.json").is_file():
            meta = json.loads((folder / "checkpoint.json").read_text())
            return float(meta["val_metrics"][task]["official_score"])
        if (folder / "manifest.json").is_file():
            manifest = json.loads((folder / "manifest.json").read_text())
            return float(manifest["metrics"]["validation"][task]["fp32"]["official_score"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{folder} records no validation score for {task}: {exc}") from exc
    raise ValueError(f"--select-against {task}={spec}: not a number, checkpoint or model folder")


def parse_reference_scores(specs: list[str], tasks: list[str]) -> dict[str, float]:
    """``["sentiment=0.7513", "irony=runs/single-irony", ...]`` -> ``{task: score}``; every
    trained task needs a reference (a missing one would make the worst gap meaningless)."""
    refs: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip() or not value:
            raise ValueError(f"--select-against wants TASK=SCORE or TASK=FOLDER, got {spec!r}")
        refs[name.strip()] = reference_score(value, name.strip())
    if refs and set(refs) != set(tasks):
        raise ValueError(
            f"--select-against needs a score for exactly the trained tasks {sorted(tasks)}, "
            f"got {sorted(refs)}"
        )
    return refs


def selection_score(scores: dict[str, float], references: dict[str, float]) -> float:
    """Mean official score, or with references the worst gap ``min(score - reference)``."""
    if references:
        return min(scores[t] - references[t] for t in references)
    return float(np.mean(list(scores.values())))


def parse_task_specs(specs: list[str]) -> list[tuple[str, Path]]:
    """``["sentiment=data/sentiment", ...]`` -> ``[("sentiment", Path(...)), ...]``."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"task spec {spec!r}: expected NAME=PATH")
        if name in {n for n, _ in out}:
            raise ValueError(f"task {name!r} given twice")
        out.append((name.strip(), Path(path.strip())))
    return out


@dataclass
class TaskData:
    name: str
    labels: list[str]
    train_ids: list[list[int]]
    train_y: list[int]
    val_ids: list[list[int]]
    val_y: list[int]
    source: Path
    val_sources: dict[str, tuple[int, int]] = field(default_factory=dict)
    train_texts: list[str] = field(default_factory=list)  # cleaned, for teachers


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def encode_texts(
    tokenizer: Tokenizer, texts: list[str], max_length: int, truncation: str = "head"
) -> list[list[int]]:
    """Token ids; ``head_tail`` keeps the first quarter and the last three quarters of the
    budget (the opening and the verdict of a long review), special tokens preserved."""
    if truncation == "head":
        tokenizer.enable_truncation(max_length=max_length)
        return [enc.ids for enc in tokenizer.encode_batch(texts)]
    from sentistream.text import head_tail_ids

    tokenizer.no_truncation()
    return [head_tail_ids(enc.ids, max_length) for enc in tokenizer.encode_batch(texts)]


def task_sample_counts(sizes: list[int], alpha: float, total: int | None = None) -> list[int]:
    """Examples drawn per task in one epoch: share ~ size**alpha, ``total`` = sum(sizes)."""
    if not sizes or min(sizes) <= 0:
        raise ValueError("every task needs training examples")
    total = sum(sizes) if total is None else total
    weights = np.asarray(sizes, dtype=np.float64) ** alpha
    raw = weights / weights.sum() * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: total - int(counts.sum())]:
        counts[i] += 1
    return [max(1, int(c)) for c in counts]


def _draw(n: int, k: int, rng: random.Random) -> list[int]:
    """``k`` indices out of ``n``: whole shuffled passes, then a partial one (no repeats within
    a pass)."""
    out: list[int] = []
    while len(out) < k:
        order = list(range(n))
        rng.shuffle(order)
        out.extend(order[: k - len(out)])
    return out


def bucketed_batches(
    items: list[T], length: Callable[[T], int], batch_size: int, rng: random.Random
) -> list[list[T]]:
    """Length-bucketed batches of already shuffled ``items``: sort within chunks of 50 batches
    (little padding), cut, then shuffle the batches (no length order across the epoch)."""
    chunk = batch_size * 50
    batches: list[list[T]] = []
    for start in range(0, len(items), chunk):
        part = sorted(items[start : start + chunk], key=length)
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def warmup_linear_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int) -> Any:
    """The learning-rate schedule of every trainer here: linear warmup, then linear decay to 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _epoch_batches(
    tasks: list[TaskData], counts: list[int], batch_size: int, seed: int, epoch: int
) -> list[list[tuple[int, int]]]:
    """One epoch of mixed batches of (task, example): length-bucketed, deterministic per
    (seed, epoch) so a resumed run replays the same order."""
    rng = random.Random(seed * 100_003 + epoch)
    pool = [
        (t, i) for t, task in enumerate(tasks) for i in _draw(len(task.train_ids), counts[t], rng)
    ]
    rng.shuffle(pool)
    return bucketed_batches(pool, lambda p: len(tasks[p[0]].train_ids[p[1]]), batch_size, rng)


def collate(seqs: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    input_ids = np.zeros((len(seqs), width), dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
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


def masked_multitask_loss(
    logits: tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    class_weights: list[torch.Tensor | None],
    label_smoothing: float = 0.0,
    soft_targets: list[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Mean over the batch of the cross-entropy of every (example, task) pair that has a label.

    ``labels`` is ``[batch, n_tasks]`` with ``IGNORE`` where an example has no label for a task:
    those pairs add nothing to the loss and send no gradient to that task's head. A task with a
    ``soft_targets`` tensor (``[batch, n_labels]``, rows summing to 1) is trained on those
    distributions instead of the one-hot gold label (rows of unlabelled pairs are ignored), each
    pair still weighted by its gold label's class weight.
    """
    total = logits[0].new_zeros((), dtype=torch.float32)
    labelled = (labels != IGNORE).sum()
    if int(labelled) == 0:
        return total
    for t, task_logits in enumerate(logits):
        y = labels[:, t]
        if not bool((y != IGNORE).any()):
            continue
        soft = soft_targets[t] if soft_targets is not None else None
        if soft is not None:
            keep = y != IGNORE
            log_p = torch.log_softmax(task_logits.float()[keep], dim=-1)
            per_pair = -(soft[keep].float() * log_p).sum(dim=-1)
            w = class_weights[t]
            if w is not None:
                per_pair = per_pair * w[y[keep]]
            total = total + per_pair.sum()
            continue
        loss = nn.functional.cross_entropy(
            task_logits.float(),
            y,
            weight=class_weights[t],
            ignore_index=IGNORE,
            reduction="sum",
            label_smoothing=label_smoothing,
        )
        total = total + loss
    return total / labelled.to(torch.float32)


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
        input_ids, mask = collate([ids[i] for i in idx], device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids, mask)
        for t, out in enumerate(logits):
            outputs[t].append(out.float().cpu().numpy())
    if not ids:
        return [np.zeros((0, len(model.tasks[t])), dtype=np.float32) for t in model.task_names]
    inverse = np.argsort(np.asarray(order))
    return [np.concatenate(chunks)[inverse] for chunks in outputs]


def pick_device(name: str) -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def resolve_bf16(requested: bool | None, device: torch.device) -> bool:
    """bf16 autocast where the hardware computes in bf16 natively: a CUDA GPU with bf16, or a
    CPU with AVX512-BF16 or AMX. Elsewhere torch emulates bf16 matmuls, which is far slower
    than fp32 (measured 17x slower on an AVX2 EPYC, docs/training.md). ``None``: decide by the
    hardware; ``True``/``False``: as asked."""
    if requested is not None:
        return requested
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def _subsample(split: LabelledSplit, k: int | None, rng: random.Random | None) -> LabelledSplit:
    if not k or len(split.texts) <= k:
        return split
    keep = sorted(rng.sample(range(len(split.texts)), k)) if rng else list(range(k))
    return LabelledSplit(
        [split.texts[i] for i in keep],
        [split.labels[i] for i in keep],
        split.label_names,
        split.source,
    )


def source_specs(path: Path) -> list[tuple[Path, int | None]]:
    """``a.tsv,b.csv@5000`` -> [(a.tsv, None), (b.csv, 5000)]: several files make one task;
    ``@N`` caps the training examples drawn from that file (seeded sample)."""
    out: list[tuple[Path, int | None]] = []
    for part in str(path).split(","):
        file, _, cap = part.partition("@")
        out.append((Path(file), int(cap) if cap else None))
    return out


def _load_sources(
    config: FinetuneConfig, path: Path, single: bool, rng: random.Random
) -> tuple[LabelledSplit, LabelledSplit, dict[str, tuple[int, int]]]:
    """Train/val of one task from one or several sources; val ranges per source."""
    trains, vals, ranges, start = [], [], {}, 0
    for source, cap in source_specs(path):
        train, val = load_train_val(
            source,
            val_path=config.val_data if single else None,
            val_fraction=config.val_fraction,
            seed=config.seed if config.holdout_seed is None else config.holdout_seed,
            text_column=config.text_column,
            label_column=config.label_column,
        )
        train = _subsample(train, cap, rng)
        trains.append(train)
        vals.append(val)
        ranges[str(source)] = (start, start + len(val.texts))
        start += len(val.texts)
    names = trains[0].label_names
    for split in trains[1:] + vals:
        if split.label_names != names:
            raise ValueError(
                f"{split.source}: labels {split.label_names} differ from {names} "
                f"of {trains[0].source}"
            )
    if config.label_names is not None:
        if len(config.label_names) != len(names):
            raise ValueError(f"--label-names gives {len(config.label_names)} names for {names}")
        names = list(config.label_names)

    def join(parts: list[LabelledSplit], kind: str) -> LabelledSplit:
        return LabelledSplit(
            [t for p in parts for t in p.texts],
            [y for p in parts for y in p.labels],
            names,
            f"{path}[{kind}]",
        )

    return join(trains, "train"), join(vals, "val"), ranges


def excluded_texts(paths: list[Path], max_chars: int) -> set[str]:
    """Cleaned texts of every file in ``paths`` (labelled JSONL/CSV/TSV, a TweetEval folder's
    train and val, or JSONL/plain text), to keep out of training."""
    from sentistream.training.unlabeled import read_texts

    out: set[str] = set()
    for path in paths:
        out.update(clean_or_empty(t, max_chars) for t in read_texts(path))
    out.discard("")
    return out


def load_tasks(config: FinetuneConfig, tokenizer: Tokenizer) -> list[TaskData]:
    """Every task's train/val split, cleaned and tokenized."""
    rng = random.Random(config.seed)
    tasks: list[TaskData] = []
    specs = config.task_specs()
    banned = excluded_texts(config.exclude, config.max_chars)
    for name, path in specs:
        train, val, ranges = _load_sources(config, path, len(specs) == 1, rng)
        train = _subsample(train, config.max_train_examples, rng)
        if config.max_val_examples and len(ranges) == 1:
            val = _subsample(val, config.max_val_examples, None)
            ranges = {k: (0, len(val.texts)) for k in ranges}

        def enc(texts: list[str]) -> list[list[int]]:
            cleaned = [clean_or_empty(t, config.max_chars) for t in texts]
            return encode_texts(tokenizer, cleaned, config.max_length, config.truncation)

        train_texts = [clean_or_empty(t, config.max_chars) for t in train.texts]
        train_y = list(train.labels)
        if banned:
            keep = [i for i, t in enumerate(train_texts) if t not in banned]
            if len(keep) < len(train_texts):
                print(
                    f"{name}: {len(train_texts) - len(keep)} training texts dropped "
                    "(they occur in --exclude sets)",
                    flush=True,
                )
            train_texts = [train_texts[i] for i in keep]
            train_y = [train_y[i] for i in keep]
        tasks.append(
            TaskData(
                name,
                train.label_names,
                encode_texts(tokenizer, train_texts, config.max_length, config.truncation),
                train_y,
                enc(val.texts),
                val.labels,
                path,
                ranges,
                train_texts,
            )
        )
    return tasks


def val_logits(
    model: MultiTaskModel, tasks: list[TaskData], device: torch.device, bf16: bool = False
) -> list[np.ndarray[Any, Any]]:
    """Each task's logits on its own validation texts (one pass per task's texts)."""
    return [
        predict_logits(model, task.val_ids, device, bf16=bf16)[t] for t, task in enumerate(tasks)
    ]


def evaluate_tasks(
    model: MultiTaskModel,
    tasks: list[TaskData],
    device: torch.device,
    bf16: bool,
    logits: list[np.ndarray[Any, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Official validation report per task (each task on its own validation texts)."""
    logits = logits if logits is not None else val_logits(model, tasks, device, bf16)
    return {
        task.name: classification_report(
            task.val_y, logits[t].argmax(-1).tolist(), task.labels, task.name
        )
        for t, task in enumerate(tasks)
    }


def _fingerprint(path: Path) -> str:
    parts = [fingerprint(p) for p, _ in source_specs(path)]
    return parts[0] if len(parts) == 1 else "+".join(parts)


def evaluate_sources(
    tasks: list[TaskData], logits: list[np.ndarray[Any, Any]]
) -> dict[str, dict[str, Any]]:
    """For tasks made of several sources: the official report on each source's validation,
    from the logits already computed for the whole validation split."""
    out: dict[str, dict[str, Any]] = {}
    for t, task in enumerate(tasks):
        if len(task.val_sources) < 2:
            continue
        for source, (a, b) in task.val_sources.items():
            out[f"{task.name}:{source}"] = classification_report(
                task.val_y[a:b], logits[t][a:b].argmax(-1).tolist(), task.labels, task.name
            )
    return out


class WeightAverage:
    """Exponential moving average of a model's weights, kept in a copy of the model that is
    evaluated instead of the trained one (Polyak averaging: the average of the last ~1/(1-decay)
    steps sits nearer the bottom of the valley SGD bounces around in, so validation scores swing
    less between evaluations). The decay ramps up as ``min(decay, (1+step)/(10+step))`` so the
    random early weights do not linger."""

    def __init__(self, model: MultiTaskModel, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _floats(self, model: nn.Module) -> list[torch.Tensor]:
        return [v for v in model.state_dict().values() if v.dtype.is_floating_point]

    @torch.no_grad()
    def update(self, model: MultiTaskModel, step: int) -> None:
        """Blend in the weights after optimizer step number ``step`` (1-based)."""
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self._floats(self.model), self._floats(model), 1.0 - d)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}


def _training_state(
    model: MultiTaskModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    average: WeightAverage | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Model, optimizer, scheduler and RNG state as safetensors tensors + JSON (no pickle)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if average is not None:
        tensors.update({f"ema.{k}": v for k, v in average.state().items()})
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "param_groups": opt["param_groups"],
        "optim_scalars": scalars,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
    }
    return tensors, meta


def _restore_training_state(
    folder: Path,
    model: MultiTaskModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    average: WeightAverage | None = None,
) -> None:
    tensors = load_file(str(folder / "state.safetensors"))
    meta = json.loads((folder / "state.json").read_text())
    model.load_state_dict(
        {k[len("model.") :]: v.to(device) for k, v in tensors.items() if k.startswith("model.")}
    )
    if average is not None:
        ema = {k[len("ema.") :]: v.to(device) for k, v in tensors.items() if k.startswith("ema.")}
        if not ema:
            raise ValueError(f"{folder} holds no weight average: it was saved without --ema")
        average.model.load_state_dict(ema)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value.to(device)
    for idx, scalars in meta["optim_scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(
        {**meta["scheduler"], "lr_lambdas": [None] * len(meta["param_groups"])}
    )
    torch.set_rng_state(tensors["rng.torch"])


def _save_resume(
    folder: Path,
    model: MultiTaskModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    best_state: dict[str, torch.Tensor] | None,
    progress: dict[str, Any],
    average: WeightAverage | None = None,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = _training_state(model, optimizer, scheduler, average)
    save_file(tensors, str(folder / "state.safetensors.tmp"))
    (folder / "state.safetensors.tmp").replace(folder / "state.safetensors")
    (folder / "state.json.tmp").write_text(json.dumps(meta))
    (folder / "state.json.tmp").replace(folder / "state.json")
    if best_state is not None:
        save_file(best_state, str(folder / "best.safetensors.tmp"))
        (folder / "best.safetensors.tmp").replace(folder / "best.safetensors")
    (folder / "progress.json.tmp").write_text(json.dumps(progress, indent=1))
    (folder / "progress.json.tmp").replace(folder / "progress.json")


def _annealed_targets(
    batch: list[tuple[int, int]],
    tasks: list[TaskData],
    teacher_probs: list[torch.Tensor | None],
    gold_share: float,
    device: torch.device,
) -> list[torch.Tensor | None] | None:
    """Per task with a teacher: ``gold_share`` x one-hot gold + the rest x teacher probability,
    for the batch rows of that task (other rows stay zero and are masked by the loss)."""
    if all(p is None for p in teacher_probs):
        return None
    out: list[torch.Tensor | None] = []
    for t, probs in enumerate(teacher_probs):
        if probs is None:
            out.append(None)
            continue
        target = torch.zeros(len(batch), probs.shape[1])
        for row, (task, i) in enumerate(batch):
            if task == t:
                target[row] = (1.0 - gold_share) * probs[i]
                target[row, tasks[t].train_y[i]] += gold_share
        out.append(target.to(device))
    return out


def finetune(config: FinetuneConfig) -> Path:
    """Run one (multi-task) fine-tuning; returns the checkpoint folder (best validation
    weights)."""
    _seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    config = config.model_copy(update={"bf16": resolve_bf16(config.bf16, device)})
    encoder, tokenizer, source = load_backbone(config.base_model)
    tokenizer.no_padding()
    t0 = time.perf_counter()
    tasks = load_tasks(config, tokenizer)
    for task in tasks:
        print(
            f"{task.name}: {len(task.train_ids)} train / {len(task.val_ids)} val texts, "
            f"labels {task.labels}",
            flush=True,
        )
    print(f"tokenized in {time.perf_counter() - t0:.1f}s; training on {device}", flush=True)

    model = MultiTaskModel(encoder, {t.name: t.labels for t in tasks}, dropout=config.dropout).to(
        device
    )
    teacher_paths = parse_teacher_specs(config.teachers)
    unknown = sorted(set(teacher_paths) - {t.name for t in tasks})
    if unknown:
        raise ValueError(f"teachers for tasks this run does not train: {unknown}")
    teacher_probs: list[torch.Tensor | None] = []
    for task in tasks:
        if task.name not in teacher_paths:
            teacher_probs.append(None)
            continue
        tt = time.perf_counter()
        probs = teacher_probabilities(
            teacher_paths[task.name],
            task.name,
            task.labels,
            task.train_texts,
            config.max_length,
            config.output,
        )
        teacher_probs.append(torch.from_numpy(probs))
        agree = float((probs.argmax(-1) == np.asarray(task.train_y)).mean())
        print(
            f"teacher {teacher_paths[task.name]} for {task.name}: {len(probs)} train texts "
            f"in {time.perf_counter() - tt:.0f}s (agrees with gold on {agree:.1%})",
            flush=True,
        )
    references = parse_reference_scores(config.select_against, [t.name for t in tasks])
    counts = task_sample_counts([len(t.train_ids) for t in tasks], config.task_sampling_alpha)
    if len(tasks) > 1:
        print(
            "examples per epoch: "
            + ", ".join(f"{t.name}={c}" for t, c in zip(tasks, counts, strict=True)),
            flush=True,
        )
    steps_per_epoch = math.ceil(sum(counts) / config.batch_size)
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

    scheduler = warmup_linear_decay(optimizer, total_steps, warmup)
    weights: list[torch.Tensor | None] = [
        _class_weights(t.train_y, len(t.labels), config.class_weighting).to(device) for t in tasks
    ]

    average = WeightAverage(model, config.ema) if config.ema > 0 else None
    best_score, best_state, best_step = -math.inf, None, 0
    history: list[dict[str, Any]] = []
    evals_without_gain, step, epoch, position, stop = 0, 0, 0, 0, False
    resume_dir = config.output / "resume"
    if config.resume and (resume_dir / "progress.json").exists():
        _restore_training_state(resume_dir, model, optimizer, scheduler, device, average)
        progress_state = json.loads((resume_dir / "progress.json").read_text())
        step, epoch, position = (
            progress_state["step"],
            progress_state["epoch"],
            progress_state["position"],
        )
        best_score, best_step = progress_state["best_score"], progress_state["best_step"]
        history, evals_without_gain = (
            progress_state["history"],
            progress_state["evals_without_gain"],
        )
        if (resume_dir / "best.safetensors").exists():
            best_state = load_file(str(resume_dir / "best.safetensors"))
        print(f"resumed at step {step} (epoch {epoch}, batch {position})", flush=True)

    name = "+".join(t.name for t in tasks)
    progress = tqdm(
        total=total_steps, initial=step, desc=f"train {name}", unit="step", mininterval=2.0
    )
    while step < total_steps and not stop:
        batches = _epoch_batches(tasks, counts, config.batch_size, config.seed, epoch)
        while position < len(batches):
            batch = batches[position]
            position += 1
            model.train()
            input_ids, mask = collate([tasks[t].train_ids[i] for t, i in batch], device)
            y = torch.full((len(batch), len(tasks)), IGNORE, dtype=torch.long)
            for row, (t, i) in enumerate(batch):
                y[row, t] = tasks[t].train_y[i]
            with torch.autocast(
                device_type=device.type, dtype=torch.bfloat16, enabled=bool(config.bf16)
            ):
                logits = model(input_ids, mask)
            soft = _annealed_targets(batch, tasks, teacher_probs, step / total_steps, device)
            loss = masked_multitask_loss(
                logits, y.to(device), weights, config.label_smoothing, soft
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if average is not None:
                average.update(model, step)
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", best=f"{best_score:.4f}")
            if step % eval_every == 0 or step == total_steps:
                judged = average.model if average is not None else model
                reports = evaluate_tasks(judged, tasks, device, bool(config.bf16))
                official = {k: float(r["official_score"]) for k, r in reports.items()}
                mean = float(np.mean(list(official.values())))
                score = selection_score(official, references)
                history.append(
                    {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 3),
                        "val_official": mean,
                        **({"worst_gap": round(score, 5)} if references else {}),
                        **{f"val_{k}": round(v, 5) for k, v in official.items()},
                    }
                )
                tqdm.write(
                    f"step {step} epoch {step / steps_per_epoch:.2f} mean={mean:.4f} "
                    + (f"worst_gap={score:+.4f} " if references else "")
                    + " ".join(f"{k}={v:.4f}" for k, v in official.items())
                )
                if score > best_score:
                    best_score, best_step, evals_without_gain = score, step, 0
                    best_state = {
                        k: v.detach().clone().cpu().contiguous()
                        for k, v in judged.state_dict().items()
                    }
                else:
                    evals_without_gain += 1
                    if evals_without_gain >= config.patience:
                        tqdm.write(f"early stop: no gain in {config.patience} evaluations")
                        stop = True
                _save_resume(
                    resume_dir,
                    model,
                    optimizer,
                    scheduler,
                    best_state,
                    {
                        "step": step,
                        "epoch": epoch,
                        "position": position,
                        "best_score": best_score,
                        "best_step": best_step,
                        "history": history,
                        "evals_without_gain": evals_without_gain,
                    },
                    average,
                )
            if step >= total_steps or stop:
                break
        if position >= len(batches):
            epoch, position = epoch + 1, 0
    progress.close()
    assert best_state is not None
    model.load_state_dict(best_state)
    model.to("cpu")
    logits = val_logits(model, tasks, torch.device("cpu"))  # once, for both reports
    final = evaluate_tasks(model, tasks, torch.device("cpu"), bf16=False, logits=logits)
    by_source = evaluate_sources(tasks, logits)
    primary = tasks[0].name
    meta = {
        "kind": "sentistream-checkpoint",
        "task": primary,
        "primary_task": primary,
        "max_length": config.max_length,
        "truncation": config.truncation,
        "max_chars": config.max_chars,
        "cleaning_version": CLEANING_VERSION,
        "dropout": config.dropout,
        "base_model": config.base_model,
        "base_model_source": source,
        "backbone": backbone_info(encoder),
        "data": str(tasks[0].source),
        "data_fingerprint": _fingerprint(tasks[0].source),
        "task_data": {
            t.name: {
                "path": str(t.source),
                "fingerprint": _fingerprint(t.source),
                "train_examples": len(t.train_ids),
                "val_examples": len(t.val_ids),
            }
            for t in tasks
        },
        "train_examples": sum(len(t.train_ids) for t in tasks),
        "val_examples": sum(len(t.val_ids) for t in tasks),
        "examples_per_epoch": {t.name: c for t, c in zip(tasks, counts, strict=True)},
        **(
            {"teachers": {k: str(v) for k, v in teacher_paths.items()}, "teacher_annealing": True}
            if teacher_paths
            else {}
        ),
        "training_config": json.loads(config.model_dump_json()),
        "best_step": best_step,
        "steps": step,
        "history": history,
        "val_metrics": final,
        **({"val_metrics_by_source": by_source} if by_source else {}),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "device": str(device),
    }
    out = save_checkpoint(model, tokenizer, config.output, meta)
    print(
        "best val "
        + " ".join(
            f"{k} {r['official_metric']}={r['official_score']:.4f}" for k, r in final.items()
        )
        + f" (step {best_step}); checkpoint -> {out}",
        flush=True,
    )
    return out
