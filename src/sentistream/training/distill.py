"""Knowledge distillation: a smaller student learns the teacher's soft labels on every task.

Teacher: one fine-tuned (multi-task) checkpoint, or several as an ensemble (the weighted mean of
their probabilities, ``teacher_weights``); ``task_teachers`` add a model for one task only (a
training checkpoint or a served model folder, e.g. a single-task specialist) to that task's
average. Each checkpoint teacher reads the texts with its own tokenizer (an MPNet teacher can
teach a MiniLM student); its scores are cached under ``teacher_cache`` in resumable chunks and
shared by runs (:mod:`sentistream.training.transfer`). The teachers may instead be served model
folders (``model.onnx`` + ``manifest.json``, e.g. a shipped model), scored with ONNX Runtime.

The student is a subset of the layers of either the first checkpoint teacher's encoder (with its
heads), or of ``student_base`` with fresh heads (always so for model-folder teachers). Transfer
set: every task's labelled training texts, as the teacher's run split them, plus unlabeled
tweets; validation texts and the ``exclude`` sets (the check sets) never enter it. The student
minimises

    (1 - hard_weight) * T^2 * KL(teacher_T || student_T)  +  hard_weight * CE(gold)

where ``_T`` is a softmax at temperature ``T`` and the gold term covers only texts that carry
a label for that task (masked like multi-task fine-tuning). Validation (the teacher run's
validation splits), best-checkpoint selection and the checkpoint format are those of
``sentistream train``.
"""

from __future__ import annotations

import copy
import itertools
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

from sentistream.training.backbone import backbone_info, load_backbone
from sentistream.training.data import fingerprint
from sentistream.training.finetune import (
    TaskData,
    bucketed_batches,
    collate,
    encode_texts,
    evaluate_tasks,
    masked_multitask_loss,
    pick_device,
    resolve_bf16,
    warmup_linear_decay,
)
from sentistream.training.model import MultiTaskModel, load_checkpoint, save_checkpoint
from sentistream.training.teachers import (
    is_model_folder,
    parse_teacher_specs,
    teacher_probabilities,
)
from sentistream.training.transfer import (
    build_transfer_set,
    ensemble_logits,
    join_ensemble,
    model_folder_ensemble,
    score_checkpoint,
    softmax,
)

__all__ = [
    "DistillConfig",
    "distill",
    "distillation_loss",
    "join_ensemble",
    "manifest_meta",
    "pick_layers",
    "shrink_encoder",
]


class DistillConfig(BaseModel):
    """Everything that determines a distillation run (saved inside the checkpoint)."""

    teachers: list[Path] = Field(
        description="teacher checkpoint folder(s) or model folder(s); several = ensemble"
    )
    student_base: str | None = Field(
        None,
        description="the backbone the student's layers come from, with fresh heads (default: "
        "the first checkpoint teacher's own encoder and heads; for model-folder teachers their "
        "base model); the student reads texts with this backbone's tokenizer",
    )
    teacher_weights: list[float] | None = Field(
        None, description="weight of each teacher in the ensemble mean (default: equal)"
    )
    teacher_cache: Path | None = Field(
        None,
        description="folder for the checkpoint teachers' scores, shared by runs and resumable "
        "(default: <output>)",
    )
    exclude: list[Path] = Field(
        default_factory=list,
        description="sets whose texts never enter the transfer set (e.g. the check sets)",
    )
    task_teachers: list[str] = Field(
        default_factory=list,
        description="TASK=FOLDER: an extra teacher for one task (checkpoint or model folder), "
        "averaged with the teachers' probabilities for that task",
    )
    output: Path = Field(description="student checkpoint folder to write")
    unlabeled: list[Path] = Field(default_factory=list, description="JSONL/text of extra tweets")
    max_unlabeled: int | None = Field(40_000, description="sample of unlabeled texts to use")
    layers: list[int] | None = Field(
        default_factory=lambda: [0, 2, 4],
        description="teacher layers the student keeps; None: search (see student_layers)",
    )
    student_layers: int = Field(
        3,
        ge=1,
        description="with layers=None: keep this many layers, the subset whose untrained "
        "student scores best on (a sample of) validation",
    )
    temperature: float = Field(2.0, gt=0)
    hard_weight: float = Field(0.2, ge=0, le=1, description="weight of the gold-label loss")
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = 0.01
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    eval_every: int = Field(0, ge=0)
    patience: int = Field(4, ge=1)
    seed: int = 42
    bf16: bool | None = Field(None, description="bf16 autocast; default: where the hardware has it")
    device: str = "auto"
    threads: int | None = None
    max_train_examples: int | None = Field(None, description="per task (smoke tests)")


