"""Comparison tables of the training runs, written into the model cards.

python scripts/model_report.py --teacher src/sentistream/models/tweet-multitask/3 \
    --student src/sentistream/models/tweet-sentiment/2 --bench benchmarks/results/X-models.json

Reads the training checkpoints' ``checkpoint.json`` under ``runs/`` (single-task runs, the
adaptation ablation, the multi-task run, the distilled student), the v1 sentiment model's
manifest (the single-task sentiment run), the two exported models' manifests (int8 figures) and
a ``bench_models.py`` result; writes ``benchmarks/results/model-comparison.json`` and adds the
tables as sections of both model cards (manifest ``report_sections``, README re-rendered).
Every sentence with a figure is computed from those files.
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
ABLATION = ["irony", "emotion", "hate"]
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


def _fp32(manifest: dict[str, Any], task: str) -> float | None:
    r = manifest.get("metrics", {}).get("validation", {}).get(task, {})
    return float(r["fp32"]["official_score"]) if "fp32" in r else None


def build(
    runs: Path,
    v1: Path,
    teacher: Path,
    student: Path | None,
    bench: Path | None,
    names: dict[str, str],
) -> dict[str, Any]:
    single = {t: _meta(runs / f"single-{t}") for t in TASKS}
    v1_manifest = json.loads((v1 / "manifest.json").read_text()) if v1.exists() else {}
    if v1_manifest:
        fp32 = v1_manifest["metrics"]["validation"]["sentiment"]["fp32"]
        single["sentiment"] = {"val_metrics": {"sentiment": fp32}}
    multi, distilled = _meta(runs / names["multi"]), _meta(runs / names["student"])
    multi_cfg = (multi or {}).get("training_config", {})
    t_manifest = json.loads((teacher / "manifest.json").read_text())
    s_manifest = json.loads((student / "manifest.json").read_text()) if student else {}
    out: dict[str, Any] = {"runs": names, "tasks": {}}
    for t in TASKS:
        out["tasks"][t] = {
            "metric": (multi or {}).get("val_metrics", {}).get(t, {}).get("official_metric"),
            "single_task_fp32": _score(single[t], t),
            "single_task_mlm_fp32": _score(_meta(runs / f"single-mlm-{t}"), t),
            "single_task_ema_fp32": _score(_meta(runs / f"single-ema-{t}"), t),
            "multi_task_fp32": _score(multi, t),
            "student_fp32": _score(distilled, t),
            "teacher_int8": _int8(t_manifest, t),
            "student_int8": _int8(s_manifest, t),
            "teacher_fp32": _fp32(t_manifest, t),
            "student_manifest_fp32": _fp32(s_manifest, t),
        }
    out["teacher"] = {"model": f"{t_manifest['name']}:{t_manifest['version']}"}
    if v1_manifest:
        out["default"] = {
            "model": f"{v1_manifest['name']}:{v1_manifest['version']}",
            "sentiment_int8": _int8(v1_manifest, "sentiment"),
        }
    out["student"] = {
        "model": f"{s_manifest.get('name')}:{s_manifest.get('version')}",
        "layers": s_manifest.get("training", {}).get("student_layers"),
        "layer_search": s_manifest.get("training", {}).get("layer_search"),
        "transfer_set": s_manifest.get("training", {}).get("transfer_set"),
        "distilled_from": s_manifest.get("training", {}).get("distilled_from"),
    }
    if bench and bench.exists():
        out["speed"] = json.loads(bench.read_text())
    probe = ROOT / "benchmarks/results/layer-probe.json"
    if probe.exists():
        out["layer_probe"] = json.loads(probe.read_text())
    out["has_multi_run"] = multi is not None
    out["multi_recipe"] = {
        "run": names["multi"],
        "epochs": multi_cfg.get("epochs"),
        "ema": multi_cfg.get("ema", 0.0),
        "selected_against_single_task": bool(multi_cfg.get("select_against")),
        "best_step": (multi or {}).get("best_step"),
        "steps": (multi or {}).get("steps"),
    }
    adaptation = runs / "mlm-tweets" / "adaptation.json"
    if adaptation.exists():
        out["adaptation"] = json.loads(adaptation.read_text())
    return out


def _within(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else ("yes" if b >= a - 0.01 else "**no**")


def _multi_section(r: dict[str, Any]) -> str:
    rows = r["tasks"]
    ema = any(x["single_task_ema_fp32"] is not None for x in rows.values())
    lines = [
        "Validation official metric of each task (fp32 checkpoints; points = percentage points).",
        "Single-task: one fine-tune per task (3 epochs, lr 5e-5, batch 32, max length 128,",
        "seed 42; `make train-single`; sentiment: the shipped `tweet-sentiment` v1, the same",
        "recipe). Multi-task: one encoder, five heads, one pass per post, the single-task models",
        "as teachers with annealing to the gold labels (" + _multi_recipe(r) + ").",
    ]
    if ema:
        lines += [
            "Single-task + EMA: the same single-task fine-tunes with the multi-task run's moving",
            "average of the weights (`make train-single-ema`), so that both sides are trained",
            "the same way.",
        ]
    head = "| task | metric | single-task | multi-task | change (points) | within 1 point |"
    sep = "| --- | --- | --- | --- | --- | --- |"
    if ema:
        head += " single-task + EMA | change (points) | within 1 point |"
        sep += " --- | --- | --- |"
    lines += ["", head, sep]
    misses: dict[str, list[str]] = {"single": [], "ema": []}
    unmeasured: dict[str, list[str]] = {"single": [], "ema": []}
    margins: dict[str, float] = {}  # points above the 1-point line, against single-task
    for t, x in rows.items():
        b = x["multi_task_fp32"]
        row = f"| {t} | {x['metric']} |"
        for key, ref in (("single", x["single_task_fp32"]), ("ema", x["single_task_ema_fp32"])):
            verdict = _within(ref, b)
            if key == "ema" and not ema:
                break
            if verdict == "**no**":
                misses[key].append(f"{t} ({_delta(ref, b)})")
            elif verdict == "n/a":
                unmeasured[key].append(t)
            elif key == "single":
                margins[t] = b - ref + 0.01
            if key == "single":
                row += f" {_fmt(ref)} | {_fmt(b)} | {_delta(ref, b)} | {verdict} |"
            else:
                row += f" {_fmt(ref)} | {_delta(ref, b)} | {verdict} |"
        lines.append(row)
    lines += [
        "",
        "Cost: five single-task models need five encoder passes per post; the multi-task model",
        "needs one (every head reads the same pooled encoding).",
        "",
    ]
    for key, name in (("single", "single-task model"), ("ema", "single-task + EMA model")):
        if key == "ema" and not ema:
            continue
        if misses[key]:
            lines.append(f"More than 1 point below the {name}: " + ", ".join(misses[key]) + ".")
        elif unmeasured[key]:
            lines.append(
                f"Every task measured is within 1 point of its {name}; not measured: "
                + ", ".join(unmeasured[key])
                + "."
            )
        else:
            lines.append(f"Every task is within 1 point of its {name}.")
    if r["multi_recipe"]["selected_against_single_task"] and margins:
        t = min(margins, key=lambda k: margins[k])
        lines += [
            "",
            "The multi-task checkpoint was chosen on the validation sets these figures come",
            "from (the test splits are not used), as each single-task run keeps its best",
            "validation evaluation; the smallest margin to the 1-point line is "
            f"{100 * margins[t]:.2f} points ({t}).",
        ]
    return "\n".join(lines)


def _multi_recipe(r: dict[str, Any]) -> str:
    rec = r["multi_recipe"]
    if not rec["ema"]:
        return f"run `runs/{rec['run']}`, `make train-multitask`"
    parts = [
        f"run `runs/{rec['run']}`, `make train-multitask-ema`: {rec.get('epochs')} epochs",
        f"weights averaged over steps (EMA {rec['ema']})",
    ]
    if rec.get("selected_against_single_task"):
        parts.append("checkpoint selected on validation by the worst gap to the single-task models")
    parts.append(f"best step {rec.get('best_step')} of {rec.get('steps')}")
    return "; ".join(parts)


def _mlm_section(r: dict[str, Any]) -> str | None:
    rows = r["tasks"]
    pairs = [
        (t, rows[t]["single_task_fp32"], rows[t]["single_task_mlm_fp32"])
        for t in ABLATION
        if rows[t]["single_task_mlm_fp32"] is not None
    ]
    if not pairs:
        return _ablation_file_section()
    ad = r.get("adaptation", {})
    cfg = ad.get("config", {})
    lines = [
        "Continued masked-language-model pretraining of the backbone on unlabeled tweets and the",
        f"training texts ({ad.get('texts', 'n/a')} texts, validation texts excluded; "
        f"{cfg.get('steps', 'n/a')} steps of {cfg.get('batch_size', 'n/a')}, "
        f"{ad.get('epochs_over_texts', 'n/a')} epochs; MLM loss {ad.get('loss_start', 'n/a')} ->",
        f"{ad.get('loss_end', 'n/a')}; `make adapt-tweets`), then the same single-task fine-tune",
        "from the adapted encoder (`make train-single-mlm`), on the three smallest tasks (where",
        "in-domain pretraining usually matters most and a run costs minutes):",
        "",
        "| task | original backbone | MLM-adapted backbone | change (points) |",
        "| --- | --- | --- | --- |",
    ]
    for t, a, b in pairs:
        lines.append(f"| {t} | {_fmt(a)} | {_fmt(b)} | {_delta(a, b)} |")
    mean = sum(b - a for _, a, b in pairs if a is not None and b is not None) / len(pairs)
    helps = mean > 0 and sum(b > a for _, a, b in pairs if a is not None and b is not None) >= 2
    lines += [
        "",
        f"Mean change {100 * mean:+.2f} points: "
        + (
            "it helps, so the shipped models start from the adapted encoder."
            if helps
            else "it does not help, so the shipped models start from the original backbone "
            "(kept only if it helps)."
        ),
    ]
    return "\n".join(lines)


def _ablation_file_section() -> str | None:
    """The adaptation ablation from its committed result file (when the runs are not here)."""
    file = ROOT / "benchmarks/results/adaptation-ablation.json"
    if not file.exists():
        return None
    ab = json.loads(file.read_text())
    cfg = ab["adaptation"]
    lines = [
        "Continued masked-language-model pretraining of the backbone on unlabeled tweets and the",
        f"training texts (validation texts excluded; {cfg['steps']} steps of "
        f"{cfg['batch_size']}, MLM loss {cfg['mlm_loss_start']} -> {cfg['mlm_loss_end']}; "
        "`make adapt-tweets`), then the same single-task fine-tune from the adapted encoder",
        "(`make train-single-mlm`) against one from the original backbone (`make train-single`),",
        f"on the three smallest tasks; measured {ab['measured']}",
        "(`benchmarks/results/adaptation-ablation.json`):",
        "",
        "| task | metric | original backbone | MLM-adapted backbone | change (points) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t, x in ab["tasks"].items():
        lines.append(
            f"| {t} | {x['metric']} | {_fmt(x['original'])} | {_fmt(x['adapted'])} | "
            f"{_delta(x['original'], x['adapted'])} |"
        )
    lines += ["", f"Mean change {ab['mean_change_points']:+.2f} points: {ab['verdict']}."]
    return "\n".join(lines)


def _student_section(r: dict[str, Any]) -> str | None:
    rows = r["tasks"]
    if all(x["student_int8"] is None for x in rows.values()):
        return None
    st = r["student"]
    ts = st.get("transfer_set") or {}
    search = st.get("layer_search") or {}
    probe = r.get("layer_probe") or {}
    teachers = ", ".join(f"`{t}`" for t in st.get("distilled_from") or [])
    if search:
        how = (
            f"the teacher's layers {st['layers']}, the subset whose untrained student scored "
            f"best of {len(search)} subsets on a validation sample"
        )
    else:
        how = f"layers {st['layers']} of the base backbone, fresh heads"
        if probe:
            how += (
                f"; the layers a linear probe ranks best of {len(probe['scores']) - 1} "
                f"{len(st['layers'] or [])}-layer subsets (`scripts/probe_layers.py`: "
                f"{probe['best']} scores {probe['scores'][probe['best']]:.3f} sentiment "
                f"macro-recall, all 6 layers {probe['scores'].get('0,1,2,3,4,5', 'n/a')})"
            )
    lines = [
        f"Teacher `{r['teacher']['model']}` (6 layers) and student `{st['model']}` "
        f"({len(st['layers'] or [])} layers: {how}).",
        f"Distilled from {teachers} (several for one task: their probabilities averaged) over "
        f"{ts.get('labelled_texts', 'n/a')} labelled and {ts.get('unlabeled_texts', 'n/a')} "
        "unlabeled tweets (`make distill-student`). Validation official metric per task:",
        "",
        "| task | teacher fp32 | student fp32 | teacher int8 | student int8 | change int8 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t, x in rows.items():
        a, b = x["teacher_int8"], x["student_int8"]
        lines.append(
            f"| {t} | {_fmt(x['teacher_fp32'])} | {_fmt(x['student_manifest_fp32'])} | "
            f"{_fmt(a)} | {_fmt(b)} | {_delta(a, b)} |"
        )
    default = r.get("default") or {}
    best, student = default.get("sentiment_int8"), rows["sentiment"]["student_int8"]
    if best is not None and student is not None:
        verdict = (
            "it is within 1 point, so the student is the default model"
            if student >= best - 0.01
            else "it loses more than 1 point, so the default stays and the student ships as a "
            "second, faster model"
        )
        lines += [
            "",
            f"Default model rule (best speed for at most 1 point of sentiment macro-recall): "
            f"student {_fmt(student)} vs the default `{default['model']}` {_fmt(best)} int8 "
            f"({_delta(best, student)} points): {verdict}.",
        ]
    return "\n".join(lines)


def _speed_section(r: dict[str, Any]) -> str | None:
    speed = r.get("speed")
    if not speed:
        return None
    m = speed["machine"]
    lines = [
        f"Classifier core (int8 ONNX, all tasks of each model) on {m['cpu']}, {m['cores']}",
        f"cores; {speed['data']}; median of {speed['repeats']} interleaved rounds in one run:",
        f"`{speed['command']}`.",
        "",
        "| model | layers | tasks | size MB | texts/s | spread | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for x in speed["models"].values():
        s = x["texts_per_s"]
        lines.append(
            f"| {x['model']} | {x['layers']} | {len(x['tasks'])} | {x['model_mb']} | "
            f"{s['median']:.0f} | {s['min']:.0f}-{s['max']:.0f} | {x['ratio_vs_first']}x |"
        )
    return "\n".join(lines)


def sections(r: dict[str, Any]) -> list[dict[str, str]]:
    eda = [
        "Data reports (`make eda`: classes, lengths in characters and tokens, URLs/mentions/emoji/",
        "escapes, duplicates and train/validation overlap, frequent words per class):",
        "",
    ]
    eda += [
        f"- TweetEval {t}: [docs/eda/tweeteval-{t}]({EDA}/tweeteval-{t}/README.md)" for t in TASKS
    ]
    out = [{"title": "Data (EDA)", "markdown": "\n".join(eda)}]
    if r.get("has_multi_run"):
        out.append({"title": "Multi-task vs single-task", "markdown": _multi_section(r)})
    for title, body in (
        ("Domain adaptation (MLM on tweets)", _mlm_section(r)),
        ("Teacher vs student", _student_section(r)),
        ("Speed side by side", _speed_section(r)),
    ):
        if body:
            out.append({"title": title, "markdown": body})
    return out


def merge_sections(
    committed: list[dict[str, str]], fresh: list[dict[str, str]]
) -> list[dict[str, str]]:
    """Fresh sections replace committed ones of the same title; committed sections whose
    inputs are gone (e.g. a training run not kept) stay as they were."""
    by_title = {x["title"]: x for x in fresh}
    out = [by_title.pop(x["title"], x) for x in committed]
    return out + [x for x in fresh if x["title"] in by_title]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument(
        "--v1", type=Path, default=ROOT / "src/sentistream/models/tweet-sentiment/1"
    )
    parser.add_argument("--teacher", type=Path, required=True, help="teacher model folder")
    parser.add_argument(
        "--student", type=Path, help="student model folder (its teacher: --teacher)"
    )
    parser.add_argument("--multi-run", default="multi-v3", help="multi-task run under --runs")
    parser.add_argument("--student-run", default="student-v3", help="student run under --runs")
    parser.add_argument("--bench", type=Path, help="bench_models.py result JSON")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks/results/model-comparison.json"
    )
    args = parser.parse_args()
    names = {"multi": args.multi_run, "student": args.student_run}
    report = build(args.runs, args.v1, args.teacher, args.student, args.bench, names)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    secs = sections(report)
    for folder in [args.teacher] + ([args.student] if args.student else []):
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["report_sections"] = merge_sections(manifest.get("report_sections") or [], secs)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        load_manifest(folder)
        (folder / "README.md").write_text(render_model_card(manifest))
    for s in secs:
        print(f"## {s['title']}\n\n{s['markdown']}\n")


if __name__ == "__main__":
    main()
