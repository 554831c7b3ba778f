"""Multi-task training, loss masking, resume, distillation and MLM adaptation on tiny models the
test builds (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sentistream.config import Settings  # noqa: E402
from sentistream.runtime import load_classifier  # noqa: E402
from sentistream.testing import tiny_backbone_folder  # noqa: E402

pytestmark = pytest.mark.train

POS = ["love", "great", "happy", "best", "awesome", "amazing", "nice", "fun", "glad", "win"]
NEG = ["hate", "bad", "worst", "awful", "terrible", "sad", "angry", "horrible", "sick", "fail"]
NEU = ["day", "today", "game", "movie", "music", "food", "show", "team", "time", "people"]


def _write_task(folder: Path, rows: dict[str, list[tuple[str, int]]], labels: list[str]) -> Path:
    folder.mkdir(parents=True)
    for split, data in rows.items():
        (folder / f"{split}_text.txt").write_text("\n".join(t for t, _ in data) + "\n")
        (folder / f"{split}_labels.txt").write_text("\n".join(str(y) for _, y in data) + "\n")
    (folder / "mapping.txt").write_text("".join(f"{i}\t{n}\n" for i, n in enumerate(labels)))
    return folder


def _sent(words: list[str], rng: random.Random) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(2, 5))) + " " + rng.choice(NEU)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_backbone_folder(tmp_path_factory.mktemp("backbone"), layers=4)


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sentiment (3 labels, 150 train) and a smaller binary 'irony' task (labels: does the
    text contain 'game'), with different texts: no text has both labels."""
    root = tmp_path_factory.mktemp("tweeteval")
    rng = random.Random(0)

    def sentiment(n: int) -> list[tuple[str, int]]:
        rows = [(_sent(NEG, rng), 0) for _ in range(n)] + [(_sent(POS, rng), 2) for _ in range(n)]
        rows += [(" ".join(rng.choice(NEU) for _ in range(4)), 1) for _ in range(n)]
        rng.shuffle(rows)
        return rows

    def irony(n: int) -> list[tuple[str, int]]:
        rows = []
        for _ in range(n):
            words = [rng.choice(POS + NEG + NEU) for _ in range(4)]
            flag = rng.random() < 0.5
            if flag:
                words[rng.randrange(4)] = "game"
            else:
                words = [w if w != "game" else "show" for w in words]
            rows.append((" ".join(words), int(flag)))
        return rows

    return {
        "sentiment": _write_task(
            root / "sentiment",
            {"train": sentiment(50), "val": sentiment(12)},
            ["negative", "neutral", "positive"],
        ),
        "irony": _write_task(
            root / "irony", {"train": irony(60), "val": irony(30)}, ["non_irony", "irony"]
        ),
    }


def _config(two_tasks: dict[str, Path], backbone: Path, output: Path, **kw: object):  # type: ignore[no-untyped-def]
    from sentistream.training.finetune import FinetuneConfig

    base = dict(
        tasks=[f"{name}={path}" for name, path in two_tasks.items()],
        output=output,
        base_model=str(backbone),
        epochs=6,
        batch_size=16,
        lr=3e-3,
        max_length=32,
        eval_every=5,
        patience=100,
        seed=1,
        threads=1,
        bf16=False,
    )
    base.update(kw)
    return FinetuneConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def multitask(
    two_tasks: dict[str, Path], tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from sentistream.training.finetune import finetune

    return finetune(_config(two_tasks, tiny_backbone, tmp_path_factory.mktemp("mt") / "run"))


def test_task_sample_counts() -> None:
    from sentistream.training.finetune import task_sample_counts

    sizes = [45_000, 3_000, 9_000]
    assert task_sample_counts(sizes, 1.0) == sizes
    uniform = task_sample_counts(sizes, 0.0)
    assert sum(uniform) == sum(sizes) and max(uniform) - min(uniform) <= 1
    mid = task_sample_counts(sizes, 0.5)
    assert sum(mid) == sum(sizes)
    assert mid[0] < sizes[0] and mid[1] > sizes[1]  # the big task gives up share
    with pytest.raises(ValueError):
        task_sample_counts([10, 0], 0.5)


def test_masked_loss_ignores_missing_labels() -> None:
    from sentistream.training.finetune import IGNORE, masked_multitask_loss

    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 2, requires_grad=True)
    labels = torch.tensor([[0, IGNORE], [2, IGNORE], [IGNORE, 1], [1, IGNORE]])
    loss = masked_multitask_loss((a, b), labels, [None, None])
    loss.backward()
    # Rows without a label for a task send that task's head no gradient.
    assert torch.all(a.grad[2] == 0) and torch.all(b.grad[[0, 1, 3]] == 0)
    assert torch.any(a.grad[0] != 0) and torch.any(b.grad[2] != 0)
    ce = torch.nn.functional.cross_entropy
    expected = (
        ce(a[[0, 1, 3]], labels[[0, 1, 3], 0], reduction="sum")
        + ce(b[[2]], labels[[2], 1], reduction="sum")
    ) / 4
    assert torch.isclose(loss, expected)
    # Changing a masked label changes nothing.
    other = labels.clone()
    other[2, 0] = IGNORE
    assert torch.isclose(masked_multitask_loss((a, b), other, [None, None]), loss)
    none = torch.full((4, 2), IGNORE)
    assert masked_multitask_loss((a, b), none, [None, None]).item() == 0.0


