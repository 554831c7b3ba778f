"""The reviews model card's comparison section: a new version against the previous one, per
held-out source, computed from the two manifests (int8 and fp32 validation figures).

    python scripts/reviews_report.py --new src/sentistream/models/reviews/2 \
        --old src/sentistream/models/reviews/1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sentistream.manifest import load_manifest
from sentistream.training.card import render_model_card

EDA = "../../../../../docs/eda"
TARGETS = {"reviews:sst2": 0.91, "reviews:imdb": 0.90}


def _score(manifest: dict[str, Any], task: str, kind: str) -> float | None:
    r = manifest["metrics"]["validation"].get(task, {}).get(kind)
    return None if r is None else float(r["official_score"])


def section(new: dict[str, Any], old: dict[str, Any]) -> str:
    v_new, v_old = f"v{new['version']}", f"v{old['version']}"
    lines = [
        f"Validation accuracy (10% held out of each source's training file), {v_old} and "
        f"{v_new} side by side:",
        "",
        f"| held-out set | n | {v_old} int8 | {v_new} int8 | change (points) | {v_new} fp32 "
        "| target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, report in new["metrics"]["validation"].items():
        a, b = _score(old, task, "int8"), _score(new, task, "int8")
        target = TARGETS.get(task)
        verdict = (
            "-"
            if target is None
            else f">= {target:.2f}: " + ("met" if b is not None and b >= target else "missed")
        )
        lines.append(
            f"| {task} | {report['int8']['n']} | "
            + " | ".join("n/a" if x is None else f"{x:.4f}" for x in (a, b))
            + f" | {'n/a' if a is None or b is None else f'{100 * (b - a):+.2f}'} | "
            f"{_score(new, task, 'fp32'):.4f} | {verdict} |"
        )
    cfg_new, cfg_old = new["training"]["config"], old["training"]["config"]
    lines += [
        "",
        f"What changed: cleaning keeps {cfg_new['max_chars']} characters instead of "
        f"{cfg_old['max_chars']}, so head+tail truncation ({new['max_length']} tokens) sees the "
        "real end of a long review, where the verdict usually is, instead of the end of its first "
        f"{cfg_old['max_chars']} characters; and training draws "
        f"`{cfg_new['tasks'][0].split('@')[-1]}` IMDB reviews instead of "
        f"`{cfg_old['tasks'][0].split('@')[-1]}`. Same recipe otherwise "
        f"({cfg_new['epochs']} epochs, lr {cfg_new['lr']}, batch {cfg_new['batch_size']}, "
        f"seed {cfg_new['seed']}).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--old", type=Path, required=True)
    args = parser.parse_args()
    new = json.loads((args.new / "manifest.json").read_text())
    old = json.loads((args.old / "manifest.json").read_text())
    eda = "\n".join(
        [
            f"- SST-2 train (10% held out): [docs/eda/sst2]({EDA}/sst2/README.md)",
            f"- IMDB train (10% held out): [docs/eda/imdb]({EDA}/imdb/README.md)",
        ]
    )
    new["report_sections"] = [
        {"title": "Data (EDA)", "markdown": eda},
        {"title": f"v{new['version']} vs v{old['version']}", "markdown": section(new, old)},
    ]
    (args.new / "manifest.json").write_text(json.dumps(new, indent=2) + "\n")
    load_manifest(args.new)
    (args.new / "README.md").write_text(render_model_card(new))
    print(new["report_sections"][1]["markdown"])


if __name__ == "__main__":
    main()