def pick_layers(
    teacher: MultiTaskModel,
    tasks: list[TaskData],
    k: int,
    device: torch.device,
    per_task: int = 500,
) -> tuple[list[int], dict[str, float]]:
    """The ``k``-layer subset of the teacher whose student, before any training (teacher heads
    on the kept layers), has the best mean official validation score over the first
    ``per_task`` validation texts of every task. Returns it and every subset's score."""
    n = int(teacher.encoder.config.num_hidden_layers)
    if not 0 < k < n:
        raise ValueError(f"student_layers must be in 1..{n - 1}, got {k}")
    sample = [
        TaskData(t.name, t.labels, [], [], t.val_ids[:per_task], t.val_y[:per_task], t.source)
        for t in tasks
    ]
    scores: dict[str, float] = {}
    for subset in itertools.combinations(range(n), k):
        probe = MultiTaskModel(shrink_encoder(teacher.encoder, list(subset)), teacher.tasks)
        probe.heads.load_state_dict(teacher.heads.state_dict())
        reports = evaluate_tasks(probe.to(device), sample, device, bf16=False)
        scores[",".join(map(str, subset))] = round(
            float(np.mean([r["official_score"] for r in reports.values()])), 5
        )
    best = max(scores, key=lambda key: scores[key])
    return [int(i) for i in best.split(",")], scores


def shrink_encoder(encoder: Any, layers: list[int]) -> Any:
    """A copy of a BERT-style encoder that keeps only ``layers`` (in that order)."""
    n = int(encoder.config.num_hidden_layers)
    if not layers or any(not 0 <= i < n for i in layers):
        raise ValueError(f"layers must be indices in 0..{n - 1}, got {layers}")
    student = copy.deepcopy(encoder)
    blocks = student.encoder.layer
    student.encoder.layer = torch.nn.ModuleList([blocks[i] for i in layers])
    student.config.num_hidden_layers = len(layers)
    return student


def distillation_loss(
    student: tuple[torch.Tensor, ...],
    teacher_probs: list[torch.Tensor],
    labels: torch.Tensor,
    temperature: float,
    hard_weight: float,
) -> torch.Tensor:
    """Soft (every task, every text) + hard (only labelled pairs) loss, see module doc."""
    soft = student[0].new_zeros((), dtype=torch.float32)
    for s_logits, t_probs in zip(student, teacher_probs, strict=True):
        log_p = torch.log_softmax(s_logits.float() / temperature, dim=-1)
        soft = soft + torch.nn.functional.kl_div(log_p, t_probs, reduction="batchmean")
    soft = soft * temperature**2 / len(student)
    if hard_weight == 0:
        return soft
    hard = masked_multitask_loss(student, labels, [None] * len(student))
    return (1 - hard_weight) * soft + hard_weight * hard