def test_soft_targets_replace_gold_only_for_taught_tasks() -> None:
    from sentistream.training.finetune import IGNORE, masked_multitask_loss

    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 2, requires_grad=True)
    labels = torch.tensor([[0, IGNORE], [2, IGNORE], [IGNORE, 1], [1, IGNORE]])
    weights = [torch.tensor([0.5, 1.0, 2.0]), None]
    hard = masked_multitask_loss((a, b), labels, weights)
    # One-hot soft targets (gold share 1, the end of annealing) give the plain loss.
    onehot = torch.zeros(4, 3)
    for row in (0, 1, 3):
        onehot[row, labels[row, 0]] = 1.0
    assert torch.isclose(masked_multitask_loss((a, b), labels, weights, 0.0, [onehot, None]), hard)
    # A teacher distribution: soft cross-entropy weighted by the gold label's class weight,
    # unlabelled rows (row 2 for task a) ignored whatever their target says.
    teacher = torch.softmax(torch.randn(4, 3), dim=-1)
    teacher[2] = torch.tensor([1.0, 0.0, 0.0])
    loss = masked_multitask_loss((a, b), labels, weights, 0.0, [teacher, None])
    log_p = torch.log_softmax(a, dim=-1)
    soft_a = sum(-(teacher[r] * log_p[r]).sum() * weights[0][labels[r, 0]] for r in (0, 1, 3))
    hard_b = torch.nn.functional.cross_entropy(b[[2]], labels[[2], 1], reduction="sum")
    assert torch.isclose(loss, (soft_a + hard_b) / 4)
    loss.backward()
    assert torch.all(a.grad[2] == 0)


def test_annealed_targets_move_from_teacher_to_gold() -> None:
    from sentistream.training.finetune import TaskData, _annealed_targets

    task = TaskData("t", ["x", "y"], [[1], [2]], [0, 1], [], [], Path("."))
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    batch = [(0, 1), (1, 0), (0, 0)]  # row 1 belongs to another task
    cpu = torch.device("cpu")
    (start, other) = _annealed_targets(batch, [task, task], [probs, None], 0.0, cpu)  # type: ignore[misc]
    assert other is None
    torch.testing.assert_close(start, torch.tensor([[0.6, 0.4], [0.0, 0.0], [0.2, 0.8]]))
    (mid, _) = _annealed_targets(batch, [task, task], [probs, None], 0.5, cpu)  # type: ignore[misc]
    torch.testing.assert_close(mid, torch.tensor([[0.3, 0.7], [0.0, 0.0], [0.6, 0.4]]))
    assert _annealed_targets(batch, [task], [None], 0.3, cpu) is None


def test_multitask_with_single_task_teachers(
    multitask: Path, two_tasks: dict[str, Path], tiny_backbone: Path, tmp_path: Path
) -> None:
    """A teacher per task, one a training checkpoint and one an exported model folder: scored
    once, cached, recorded in the checkpoint; the student still learns every task."""
    from sentistream.training.export import ExportConfig, export
    from sentistream.training.finetune import finetune

    served = export(
        ExportConfig(checkpoint=multitask, output=tmp_path / "teacher" / "1", min_agreement=0.8)
    )
    out = finetune(
        _config(
            two_tasks,
            tiny_backbone,
            tmp_path / "bam",
            teachers=[f"sentiment={multitask}", f"irony={served}"],
        )
    )
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["teachers"] == {"sentiment": str(multitask), "irony": str(served)}
    assert meta["val_metrics"]["sentiment"]["official_score"] >= 0.8
    assert meta["val_metrics"]["irony"]["official_score"] >= 0.7
    with np.load(out / "teacher_irony.npz") as z:
        probs = z["probs"]
    assert probs.shape == (60, 2) and np.allclose(probs.sum(-1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="does not train"):
        finetune(_config(two_tasks, tiny_backbone, tmp_path / "x", teachers=[f"hate={served}"]))


def test_selection_against_references_keeps_the_smallest_worst_gap(
    two_tasks: dict[str, Path], tiny_backbone: Path, tmp_path: Path
) -> None:
    """With reference scores the kept weights are those whose worst task gap is smallest (the
    multi-task goal), not the best mean; bad reference specs are refused before training."""
    from sentistream.training.finetune import finetune, parse_reference_scores, selection_score

    assert selection_score({"a": 0.7, "b": 0.9}, {}) == pytest.approx(0.8)
    assert selection_score({"a": 0.7, "b": 0.9}, {"a": 0.75, "b": 0.8}) == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="TASK=SCORE"):
        parse_reference_scores(["sentiment"], ["sentiment"])
    with pytest.raises(ValueError, match="not a number, checkpoint or model folder"):
        parse_reference_scores([f"sentiment={tmp_path}"], ["sentiment"])
    with pytest.raises(ValueError, match="exactly the trained tasks"):
        parse_reference_scores(["sentiment=0.7"], ["sentiment", "irony"])
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "checkpoint.json").write_text(
        json.dumps({"val_metrics": {"irony": {"official_score": 0.95}}})
    )
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "manifest.json").write_text(
        json.dumps({"metrics": {"validation": {"irony": {"fp32": {"official_score": 0.6}}}}})
    )
    assert parse_reference_scores([f"irony={tmp_path / 'served'}"], ["irony"]) == {"irony": 0.6}
    with pytest.raises(ValueError, match="no validation score for sentiment"):
        parse_reference_scores([f"sentiment={tmp_path / 'served'}"], ["sentiment"])
    refs = ["sentiment=0.5", f"irony={tmp_path / 'single'}"]
    out = finetune(
        _config(two_tasks, tiny_backbone, tmp_path / "sel", epochs=3, select_against=refs)
    )
    meta = json.loads((out / "checkpoint.json").read_text())
    history = meta["history"]
    for h in history:
        gap = min(h["val_sentiment"] - 0.5, h["val_irony"] - 0.95)
        assert h["worst_gap"] == pytest.approx(gap, abs=1e-4)
    best = max(history, key=lambda h: h["worst_gap"])
    assert meta["best_step"] == best["step"]
    assert meta["val_metrics"]["irony"]["official_score"] == pytest.approx(
        best["val_irony"], abs=1e-4
    )


