"""Render a model card (``README.md`` of a model version) from its manifest."""

from __future__ import annotations

from typing import Any

__all__ = ["render_model_card"]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _metrics_section(validation: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for task, reports in validation.items():
        if not isinstance(reports, dict):
            continue
        pairs = [(k, reports[k]) for k in ("int8", "fp32") if k in reports] or [("model", reports)]
        lines += [
            f"### Task `{task}`",
            "",
            "| model | official metric | score | accuracy | macro-F1 | macro recall |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for kind, r in pairs:
            lines.append(
                f"| {kind} | {r.get('official_metric')} | {_pct(r.get('official_score'))} | "
                f"{_pct(r.get('accuracy'))} | {_pct(r.get('macro_f1'))} | "
                f"{_pct(r.get('macro_recall'))} |"
            )
        first = pairs[0][1]
        per_class = first.get("per_class", {})
        if per_class:
            lines += [
                "",
                f"Per class ({pairs[0][0]}):",
                "",
                "| class | precision | recall | F1 | support |",
                "| --- | --- | --- | --- | --- |",
            ]
            for label, c in per_class.items():
                lines.append(
                    f"| {label} | {_pct(c['precision'])} | {_pct(c['recall'])} | "
                    f"{_pct(c['f1'])} | {c['support']} |"
                )
        cm = first.get("confusion_matrix")
        if cm:
            labels = cm["labels"]
            lines += [
                "",
                "Confusion matrix (rows: true, columns: predicted):",
                "",
                "| | " + " | ".join(labels) + " |",
                "| --- " * (len(labels) + 1) + "|",
            ]
            for label, row in zip(labels, cm["rows_true_cols_pred"], strict=True):
                lines.append(f"| **{label}** | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    return lines


def render_model_card(m: dict[str, Any]) -> str:
    tasks = m["tasks"]
    training = m.get("training", {})
    cfg = training.get("config", {})
    data = m.get("training_data", {})
    ver = m.get("metrics", {}).get("verification", {})
    q = m.get("quantization", {})
    lines = [
        f"# {m['name']} v{m['version']}",
        "",
        m.get("description") or "A sentistream text classification model.",
        "",
        "## Summary",
        "",
        "- Tasks: " + "; ".join(f"`{t}` ({', '.join(s['labels'])})" for t, s in tasks.items()),
        f"- Primary task: `{m['primary_task']}`",
        f"- Base model: `{m.get('base_model')}` "
        f"({m.get('backbone', {}).get('num_hidden_layers')} layers, "
        f"hidden size {m.get('backbone', {}).get('hidden_size')})",
        f"- Format: ONNX, {q.get('weights', 'n/a')}; {q.get('model_bytes', 0) / 1e6:.1f} MB",
        f"- Max length: {m['max_length']} tokens; cleaning version {m['cleaning_version']} "
        f"(max {m['max_chars']} characters)",
        f"- Created: {m.get('created_at')}",
        "",
        "## Data",
        "",
        f"- Training data: `{data.get('path')}` ({data.get('train_examples')} train / "
        f"{data.get('val_examples')} validation examples)",
        f"- Data fingerprint: `{data.get('fingerprint')}`",
        "- Test splits were not used for training or tuning; all figures below are validation.",
        "",
    ]
    task_data = training.get("task_data") or {}
    if len(task_data) > 1 or any("," in str(v.get("path")) for v in task_data.values()):
        per_epoch = training.get("examples_per_epoch") or {}
        lines += [
            "| task | data | train | validation | drawn per epoch | fingerprint |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for task, info in task_data.items():
            lines.append(
                f"| {task} | `{info.get('path')}` | {info.get('train_examples')} | "
                f"{info.get('val_examples')} | {per_epoch.get(task, 'n/a')} | "
                f"`{str(info.get('fingerprint'))[:23]}...` |"
            )
        lines.append("")
    if training.get("distilled_from"):
        ts = training.get("transfer_set", {})
        lines += [
            f"- Distilled from `{', '.join(training['distilled_from'])}` (student layers "
            f"{training.get('student_layers')}); transfer set {ts.get('labelled_texts')} "
            f"labelled + {ts.get('unlabeled_texts')} unlabeled texts.",
            "",
        ]
    lines += [
        "## Training parameters",
        "",
        "| parameter | value |",
        "| --- | --- |",
    ]
    for key in (
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_ratio",
        "max_length",
        "dropout",
        "class_weighting",
        "label_smoothing",
        "seed",
        "bf16",
        "patience",
        "task_sampling_alpha",
        "truncation",
        "layers",
        "temperature",
        "hard_weight",
        "max_unlabeled",
    ):
        if key in cfg:
            lines.append(f"| {key} | {cfg[key]} |")
    lines += [
        f"| best step / steps run | {training.get('best_step')} / {training.get('steps')} |",
        f"| training time | {training.get('seconds')} s on {training.get('device')} |",
        "",
        "## How to reproduce",
        "",
        "```bash",
        m.get("training_command") or "# (training command not recorded)",
        "```",
        "",
        "## Validation metrics",
        "",
    ]
    lines += _metrics_section(m.get("metrics", {}).get("validation", {}))
    per_task = ver.get("tasks") or ({ver.get("task", m["primary_task"]): ver} if ver else {})
    if per_task and q.get("rebuilt_from"):
        lines += [
            f"## Quantization parity (vs {q['rebuilt_from']} and fp32, validation)",
            "",
            "| task | texts | agreement with source | agreement with fp32 (lower bound) | "
            "fp32 official | source int8 official | int8 official |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for task, v in per_task.items():
            lines.append(
                f"| {task} | {v.get('n')} | {_pct(v.get('argmax_agreement_with_source'))}% | "
                f">= {_pct(v.get('argmax_agreement_int8_vs_fp32_lower_bound'))}% | "
                f"{_pct(v.get('fp32_official_score'))} | "
                f"{_pct(v.get('source_int8_official_score'))} | "
                f"{_pct(v.get('int8_official_score'))} |"
            )
        lines.append("")
    elif per_task:
        lines += [
            "## Quantization parity (int8 vs fp32, validation)",
            "",
            "| task | texts | argmax agreement | fp32 official | int8 official | max logit diff |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for task, v in per_task.items():
            lines.append(
                f"| {task} | {v.get('n')} | {_pct(v.get('argmax_agreement_int8_vs_fp32'))}% | "
                f"{_pct(v.get('fp32_official_score'))} | {_pct(v.get('int8_official_score'))} | "
                f"{v.get('max_abs_logit_diff', 0):.3f} |"
            )
        lines.append("")
    cal = m.get("metrics", {}).get("calibration", {})
    if cal:
        lines += [
            "## Calibration",
            "",
            "Temperature scaling fitted on validation (NLL). ECE: 15 equal-width confidence bins;",
            "the *after* figures are 2-fold cross-fitted (each half scored with the temperature",
            "fitted on the other half), so they are not measured on the data they were fitted on.",
            "",
            "| task | temperature | ECE before | ECE after | NLL before | NLL after |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for task, c in cal.items():
            lines.append(
                f"| {task} | {c['temperature']:.3f} | {_pct(c['ece_before'])}% | "
                f"{_pct(c['ece_after'])}% | {c['nll_before']:.4f} | {c['nll_after']:.4f} |"
            )
        lines.append("")
    for section in m.get("report_sections") or []:
        lines += [f"## {section['title']}", "", section["markdown"].rstrip(), ""]
    perf = m.get("performance")
    if perf:
        lines += ["## Performance", "", "| figure | value | command |", "| --- | --- | --- |"]
        for row in perf:
            lines.append(f"| {row['figure']} | {row['value']} | `{row['command']}` |")
        lines.append("")
    if m["primary_task"] == "reviews":
        lines += [
            "## Intended use and limitations",
            "",
            "- English product/movie reviews, a sentence (SST-2) to several paragraphs (IMDB).",
            f"  Texts are capped at {m['max_chars']} characters (head kept) by cleaning, then at "
            f"{m['max_length']} tokens ({m.get('truncation')} truncation).",
            "- Binary: there is no neutral class; mixed or off-topic texts still get one of the",
            "  two labels, so look at the score.",
            "- SST-2 validation here is a hold-out of SST-2 *train* phrases, which share sentences",
            "  with the training phrases: that figure is optimistic; IMDB reviews are independent.",
            "",
        ]
        return "\n".join(lines)
    lines += [
        "## Intended use and limitations",
        "",
        "- Short English social-media posts (tweets). Long reviews, other languages, sarcasm and",
        "  irony are out of its training distribution; expect lower accuracy there.",
        "- Inputs are cleaned exactly as in training (HTML entities and escapes decoded, URLs ->",
        "  `http`, mentions -> `@user`, emoji -> their names).",
        "- The training data (TweetEval / SemEval-2017) carries the biases of 2013-2017 Twitter;",
        "  do not use the scores for decisions about individuals.",
        "",
    ]
    return "\n".join(lines)