def manifest_meta(folder: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Checkpoint-style metadata (lengths, cleaning, task data, seed, backbone) and the task
    labels of a model folder, from its manifest."""
    from sentistream.manifest import load_manifest

    manifest = load_manifest(folder)
    raw = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    training = raw.get("training") or {}
    task_data = dict(training.get("task_data") or {})
    if not task_data and manifest.training_data.get("path"):
        task_data = {manifest.primary_task: {"path": manifest.training_data["path"]}}
    if not task_data:
        raise ValueError(f"{folder}: the manifest names no training data to distill on")
    cfg = training.get("config") or {}
    meta = {
        "kind": "sentistream-checkpoint",
        "task": manifest.primary_task,
        "primary_task": manifest.primary_task,
        "max_length": manifest.max_length,
        "truncation": manifest.truncation,
        "max_chars": manifest.max_chars,
        "cleaning_version": manifest.cleaning_version,
        "dropout": float(cfg.get("dropout", 0.1)),
        "base_model": manifest.base_model,
        "backbone": raw.get("backbone") or {},
        "data": task_data[manifest.primary_task]["path"],
        "data_fingerprint": task_data[manifest.primary_task].get("fingerprint"),
        "task_data": task_data,
        "train_examples": sum(int(x.get("train_examples") or 0) for x in task_data.values()),
        "val_examples": sum(int(x.get("val_examples") or 0) for x in task_data.values()),
        "training_config": {"seed": int(cfg.get("seed", 42))},
        "validation": (raw.get("metrics") or {}).get("validation") or {},
    }
    # the primary task first, as the exported model lists it
    order = [manifest.primary_task] + [t for t in manifest.tasks if t != manifest.primary_task]
    return meta, {t: list(manifest.tasks[t].labels) for t in order}


def _window(losses: list[float]) -> int:
    """Steps averaged for the start/end loss figures: 100, or a fifth of a short run."""
    return max(1, min(100, len(losses) // 5))


def _checkpoint_meta(folder: Path) -> dict[str, Any]:
    path = folder / "checkpoint.json"
    if not path.is_file():
        raise FileNotFoundError(f"teacher {folder} is not a training checkpoint or model folder")
    meta: dict[str, Any] = json.loads(path.read_text())
    order = meta.get("task_order") or list(meta["tasks"])
    meta["tasks"] = {name: meta["tasks"][name] for name in order}
    return meta


def _val_tasks(
    names: list[str],
    task_labels: dict[str, list[str]],
    val: dict[str, tuple[list[str], list[int], dict[str, tuple[int, int]]]],
    tokenizer: Any,
    max_length: int,
    truncation: str,
    task_paths: dict[str, Path],
) -> list[TaskData]:
    from sentistream.training.finetune import encode_texts

    out = []
    for name in names:
        texts, ys, ranges = val[name]
        ids = encode_texts(tokenizer, texts, max_length, truncation)
        out.append(TaskData(name, task_labels[name], [], [], ids, ys, task_paths[name], ranges))
    return out


def _teacher_figures(
    tasks: list[TaskData], logits: list[np.ndarray[Any, Any]]
) -> dict[str, dict[str, Any]]:
    from sentistream.metrics import classification_report

    return {
        t.name: classification_report(t.val_y, logits[k].argmax(-1).tolist(), t.labels, t.name)
        for k, t in enumerate(tasks)
    }


def _model_folder_scores(
    config: DistillConfig, names: list[str], task_labels: dict[str, list[str]], texts: list[str]
) -> list[np.ndarray[Any, Any]]:
    """The model-folder ensemble's logits, cached in ``<output>/teacher_logits.npz``."""
    cache = config.output / "teacher_logits.npz"
    key = {"teachers": [str(p) for p in config.teachers], "n": len(texts)}
    if cache.exists() and json.loads(str(np.load(cache)["key"])) == key:
        with np.load(cache) as z:
            return [z[f"logits_{n}"] for n in names]
    logits = model_folder_ensemble(config.teachers, task_labels, texts)
    config.output.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"key": np.asarray(json.dumps(key))}
    arrays.update({f"logits_{n}": v for n, v in zip(names, logits, strict=True)})
    np.savez(cache, **arrays)
    return logits