def test_weight_average_follows_the_formula_and_is_what_gets_kept(
    two_tasks: dict[str, Path], tiny_backbone: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from sentistream.training.backbone import load_backbone
    from sentistream.training.finetune import WeightAverage, finetune
    from sentistream.training.model import MultiTaskModel

    encoder, _, _ = load_backbone(str(tiny_backbone))
    model = MultiTaskModel(encoder, {"a": ["x", "y"]})
    average = WeightAverage(model, decay=0.99)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(model, step=1)  # ramp: d = min(0.99, 2/11)
    d = 2 / 11
    for key, old in before.items():
        if old.dtype.is_floating_point:
            new = model.state_dict()[key]
            torch.testing.assert_close(average.model.state_dict()[key], d * old + (1 - d) * new)
    assert not any(p.requires_grad for p in average.model.parameters())

    # with --ema the checkpoint holds the average, not the last trained weights (one
    # evaluation, at the last step, so that is the kept state)
    out = finetune(
        _config(two_tasks, tiny_backbone, tmp_path / "ema", epochs=2, eval_every=10_000, ema=0.9)
    )
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["training_config"]["ema"] == 0.9
    assert meta["best_step"] == meta["steps"] and len(meta["history"]) == 1
    state = load_file(str(tmp_path / "ema" / "resume" / "state.safetensors"))
    saved = load_file(str(out / "model.safetensors"))
    moved = 0
    for key, value in saved.items():
        torch.testing.assert_close(value, state[f"ema.{key}"])
        if value.dtype.is_floating_point:
            moved += not torch.allclose(value, state[f"model.{key}"])
    assert moved > len(saved) // 2


def test_multitask_model_learns_every_task(multitask: Path) -> None:
    meta = json.loads((multitask / "checkpoint.json").read_text())
    assert meta["task_order"] == ["sentiment", "irony"]
    assert meta["primary_task"] == "sentiment"
    assert meta["val_metrics"]["sentiment"]["official_score"] >= 0.8
    assert meta["val_metrics"]["irony"]["official_metric"] == "f1_irony"
    assert meta["val_metrics"]["irony"]["official_score"] >= 0.8
    assert set(meta["task_data"]) == {"sentiment", "irony"}
    assert meta["history"][0]["val_sentiment"] is not None


def test_multitask_export_one_pass_and_task_selection(
    multitask: Path, two_tasks: dict[str, Path], tmp_path: Path
) -> None:
    import onnx

    from sentistream.training.export import ExportConfig, export

    folder = export(
        ExportConfig(checkpoint=multitask, output=tmp_path / "toy" / "1", min_agreement=0.8)
    )
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["logits_sentiment", "logits_irony"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["metrics"]["validation"]) == {"sentiment", "irony"}
    for task in ("sentiment", "irony"):
        cal = manifest["metrics"]["calibration"][task]
        assert cal["ece_after"] <= cal["ece_before"] + 0.02
        assert manifest["tasks"][task]["temperature"] == pytest.approx(cal["temperature"])

    clf = load_classifier(Settings(model_repository=tmp_path, model="toy", intra_op_threads=1))
    calls = []
    forward = clf.backend.forward

    def counting(*args: object) -> object:
        calls.append(1)
        return forward(*args)  # type: ignore[arg-type]

    clf.backend.forward = counting  # type: ignore[method-assign]
    (full,) = clf.classify(["i love this game"])
    assert len(calls) == 1  # one encoder pass serves both tasks
    assert full.label in {"negative", "neutral", "positive"}
    assert set(full.tasks["sentiment"].scores) == {"negative", "neutral", "positive"}
    assert set(full.tasks) == {"sentiment", "irony"}
    record = full.to_dict()  # what REST answers and what result records carry
    assert record["label"] == full.label and set(record["tasks"]) == {"irony"}
    assert record["tasks"]["irony"]["label"] in {"irony", "non_irony"}

    (only,) = clf.classify(["i love this game"], tasks=["irony"])
    assert set(only.tasks) == {"irony"}


@pytest.mark.parametrize("ema", [0.0, 0.9], ids=["raw", "ema"])
def test_interrupted_run_resumes_to_the_same_weights(
    two_tasks: dict[str, Path],
    tiny_backbone: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ema: float,
) -> None:
    from safetensors.torch import load_file

    import sentistream.training.finetune as ft

    kw = dict(epochs=2, eval_every=4, ema=ema)
    straight = ft.finetune(_config(two_tasks, tiny_backbone, tmp_path / "a", **kw))

    real = ft.evaluate_tasks
    calls = []

    def crash_on_third(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ft, "evaluate_tasks", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(_config(two_tasks, tiny_backbone, tmp_path / "b", **kw))
    progress = json.loads((tmp_path / "b" / "resume" / "progress.json").read_text())
    assert progress["step"] == 8  # state of the last completed evaluation
    monkeypatch.setattr(ft, "evaluate_tasks", real)
    resumed = ft.finetune(_config(two_tasks, tiny_backbone, tmp_path / "b", resume=True, **kw))

    a, b = (
        load_file(str(straight / "model.safetensors")),
        load_file(str(resumed / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    meta_a = json.loads((straight / "checkpoint.json").read_text())
    meta_b = json.loads((resumed / "checkpoint.json").read_text())
    assert meta_a["steps"] == meta_b["steps"] and meta_a["best_step"] == meta_b["best_step"]


def test_distillation_student_learns_from_teacher(
    multitask: Path, two_tasks: dict[str, Path], tmp_path: Path
) -> None:
    from sentistream.training.distill import DistillConfig, distill
    from sentistream.training.model import load_checkpoint

    unlabeled = tmp_path / "stream.jsonl"
    rng = random.Random(5)
    lines = [
        json.dumps({"id": str(i), "text": _sent(rng.choice([POS, NEG, NEU]), rng)})
        for i in range(80)
    ]
    unlabeled.write_text("\n".join(lines) + "\n")
    out = distill(
        DistillConfig(
            teachers=[multitask],
            output=tmp_path / "student",
            unlabeled=[unlabeled],
            layers=[0, 2],
            task_teachers=[f"irony={multitask}"],
            epochs=4,
            batch_size=16,
            lr=3e-3,
            eval_every=10,
            threads=1,
            bf16=False,
        )
    )
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["loss_end"] < meta["loss_start"]  # distillation reduces the loss
    assert meta["transfer_set"]["unlabeled_texts"] > 0
    assert meta["val_metrics"]["sentiment"]["official_score"] >= 0.7
    student, _, _ = load_checkpoint(out)
    teacher, _, _ = load_checkpoint(multitask)
    assert len(student.encoder.encoder.layer) == 2 < len(teacher.encoder.encoder.layer)
    assert student.task_names == teacher.task_names
    # Re-running reuses the cached teacher scores; the task teacher's are cached apart.
    assert list(out.glob("scores-*.npz")) and (out / "teacher_irony.npz").exists()
    assert meta["distilled_from"] == [str(multitask), f"irony={multitask}"]


def test_layer_search_scores_every_subset_and_keeps_the_best(
    multitask: Path, two_tasks: dict[str, Path], tmp_path: Path
) -> None:
    from sentistream.training.distill import DistillConfig, distill, pick_layers
    from sentistream.training.finetune import FinetuneConfig, load_tasks
    from sentistream.training.model import load_checkpoint

    teacher, tokenizer, _ = load_checkpoint(multitask)
    cfg = FinetuneConfig(
        tasks=[f"{n}={p}" for n, p in two_tasks.items()], output=tmp_path, max_length=32
    )
    tasks = load_tasks(cfg, tokenizer)
    layers, scores = pick_layers(teacher, tasks, 2, torch.device("cpu"))
    assert len(scores) == 6  # C(4, 2)
    assert scores[",".join(map(str, layers))] == max(scores.values())
    with pytest.raises(ValueError):
        pick_layers(teacher, tasks, 4, torch.device("cpu"))
    out = distill(
        DistillConfig(
            teachers=[multitask],
            output=tmp_path / "auto",
            layers=None,
            student_layers=2,
            epochs=1,
            batch_size=16,
            eval_every=5,
            threads=1,
            bf16=False,
        )
    )
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["student_layers"] == layers and len(meta["layer_search"]) == 6
    assert meta["backbone"]["num_hidden_layers"] == 2


def test_distillation_from_a_served_model_folder(
    multitask: Path, two_tasks: dict[str, Path], tiny_backbone: Path, tmp_path: Path
) -> None:
    """A shipped model (ONNX + manifest, no torch weights) teaches a student that starts from
    the base backbone's layers with fresh heads."""
    from sentistream.training.distill import DistillConfig, distill, manifest_meta
    from sentistream.training.export import ExportConfig, export
    from sentistream.training.model import load_checkpoint

    folder = export(
        ExportConfig(checkpoint=multitask, output=tmp_path / "toy" / "1", min_agreement=0.8)
    )
    meta, labels = manifest_meta(folder)
    assert list(labels) == ["sentiment", "irony"] and labels["irony"] == ["non_irony", "irony"]
    assert set(meta["task_data"]) == {"sentiment", "irony"} and meta["max_length"] == 32

    cfg = dict(
        teachers=[folder],
        student_base=str(tiny_backbone),
        layers=[0, 1],
        epochs=6,
        batch_size=16,
        lr=3e-3,
        eval_every=10,
        threads=1,
        bf16=False,
    )
    with pytest.raises(ValueError, match="layers"):
        distill(DistillConfig(**{**cfg, "layers": None, "output": tmp_path / "x"}))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a mix"):
        distill(
            DistillConfig(**{**cfg, "teachers": [folder, multitask], "output": tmp_path / "y"})  # type: ignore[arg-type]
        )
    out = distill(DistillConfig(**{**cfg, "output": tmp_path / "student"}))  # type: ignore[arg-type]
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["loss_end"] < meta["loss_start"]
    assert meta["val_metrics"]["sentiment"]["official_score"] >= 0.7
    assert meta["base_model"] == str(tiny_backbone)
    assert set(meta["teacher_val_metrics"]) == {"sentiment", "irony"}  # the manifest's figures
    student, _, _ = load_checkpoint(out)
    assert len(student.encoder.encoder.layer) == 2
    assert student.task_names == ["sentiment", "irony"]
    logits = np.load(out / "teacher_logits.npz")["logits_sentiment"]
    assert logits.shape[1] == 3 and np.all(logits <= 0)  # log-probabilities of the ONNX teacher


def test_a_task_teacher_joins_the_ensemble_mean() -> None:
    from sentistream.training.distill import join_ensemble

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    pa = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    pb = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.exp(join_ensemble(a, 1, pb)), (pa + pb) / 2, rtol=1e-5)
    # Two models already averaged count twice: the newcomer gets a third.
    np.testing.assert_allclose(np.exp(join_ensemble(a, 2, pb)), (2 * pa + pb) / 3, rtol=1e-5)
    # The same distribution joining changes nothing.
    np.testing.assert_allclose(np.exp(join_ensemble(a, 1, pa)), pa, rtol=1e-5)


def test_distillation_loss_is_zero_when_student_matches_teacher() -> None:
    from sentistream.training.distill import distillation_loss
    from sentistream.training.finetune import IGNORE

    logits = torch.randn(5, 3)
    probs = torch.softmax(logits / 2.0, dim=-1)
    labels = torch.full((5, 1), IGNORE)
    assert distillation_loss((logits,), [probs], labels, 2.0, 0.0).item() == pytest.approx(
        0, abs=1e-6
    )
    worse = distillation_loss((-logits,), [probs], labels, 2.0, 0.0).item()
    assert worse > 0.01


def test_mlm_adaptation_lowers_loss_and_yields_a_backbone(
    tiny_backbone: Path, two_tasks: dict[str, Path], tmp_path: Path
) -> None:
    from sentistream.training.backbone import load_backbone
    from sentistream.training.mlm import MlmConfig, pretrain_mlm

    out = pretrain_mlm(
        MlmConfig(
            data=[two_tasks["sentiment"], two_tasks["irony"]],
            exclude_val=[two_tasks["sentiment"]],
            output=tmp_path / "adapted",
            base_model=str(tiny_backbone),
            steps=150,
            head_steps=20,
            batch_size=16,
            lr=3e-3,
            max_length=32,
            threads=1,
            bf16=False,
        )
    )
    report = json.loads((out / "adaptation.json").read_text())
    assert report["loss_end"] < report["loss_start"] - 0.2
    encoder, tokenizer, _ = load_backbone(str(out))
    assert encoder.config.num_hidden_layers == 4 and tokenizer.token_to_id("[MASK]") is not None


def test_mask_tokens_never_masks_special_or_padding() -> None:
    from sentistream.training.mlm import mask_tokens

    ids = torch.tensor([[101, 5, 6, 7, 102, 0], [101, 8, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        masked, labels = mask_tokens(ids, mask, [101, 102, 0], 103, 200, 0.5, gen)
        predicted = labels != -100
        assert predicted.any()
        assert not predicted[(ids == 101) | (ids == 102) | (ids == 0)].any()
        assert torch.equal(labels[predicted], ids[predicted])
        assert torch.equal(masked[~predicted], ids[~predicted])


def test_head_tail_truncation_keeps_both_ends() -> None:
    from sentistream.text import head_tail_ids

    ids = [101, *range(1, 1001), 102]
    out = head_tail_ids(ids, 10)
    assert len(out) == 10 and out[0] == 101 and out[-1] == 102
    assert out[1:3] == [1, 2] and out[3:9] == list(range(995, 1001))
    assert head_tail_ids([101, 1, 2, 102], 10) == [101, 1, 2, 102]


def test_temperature_scaling_fixes_overconfidence() -> None:
    from sentistream.training.calibration import calibrate, expected_calibration_error

    rng = np.random.default_rng(0)
    n = 2000
    labels = rng.integers(0, 3, n)
    clean = rng.normal(0, 1, (n, 3))
    clean[np.arange(n), labels] += 1.5
    overconfident = clean * 4.0  # right ranking, far too sharp
    report = calibrate(overconfident, labels)
    assert report["temperature"] > 2.0
    assert report["ece_after"] < report["ece_before"] / 2
    assert report["nll_after"] < report["nll_before"]
    perfect = np.eye(3)[labels] * 0.9 + 0.1 / 3
    top = 0.9 + 0.1 / 3  # every prediction right, stated with 93.3% confidence
    assert expected_calibration_error(perfect, labels) == pytest.approx(1 - top, abs=1e-6)


def test_eda_report_on_a_generated_dataset(two_tasks: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from sentistream.eda import eda

    folder = two_tasks["sentiment"]
    # An exact duplicate of a train text in val, an escape, a URL, an emoji and a mention.
    train_text = (folder / "train_text.txt").read_text().splitlines()
    extra = tmp_path / "data"
    extra.mkdir()
    for name in ("mapping.txt", "train_labels.txt", "val_labels.txt"):
        (extra / name).write_text((folder / name).read_text())
    val = (folder / "val_text.txt").read_text().splitlines()
    val[0] = train_text[0]
    val[1] = "love it \\u2019 http://x.co @bob 😂"
    (extra / "val_text.txt").write_text("\n".join(val) + "\n")
    (extra / "train_text.txt").write_text("\n".join(train_text) + "\n")

    report = eda(extra, tmp_path / "out", name="toy")
    for png in ("classes.png", "length_chars.png", "length_tokens.png", "surface.png"):
        data = (tmp_path / "out" / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 2000
    md = (tmp_path / "out" / "README.md").read_text()
    assert md.startswith("# EDA: toy") and "![class proportions](classes.png)" in md
    assert report["splits"]["train"]["n"] == 150 and report["splits"]["val"]["n"] == 36
    assert report["splits"]["train"]["class_counts"] == {
        "negative": 50,
        "neutral": 50,
        "positive": 50,
    }
    assert report["train_val_overlap"]["val_texts_in_train"] >= 1
    surface = report["splits"]["val"]["surface"]
    assert surface["url"] > 0 and surface["mention"] > 0 and surface["emoji"] > 0
    assert surface["literal_escape"] > 0 and report["splits"]["train"]["surface"]["url"] == 0
    assert report["splits"]["train"]["top_words"]["positive"][0][0] in POS + NEU
    assert json.loads((tmp_path / "out" / "eda.json").read_text())["labels"][0] == "negative"


def test_reviews_model_from_two_sources_with_head_tail(tiny_backbone: Path, tmp_path: Path) -> None:
    """One binary task from a TSV (SST-2 layout) and a CSV (IMDB layout), a cap on one
    source, integer labels named, long texts cut head+tail; export reports each source."""
    import csv

    from sentistream.training.export import ExportConfig, export
    from sentistream.training.finetune import finetune

    rng = random.Random(7)
    short = tmp_path / "sst2.tsv"
    with short.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["sentence", "label"])
        for _ in range(60):
            w.writerow([_sent(POS, rng), 1])
            w.writerow([_sent(NEG, rng), 0])
    long = tmp_path / "imdb.csv"
    with long.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label", "text"])
        for i in range(80):
            y = i % 2
            filler = " ".join(rng.choice(NEU) for _ in range(60))  # the verdict is at the end
            w.writerow([i, y, f"{filler} {_sent(POS if y else NEG, rng)}"])
    ck = finetune(
        _config(
            {},
            tiny_backbone,
            tmp_path / "ck",
            tasks=[f"reviews={short},{long}@50"],
            label_names=["negative", "positive"],
            truncation="head_tail",
            max_length=24,
            epochs=8,
        )
    )
    meta = json.loads((ck / "checkpoint.json").read_text())
    assert meta["tasks"] == {"reviews": ["negative", "positive"]}
    assert meta["task_data"]["reviews"]["train_examples"] == 108 + 50  # 90% of 120, cap 50
    assert set(meta["val_metrics_by_source"]) == {f"reviews:{short}", f"reviews:{long}"}
    assert meta["val_metrics"]["reviews"]["official_metric"] == "accuracy"
    assert meta["val_metrics_by_source"][f"reviews:{long}"]["accuracy"] >= 0.75  # needs the tail

    folder = export(
        ExportConfig(checkpoint=ck, output=tmp_path / "repo" / "reviews" / "1", min_agreement=0.8)
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["truncation"] == "head_tail" and manifest["max_length"] == 24
    validation = manifest["metrics"]["validation"]
    assert {"reviews", f"reviews:{tmp_path.name}"} <= set(validation)
    clf = load_classifier(Settings(model_repository=tmp_path / "repo", model="reviews"))
    assert clf.truncation == "head_tail"
    ids = clf.encode([" ".join(["day"] * 100) + " love"])[0]
    assert len(ids) == 24 and clf.tokenizer.id_to_token(ids[-2]) == "love"


def test_rebuild_quantizes_what_an_export_left_fp32_and_unfuses_layer_norm(
    multitask: Path, tmp_path: Path
) -> None:
    """A served folder whose export kept MatMuls in fp32 and fused LayerNorms -> a new version
    with every MatMul in int8 and Add + LayerNormalization, verified against the source on
    every task, recalibrated, with its own checksums and card; nothing left to rewrite (or an
    occupied output folder) is refused."""
    import onnx
    from onnx import TensorProto

    from sentistream.manifest import file_sha256, load_manifest
    from sentistream.training.export import ExportConfig, export
    from sentistream.training.quantize import quantize
    from sentistream.training.rebuild import RebuildConfig, rebuild

    src = export(
        ExportConfig(
            checkpoint=multitask,
            output=tmp_path / "toy" / "1",
            min_agreement=0.8,
            unfuse=False,  # as exports before the rewrite existed
        )
    )
    optimized = onnx.load(str(src / "model.onnx")).graph
    assert any(n.op_type == "SkipLayerNormalization" for n in optimized.node)
    fused = tmp_path / "fused.onnx"
    _fused_fp32_graph(multitask, fused)
    graph = onnx.load(str(fused)).graph
    kept = [n.name for n in graph.node if n.op_type == "MatMul"][:2]
    quantize(fused, src / "model.onnx", kept)  # an export that kept 2 MatMuls in fp32
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["quantization"]["fp32_nodes"] = kept
    manifest["files"]["model.onnx"] = file_sha256(src / "model.onnx")
    (src / "manifest.json").write_text(json.dumps(manifest))

    out = rebuild(RebuildConfig(source=src, output=tmp_path / "toy" / "2", command_line="c"))
    new = load_manifest(out)
    assert new.version == "2"
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["quantization"]["fp32_nodes"] == []
    assert raw["quantization"]["rebuilt_from"] == "toy:1"
    assert raw["quantization"]["unfused"] == {"SkipLayerNormalization": 8, "BiasGelu": 4}
    assert sorted(raw["quantization"]["requantized_nodes"]) == sorted(kept)
    assert raw["parent_version"] == "1" and raw["rebuild_command"] == "c"
    new_graph = onnx.load(str(out / "model.onnx")).graph
    fp32_weights = {i.name for i in new_graph.initializer if i.data_type == TensorProto.FLOAT}
    assert not [
        n.name for n in new_graph.node if n.op_type == "MatMul" and n.input[1] in fp32_weights
    ]
    ops = {n.op_type for n in new_graph.node}
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
    assert "BiasGelu" not in ops and "Gelu" in ops
    ver = raw["metrics"]["verification"]["tasks"]
    assert set(ver) == {"sentiment", "irony"}
    for task, v in ver.items():
        assert 0.8 <= v["argmax_agreement_with_source"] <= 1.0
        assert v["source_int8_official_score"] == pytest.approx(
            manifest["metrics"]["verification"]["tasks"][task]["int8_official_score"]
        )
        assert (
            raw["tasks"][task]["temperature"] == raw["metrics"]["calibration"][task]["temperature"]
        )
    assert "reference_profile" in raw
    card = (out / "README.md").read_text()
    assert "Rebuilt from toy:1" in card and "agreement with source" in card
    clf = load_classifier(Settings(model_repository=tmp_path, model="toy", intra_op_threads=1))
    assert clf.version == "2"
    assert clf.classify(["i love this game"])[0].label in {"negative", "neutral", "positive"}

    with pytest.raises(ValueError, match="nothing to rebuild"):
        rebuild(RebuildConfig(source=out, output=tmp_path / "toy" / "3"))
    assert not (tmp_path / "toy" / "3").exists()
    with pytest.raises(ValueError, match="not empty"):
        rebuild(RebuildConfig(source=src, output=out))


def test_rebuild_splits_quantized_attention_with_the_same_logits(
    multitask: Path, tmp_path: Path
) -> None:
    """An export with ORT's QAttention (as the shipped v2) -> Q, K and V as int8
    MatMulIntegerToFloat with the source's own weights + the standard Attention op (opset 23)
    and the standard Gelu; verified against the source: the same argmax on every text and
    logits equal to float rounding, padded batches of mixed lengths included (the key mask)."""
    import onnx

    from sentistream.training.export import ExportConfig, export
    from sentistream.training.rebuild import RebuildConfig, rebuild

    src = export(
        ExportConfig(
            checkpoint=multitask,
            output=tmp_path / "toy" / "1",
            min_agreement=0.8,
            split_attention=False,  # as exports before the rewrite existed
        )
    )
    source_ops = [n.op_type for n in onnx.load(str(src / "model.onnx")).graph.node]
    layers = source_ops.count("QAttention")
    assert layers == 4 and source_ops.count("Gelu") == 4
    only_split = {"quantize_all": False, "unfuse": False}
    out = rebuild(
        RebuildConfig(source=src, output=tmp_path / "toy" / "2", command_line="c", **only_split)
    )
    model = onnx.load(str(out / "model.onnx"))
    ops = [(n.op_type, n.domain) for n in model.graph.node]
    assert ("QAttention", "com.microsoft") not in ops and ("Gelu", "com.microsoft") not in ops
    assert ops.count(("Attention", "")) == layers and ops.count(("Gelu", "")) == layers
    assert ops.count(("MatMulIntegerToFloat", "com.microsoft")) == 3 * layers
    assert next(o.version for o in model.opset_import if o.domain == "") == 23
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["quantization"]["split_attention"] == {"QAttention": layers, "Gelu": layers}
    assert raw["quantization"]["opset"] == 23
    for task, v in raw["metrics"]["verification"]["tasks"].items():
        assert v["argmax_agreement_with_source"] == 1.0, task
        assert v["max_abs_logit_diff_vs_source"] < 1e-4, task
    assert "QAttention (4) and Gelu (4) nodes are standard ops" in (out / "README.md").read_text()

    texts = ["i love this game", "awful", "meh " * 20, "the show was great fun tonight"]
    got = load_classifier(Settings(model_repository=tmp_path, model="toy:2", intra_op_threads=1))
    want = load_classifier(Settings(model_repository=tmp_path, model="toy:1", intra_op_threads=1))
    for a, b in zip(got.classify(texts), want.classify(texts), strict=True):
        assert set(a.tasks) == set(b.tasks) == {"sentiment", "irony"}
        for task, p in a.tasks.items():
            assert p.label == b.tasks[task].label
            assert p.scores == pytest.approx(b.tasks[task].scores, abs=1e-4)

    with pytest.raises(ValueError, match="nothing to rebuild"):
        rebuild(RebuildConfig(source=out, output=tmp_path / "toy" / "3", **only_split))


def test_rebuild_makes_8_bit_weights_7_bit(multitask: Path, tmp_path: Path) -> None:
    """An export with 8-bit weights (reduce_range off, as exports before it became the default)
    -> every MatMulInteger/QAttention weight in [-64, 64] with its scale doubled, each real
    weight moved by at most one 8-bit step; recorded in the manifest; a 7-bit model has
    nothing left to rewrite."""
    import onnx
    from onnx import numpy_helper

    from sentistream.training.export import ExportConfig, export
    from sentistream.training.rebuild import RebuildConfig, rebuild

    src = export(
        ExportConfig(
            checkpoint=multitask,
            output=tmp_path / "toy" / "1",
            min_agreement=0.8,
            reduce_range=False,
        )
    )

    def weights(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        model = onnx.load(str(folder / "model.onnx"))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        names = {
            n.input[1]
            for n in model.graph.node
            if n.op_type in ("MatMulInteger", "MatMulIntegerToFloat", "QAttention")
        }
        return {
            w: (inits[w], inits[w[: -len("_quantized")] + "_scale"])
            for w in names
            if w in inits and inits[w].dtype == np.int8
        }

    only_seven_bit = {"quantize_all": False, "unfuse": False, "seven_bit_weights": True}
    before = weights(src)
    assert any("/q_weight" in name for name in before)  # the split attention's Q weights too
    assert before and max(int(np.abs(q.astype(np.int16)).max()) for q, _ in before.values()) > 64
    out = rebuild(
        RebuildConfig(
            source=src,
            output=tmp_path / "toy" / "2",
            min_agreement=0.8,
            max_drop=0.05,
            **only_seven_bit,
        )
    )
    after = weights(out)
    assert set(after) == set(before)
    for name, (q7, s7) in after.items():
        q8, s8 = before[name]
        assert int(np.abs(q7.astype(np.int16)).max()) <= 64
        np.testing.assert_allclose(s7, s8 * 2, rtol=1e-6)
        real8 = q8.astype(np.float32) * s8
        real7 = q7.astype(np.float32) * s7
        assert np.all(np.abs(real7 - real8) <= s8 * 1.0001)  # one 8-bit step at most
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["quantization"]["seven_bit_weights"] == len(before)
    assert raw["quantization"]["reduce_range"] is True
    assert "7-bit" in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="nothing to rebuild"):
        rebuild(RebuildConfig(source=out, output=tmp_path / "toy" / "3", **only_seven_bit))


def _fused_fp32_graph(checkpoint: Path, path: Path) -> None:
    """The fp32 graph of a checkpoint after ORT's transformer fusions (SkipLayerNorm included),
    as exports before the unfusing rewrite quantized it."""
    from sentistream.training.export import _export_fp32, _optimize
    from sentistream.training.model import load_checkpoint

    model, _, _ = load_checkpoint(checkpoint, attn_implementation="eager")
    raw = path.with_suffix(".raw.onnx")
    _export_fp32(model, raw, 17)
    _optimize(raw, path, model, gelu_approximation=False)


def _permuted_backbone(folder: Path) -> Path:
    """A tiny backbone whose tokenizer numbers the same words differently (another vocabulary,
    as MiniLM's is to MPNet's)."""
    from tokenizers import Tokenizer, models

    from sentistream.testing import tiny_backbone_folder, tiny_tokenizer

    tiny_backbone_folder(folder, layers=2, seed=7)
    tok = tiny_tokenizer()
    vocab = tok.get_vocab()
    specials = sorted((i, t) for t, i in vocab.items() if t.startswith("["))
    words = sorted((t for t in vocab if not t.startswith("[")), reverse=True)
    order = [t for _, t in specials] + words
    permuted = Tokenizer(models.WordPiece({t: i for i, t in enumerate(order)}, unk_token="[UNK]"))
    permuted.normalizer = tok.normalizer
    permuted.pre_tokenizer = tok.pre_tokenizer
    permuted.post_processor = tok.post_processor
    permuted.decoder = tok.decoder
    permuted.save(str(folder / "tokenizer.json"))
    return folder


def test_cross_tokenizer_student_from_a_weighted_ensemble(
    multitask: Path, two_tasks: dict[str, Path], tmp_path: Path
) -> None:
    from sentistream.training.distill import DistillConfig, distill
    from sentistream.training.model import load_checkpoint

    base = _permuted_backbone(tmp_path / "other-backbone")
    unlabeled = tmp_path / "stream.jsonl"
    rng = random.Random(9)
    texts = [_sent(rng.choice([POS, NEG, NEU]), rng) for _ in range(60)]
    unlabeled.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    banned = tmp_path / "check.jsonl"
    banned.write_text(json.dumps({"text": texts[0], "label": "neutral"}) + "\n")
    cache = tmp_path / "scores"

    def run(out: str, exclude: list[Path]) -> dict[str, object]:
        folder = distill(
            DistillConfig(
                teachers=[multitask, multitask],
                teacher_weights=[2.0, 1.0],
                teacher_cache=cache,
                student_base=str(base),
                output=tmp_path / out,
                unlabeled=[unlabeled],
                exclude=exclude,
                layers=[0, 1],
                epochs=6,
                batch_size=16,
                lr=3e-3,
                eval_every=20,
                threads=1,
                bf16=False,
            )
        )
        meta: dict[str, object] = json.loads((folder / "checkpoint.json").read_text())
        return meta

    meta = run("student", [banned])
    assert meta["val_metrics"]["sentiment"]["official_score"] >= 0.7  # type: ignore[index]
    assert meta["base_model"] == str(base)
    assert meta["teacher_val_metrics"]["sentiment"]["official_score"] >= 0.7  # type: ignore[index]
    # the student reads with its own backbone's tokenizer, not the teacher's
    student_tok = json.loads((tmp_path / "student" / "tokenizer.json").read_text())
    teacher_tok = json.loads((multitask / "tokenizer.json").read_text())
    assert student_tok["model"]["vocab"] != teacher_tok["model"]["vocab"]
    student, _, _ = load_checkpoint(tmp_path / "student")
    assert len(student.encoder.encoder.layer) == 2
    # one scoring per distinct text list, shared by the runs through the cache folder
    assert len(list(cache.glob("scores-*.npz"))) == 2  # transfer set + validation texts
    unbanned = run("student-2", [])
    transfer = meta["transfer_set"]
    assert unbanned["transfer_set"]["unlabeled_texts"] == transfer["unlabeled_texts"] + 1  # type: ignore[index]


def test_teacher_scoring_resumes_from_saved_chunks(
    multitask: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sentistream.training.finetune as finetune_module
    from sentistream.training.transfer import score_checkpoint

    rng = random.Random(2)
    texts = [_sent(rng.choice([POS, NEG, NEU]), rng) for _ in range(70)]
    full = score_checkpoint(multitask, texts, tmp_path / "a", chunk=1000)
    chunked = score_checkpoint(multitask, texts, tmp_path / "b", chunk=20)
    for x, y in zip(full, chunked, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    # an interrupted scoring: two chunks of four saved, no final file
    [final] = (tmp_path / "b").glob("scores-*.npz")
    parts = final.with_name(final.name.replace(".npz", ".parts"))
    parts.mkdir()
    for n in (0, 1):
        with np.load(final) as z:
            sliced = {f"logits_{i}": z[f"logits_{i}"][n * 20 : (n + 1) * 20] for i in range(2)}
        np.savez(parts / f"chunk-{n:05d}.npz", tasks=np.asarray(2), **sliced)
    final.unlink()
    calls: list[int] = []
    original = finetune_module.predict_logits

    def counting(model: object, ids: list[list[int]], *args: object, **kwargs: object) -> object:
        calls.append(len(ids))
        return original(model, ids, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(finetune_module, "predict_logits", counting)
    resumed = score_checkpoint(multitask, texts, tmp_path / "b", chunk=20)
    assert calls == [20, 10]  # only the two missing chunks were scored
    for x, y in zip(full, resumed, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    assert not parts.exists()


def test_decision_bias_balances_a_model_that_leans_negative() -> None:
    from sentistream.training.decision import fit_decision_bias

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=900)
    logits = rng.normal(scale=1.0, size=(900, 3))
    logits[np.arange(900), y] += 2.0
    logits[:, 0] += 1.6  # the lean: many neutral and positive texts come out negative
    names = ["negative", "neutral", "positive"]
    before = logits.argmax(1)
    neutral = y == 1
    assert (before[neutral] == 1).mean() < 0.65  # neutral recall is poor before
    bias, report = fit_decision_bias(logits, y, names)
    assert bias[0] == 0.0 and bias[1] > 0  # neutral lifted relative to negative
    assert report["floors_met"]
    after = (logits + np.asarray(bias)).argmax(1)
    assert (after[neutral] == 1).mean() >= 0.67
    assert report["after"]["per_class"]["negative"]["precision"] >= 0.62
    assert report["after"]["macro_recall"] > report["before"]["macro_recall"]


def test_balance_checkpoint_moves_the_head_bias(multitask: Path, tmp_path: Path) -> None:
    from sentistream.training.decision import balance_checkpoint
    from sentistream.training.model import load_checkpoint

    out = balance_checkpoint(multitask, tmp_path / "balanced")
    before, _, _ = load_checkpoint(multitask)
    after, _, meta = load_checkpoint(out)
    report = meta["decision_bias"]["sentiment"]
    offsets = torch.tensor(list(report["offsets"].values()))
    delta = after.heads["sentiment"].bias - before.heads["sentiment"].bias
    torch.testing.assert_close(delta, offsets, rtol=0, atol=1e-6)
    torch.testing.assert_close(after.heads["irony"].bias, before.heads["irony"].bias)
    assert meta["balanced_from"] == str(multitask) and after.task_names == before.task_names
    with pytest.raises(ValueError, match="already carries a decision bias"):
        balance_checkpoint(out, tmp_path / "twice")
