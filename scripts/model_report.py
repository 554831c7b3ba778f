"""Comparison tables of the v2 training runs, written into the model cards.

python scripts/model_report.py --default src/sentistream/models/tweet-sentiment/2 \
    --other src/sentistream/models/tweet-sentiment-teacher/1 --bench benchmarks/results/X.json

Reads the training checkpoints' ``checkpoint.json`` under ``runs/`` (single-task baselines,
multi-task, multi-task from the MLM-adapted encoder, distilled student), the v1 model's
manifest (the single-task sentiment baseline) and a ``bench_models.py`` result, writes
``benchmarks/results/model-comparison.json`` and adds the tables as sections of both model
cards (manifest ``report_sections``, README re-rendered).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sentistream.manifest import load_manifest
from sentistream.training.card import render_model_card

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["sentiment", "emotion", "hate", "irony", "offensive"]
EDA = "../../../../../docs/eda"  # from src/sentistream/models/<name>/<version>/README.md


def _meta(path: Path) -> dict[str, Any] | None:
    file = path / "checkpoint.json"
    return json.loads(file.read_text()) if file.exists() else None


def _score(meta: dict[str, Any] | None, task: str) -> float | None:
    if not meta:
        return None
    report = meta.get("val_metrics", {}).get(task)
    return None if report is None else float(report["official_score"])


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _delta(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{100 * (b - a):+.2f}"


def _int8(manifest: dict[str, Any], task: str) -> float | None:
    r = manifest.get("metrics", {}).get("validation", {}).get(task, {})
    return float(r["int8"]["official_score"]) if "int8" in r else None


def build(runs: Path, v1: Path, default: Path, other: Path, bench: Path | None) -> dict[str, Any]:
    single = {t: _meta(runs / f"single-{t}") for t in TASKS}
    v1_manifest = json.loads((v1 / "manifest.json").read_text()) if v1.exists() else {}
    if v1_manifest:
        fp32 = v1_manifest["metrics"]["validation"]["sentiment"]["fp32"]
        single["sentiment"] = {"val_metrics": {"sentiment": fp32}}
    multi, mlm, student = (
        _meta(runs / "multi-v2"),
        _meta(runs / "multi-mlm"),
        _meta(runs / "student-v2"),
    )
    manifests = {
        p: json.loads((p / "manifest.json").read_text()) for p in (default, other) if p.exists()
    }
    by_kind = {
        ("student" if m.get("backbone", {}).get("num_hidden_layers", 6) < 6 else "teacher"): m
        for m in manifests.values()
    }
    out: dict[str, Any] = {"tasks": {}}
    for t in TASKS:
        out["tasks"][t] = {
            "metric": (multi or {}).get("val_metrics", {}).get(t, {}).get("official_metric"),
            "single_task_fp32": _score(single[t], t),
            "multi_task_fp32": _score(multi, t),
            "multi_task_mlm_fp32": _score(mlm, t),
            "student_fp32": _score(student, t),
            "single_task_mlm_fp32": _score(_meta(runs / f"single-mlm-{t}"), t),
            "teacher_int8": _int8(by_kind.get("teacher", {}), t),
            "student_int8": _int8(by_kind.get("student", {}), t),
        }
    if bench and bench.exists():
        out["speed"] = json.loads(bench.read_text())
    if mlm is not None or (runs / "mlm-tweets").exists():
        adaptation = runs / "mlm-tweets" / "adaptation.json"
        out["adaptation"] = json.loads(adaptation.read_text()) if adaptation.exists() else {}
    return out


def sections(r: dict[str, Any]) -> list[dict[str, str]]:
    rows = r["tasks"]
    multi = [
        "Validation official metric of each task (fp32 checkpoints; points = percentage points).",
        "Single-task models: one fine-tune per task, same hyperparameters (3 epochs, lr 5e-5,",
        "batch 32, max length 128, seed 42; `make train-sentiment train-single`). Multi-task: one",
        "encoder, five heads, one pass (`make train-multitask`).",
        "",
        "| task | metric | single-task | multi-task | change (points) | within 1 point |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t, x in rows.items():
        a, b = x["single_task_fp32"], x["multi_task_fp32"]
        ok = "n/a" if a is None or b is None else ("yes" if b >= a - 0.01 else "**no**")
        multi.append(f"| {t} | {x['metric']} | {_fmt(a)} | {_fmt(b)} | {_delta(a, b)} | {ok} |")
    multi += [
        "",
        "Cost: five single-task models need five encoder passes per post; the multi-task model",
        "needs one (every head reads the same pooled encoding). Measured below: all five tasks",
        "at 0.87x the throughput of the single-task sentiment model, i.e. about 4.4x the",
        "throughput of running five single-task models (the multi-task export keeps 7 MatMuls in",
        "fp32 to hold int8/fp32 agreement on every task, v1 keeps 4).",
        "",
        "Not met: the multi-task model loses more than 1 point on sentiment (-1.0), hate, irony",
        "and offensive. It was trained for 2.5 task-balanced epochs (45 min on 2 CPU cores); the",
        "validation scores were still rising when the schedule ended.",
    ]
    eda = [
        "Data reports (`make eda`: classes, lengths in characters and tokens, URLs/mentions/emoji/",
        "escapes, duplicates and train/validation overlap, frequent words per class):",
        "",
    ]
    eda += [
        f"- TweetEval {t}: [docs/eda/tweeteval-{t}]({EDA}/tweeteval-{t}/README.md)" for t in TASKS
    ]
    out = [
        {"title": "Data (EDA)", "markdown": "\n".join(eda)},
        {"title": "Multi-task vs single-task", "markdown": "\n".join(multi)},
    ]
    multi_mlm = any(x["multi_task_mlm_fp32"] is not None for x in rows.values())
    single_mlm = any(x["single_task_mlm_fp32"] is not None for x in rows.values())
    if multi_mlm or single_mlm:
        ad = r.get("adaptation", {})
        mlm = [
            "Continued masked-language-model pretraining of the backbone on unlabeled tweets and",
            f"the training texts ({ad.get('texts', 'n/a')} texts, validation texts excluded;",
            f"{ad.get('config', {}).get('steps', 'n/a')} steps of "
            f"{ad.get('config', {}).get('batch_size', 'n/a')}; MLM loss "
            f"{ad.get('loss_start', 'n/a')} -> {ad.get('loss_end', 'n/a')}; `make adapt-tweets`),",
            "then the same fine-tune from the adapted encoder: "
            + (
                "the multi-task run (`make train-multitask-mlm`)."
                if multi_mlm
                else "single-task runs of the tasks it was run on (`make train-single-mlm`), "
                "against the single-task baselines trained the same way."
            ),
            "",
            "| task | original backbone | MLM-adapted backbone | change (points) |",
            "| --- | --- | --- | --- |",
        ]
        key_a, key_b = (
            ("multi_task_fp32", "multi_task_mlm_fp32")
            if multi_mlm
            else ("single_task_fp32", "single_task_mlm_fp32")
        )
        for t, x in rows.items():
            a, b = x[key_a], x[key_b]
            if b is not None:
                mlm.append(f"| {t} | {_fmt(a)} | {_fmt(b)} | {_delta(a, b)} |")
        out.append({"title": "Domain adaptation (MLM on tweets)", "markdown": "\n".join(mlm)})
    if any(x["student_int8"] is not None for x in rows.values()):
        ts = [
            "Shipped int8 models, validation official metric per task; the student keeps layers",
            "0, 2, 4 of the teacher and learns its soft labels on the labelled texts plus 30,000",
            "unlabeled tweets (`make distill-student`).",
            "",
            "| task | teacher (6 layers) | student (3 layers) | change (points) |",
            "| --- | --- | --- | --- |",
        ]
        for t, x in rows.items():
            a, b = x["teacher_int8"], x["student_int8"]
            ts.append(f"| {t} | {_fmt(a)} | {_fmt(b)} | {_delta(a, b)} |")
        out.append({"title": "Teacher vs student", "markdown": "\n".join(ts)})
    speed = r.get("speed")
    if speed:
        m = speed["machine"]
        sp = [
            f"Classifier core (int8 ONNX, all tasks of each model) on {m['cpu']}, {m['cores']}",
            f"cores; {speed['data']}; median of {speed['repeats']} interleaved rounds in one run:",
            f"`{speed['command']}`.",
            "",
            "| model | layers | tasks | size MB | texts/s | spread | ratio |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for x in speed["models"].values():
            s = x["texts_per_s"]
            sp.append(
                f"| {x['model']} | {x['layers']} | {len(x['tasks'])} | {x['model_mb']} | "
                f"{s['median']:.0f} | {s['min']:.0f}-{s['max']:.0f} | {x['ratio_vs_first']}x |"
            )
        out.append({"title": "Speed side by side", "markdown": "\n".join(sp)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument(
        "--v1", type=Path, default=ROOT / "src/sentistream/models/tweet-sentiment/1"
    )
    parser.add_argument("--default", type=Path, required=True, help="default model version folder")
    parser.add_argument("--other", type=Path, required=True, help="second model version folder")
    parser.add_argument("--bench", type=Path, help="bench_models.py result JSON")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks/results/model-comparison.json"
    )
    args = parser.parse_args()
    report = build(args.runs, args.v1, args.default, args.other, args.bench)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    secs = sections(report)
    for folder in (args.default, args.other):
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["report_sections"] = secs
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        load_manifest(folder)
        (folder / "README.md").write_text(render_model_card(manifest))
    for s in secs:
        print(f"## {s['title']}\n\n{s['markdown']}\n")


if __name__ == "__main__":
    main()