def distill(config: DistillConfig) -> Path:
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    config = config.model_copy(update={"bf16": resolve_bf16(config.bf16, device)})
    onnx_teachers = [is_model_folder(p) for p in config.teachers]
    if any(onnx_teachers) and not all(onnx_teachers):
        raise ValueError("teachers: give training checkpoints or model folders, not a mix")
    if config.teacher_weights is not None and len(config.teacher_weights) != len(config.teachers):
        raise ValueError(
            f"{len(config.teacher_weights)} teacher weights for {len(config.teachers)} teachers"
        )
    first_teacher: MultiTaskModel | None = None
    if all(onnx_teachers):
        if not config.layers:
            raise ValueError(
                "--layers auto scores the teacher's own layers and heads; model-folder "
                "teachers have no torch weights: give the layers, e.g. --layers 0,2,4"
            )
        meta, task_labels = manifest_meta(config.teachers[0])  # the others: checked on scoring
        base = config.student_base or str(meta["base_model"])
        base_encoder, tokenizer, source = load_backbone(base)
        meta = {**meta, "base_model": base, "base_model_source": source}
    else:
        metas = [_checkpoint_meta(p) for p in config.teachers]
        meta = metas[0]
        task_labels = meta["tasks"]
        for folder, other in zip(config.teachers[1:], metas[1:], strict=True):
            if other["tasks"] != task_labels:
                raise ValueError(
                    f"ensemble teacher {folder} has tasks {other['tasks']}, "
                    f"the first has {task_labels}"
                )
        if config.student_base:
            base_encoder, tokenizer, source = load_backbone(config.student_base)
            meta = {
                **meta,
                "base_model": config.student_base,
                "base_model_source": source,
                "backbone": backbone_info(base_encoder),
            }
        else:
            first_teacher, tokenizer, _ = load_checkpoint(config.teachers[0])
            base_encoder = first_teacher.encoder
    max_length, max_chars = int(meta["max_length"]), int(meta.get("max_chars", 1000))
    truncation = str(meta.get("truncation", "head"))
    tokenizer.no_padding()
    task_paths = {
        name: Path(info["path"]) for name, info in (meta.get("task_data") or {}).items()
    } or {meta["primary_task"]: Path(meta["data"])}
    names = list(task_labels)
    t0 = time.perf_counter()

    transfer = build_transfer_set(
        task_paths,
        task_labels,
        meta.get("training_config") or {},
        unlabeled=config.unlabeled,
        max_unlabeled=config.max_unlabeled,
        exclude=config.exclude,
        max_chars=max_chars,
        seed=config.seed,
        max_train_examples=config.max_train_examples,
    )
    texts, labels, n_labelled = transfer.texts, transfer.labels, transfer.n_labelled
    tasks = _val_tasks(
        names, task_labels, transfer.val, tokenizer, max_length, truncation, task_paths
    )
    ids = encode_texts(tokenizer, texts, max_length, truncation)
    extra_count = len(texts) - n_labelled
    print(
        f"transfer set: {n_labelled} labelled + {extra_count} unlabeled texts "
        f"({transfer.n_excluded} held-out or excluded texts kept out)",
        flush=True,
    )

    cache_dir = config.teacher_cache or config.output
    teacher_reports: dict[str, Any] = {}
    ts = time.perf_counter()
    if all(onnx_teachers):
        t_logits = _model_folder_scores(config, names, task_labels, texts)
        if len(config.teachers) == 1:  # the model folder's own int8 figures
            teacher_reports = {t: r["int8"] for t, r in meta["validation"].items() if "int8" in r}
    else:
        val_texts = [t for name in names for t in transfer.val[name][0]]
        per_teacher, per_teacher_val = [], []
        for folder in config.teachers:
            per_teacher.append(
                score_checkpoint(folder, texts, cache_dir, device=device, bf16=bool(config.bf16))
            )
            per_teacher_val.append(
                score_checkpoint(folder, val_texts, cache_dir, device=device, bf16=False)
            )
        t_logits = ensemble_logits(per_teacher, config.teacher_weights)
        joined = ensemble_logits(per_teacher_val, config.teacher_weights)
        offsets = np.cumsum([0] + [len(transfer.val[n][0]) for n in names])
        teacher_reports = _teacher_figures(
            tasks, [joined[k][offsets[k] : offsets[k + 1]] for k in range(len(names))]
        )
    print(f"teacher logits for {len(texts)} texts in {time.perf_counter() - ts:.0f}s", flush=True)
    task_teachers = parse_teacher_specs(config.task_teachers)
    for task, folder in task_teachers.items():
        if task not in names:
            raise ValueError(f"task teacher for {task!r}: the teachers have {names}")
        k = names.index(task)
        probs = teacher_probabilities(
            folder, task, task_labels[task], texts, max_length, config.output
        )
        t_logits[k] = join_ensemble(t_logits[k], len(config.teachers), probs)
        print(f"task teacher {folder} joins the {task} ensemble", flush=True)
    if teacher_reports:
        print(
            "teacher val "
            + " ".join(f"{k}={r['official_score']:.4f}" for k, r in teacher_reports.items()),
            flush=True,
        )

    layer_search: dict[str, float] = {}
    layers = config.layers
    if not layers:
        if first_teacher is None:
            raise ValueError("--layers auto searches the teacher's own layers: no --student-base")
        ts = time.perf_counter()
        layers, layer_search = pick_layers(first_teacher, tasks, config.student_layers, device)
        print(
            f"layer search ({len(layer_search)} subsets, {time.perf_counter() - ts:.0f}s): "
            f"keeping {layers}; "
            + " ".join(f"{k}={v:.4f}" for k, v in sorted(layer_search.items())),
            flush=True,
        )
    student = MultiTaskModel(
        shrink_encoder(base_encoder, layers),
        task_labels,
        dropout=float(meta.get("dropout", 0.1)),
    )
    if first_teacher is not None:  # the teacher's heads; otherwise fresh heads
        student.heads.load_state_dict(first_teacher.heads.state_dict())
    student.to(device)
    del first_teacher, base_encoder

    y = torch.tensor(labels, dtype=torch.long)
    soft = [
        torch.from_numpy(softmax(lg / config.temperature).astype(np.float32)) for lg in t_logits
    ]
    steps_per_epoch = math.ceil(len(ids) / config.batch_size)
    total_steps = max(1, int(steps_per_epoch * config.epochs))
    warmup = int(total_steps * config.warmup_ratio)
    eval_every = config.eval_every or max(1, steps_per_epoch // 2)
    optimizer = torch.optim.AdamW(
        student.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )

    scheduler = warmup_linear_decay(optimizer, total_steps, warmup)
    lengths = [len(x) for x in ids]
    best_score, best_state, best_step = -1.0, None, 0
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    evals_without_gain, step, epoch, stop = 0, 0, 0, False
    progress = tqdm(total=total_steps, desc="distill", unit="step", mininterval=2.0)
    while step < total_steps and not stop:
        erng = random.Random(config.seed * 100_003 + epoch)
        order = list(range(len(ids)))
        erng.shuffle(order)
        batches = bucketed_batches(order, lambda i: lengths[i], config.batch_size, erng)
        for idx in batches:
            student.train()
            input_ids, mask = collate([ids[i] for i in idx], device)
            with torch.autocast(
                device_type=device.type, dtype=torch.bfloat16, enabled=bool(config.bf16)
            ):
                out = student(input_ids, mask)
            loss = distillation_loss(
                out,
                [p[idx].to(device) for p in soft],
                y[idx].to(device),
                config.temperature,
                config.hard_weight,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(float(loss.item()))
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", best=f"{best_score:.4f}")
            if step % eval_every == 0 or step == total_steps:
                reports = evaluate_tasks(student, tasks, device, bool(config.bf16))
                score = float(np.mean([r["official_score"] for r in reports.values()]))
                history.append(
                    {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 3),
                        "val_official": score,
                        "train_loss": round(float(np.mean(losses[-eval_every:])), 5),
                        **{f"val_{k}": round(r["official_score"], 5) for k, r in reports.items()},
                    }
                )
                tqdm.write(
                    f"step {step} mean={score:.4f} "
                    + " ".join(f"{k}={r['official_score']:.4f}" for k, r in reports.items())
                )
                if score > best_score:
                    best_score, best_step, evals_without_gain = score, step, 0
                    best_state = {
                        k: v.detach().clone().cpu() for k, v in student.state_dict().items()
                    }
                else:
                    evals_without_gain += 1
                    if evals_without_gain >= config.patience:
                        stop = True
            if step >= total_steps or stop:
                break
        epoch += 1
    progress.close()
    assert best_state is not None
    student.load_state_dict(best_state)
    student.to("cpu")
    final = evaluate_tasks(student, tasks, torch.device("cpu"), bf16=False)
    out_meta = {
        **{
            k: v
            for k, v in meta.items()
            if k not in {"tasks", "history", "val_metrics", "training_config", "validation"}
        },
        "kind": "sentistream-checkpoint",
        "distilled_from": [str(p) for p in config.teachers]
        + [f"{t}={p}" for t, p in parse_teacher_specs(config.task_teachers).items()],
        "teacher_val_metrics": teacher_reports,
        "student_layers": layers,
        **({"layer_search": layer_search} if layer_search else {}),
        "backbone": {**meta.get("backbone", {}), "num_hidden_layers": len(layers)},
        "transfer_set": {
            "labelled_texts": n_labelled,
            "unlabeled_texts": extra_count,
            "held_out_or_excluded": transfer.n_excluded,
            "excluded_sets": {str(p): fingerprint(p) for p in config.exclude},
            "unlabeled_sources": {str(p): fingerprint(p) for p in config.unlabeled},
        },
        "training_config": json.loads(config.model_dump_json()),
        "best_step": best_step,
        "steps": step,
        "history": history,
        "loss_start": round(float(np.mean(losses[: _window(losses)])), 5),
        "loss_end": round(float(np.mean(losses[-_window(losses) :])), 5),
        "val_metrics": final,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "device": str(device),
    }
    folder = save_checkpoint(student, tokenizer, config.output, out_meta)
    print(
        "student val "
        + " ".join(f"{k}={r['official_score']:.4f}" for k, r in final.items())
        + f" -> {folder}",
        flush=True,
    )
    return folder
