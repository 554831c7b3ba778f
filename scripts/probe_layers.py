"""Which layers of the pretrained backbone should a small student keep? A linear probe.

For every subset of layers (kept in order, like ``sentistream distill --layers``), the truncated
backbone mean-pools its last hidden states over a sample of training tweets, a balanced logistic
regression is fitted on them and scored (sentiment macro-recall) on validation tweets. Used to
choose the student's layers when the teacher is a served model folder (no fine-tuned torch
layers to search over; ``--layers auto`` needs a checkpoint teacher).

    python scripts/probe_layers.py --data ../shared/data/tweeteval/sentiment \
        --output benchmarks/results/layer-probe.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import recall_score

from sentistream.text import clean_or_empty
from sentistream.training.backbone import DEFAULT_BACKBONE, load_backbone
from sentistream.training.data import load_train_val
from sentistream.training.distill import shrink_encoder
from sentistream.training.finetune import encode_texts


def _embed(model: Any, ids: list[list[int]]) -> np.ndarray[Any, Any]:
    out = []
    with torch.no_grad():
        for start in range(0, len(ids), 64):
            batch = ids[start : start + 64]
            width = max(map(len, batch))
            x = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros_like(x)
            for r, row in enumerate(batch):
                x[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            h = model(input_ids=x, attention_mask=mask).last_hidden_state
            out.append(((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--base-model", default=DEFAULT_BACKBONE)
    parser.add_argument("--keep", type=int, default=3, help="layers the student keeps")
    parser.add_argument("--train", type=int, default=3000, help="probe training texts")
    parser.add_argument("--val", type=int, default=1000, help="probe validation texts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    encoder, tokenizer, _ = load_backbone(args.base_model)
    tokenizer.no_padding()
    train, val = load_train_val(args.data, seed=42)
    pick = np.random.default_rng(args.seed).choice(len(train.texts), args.train, replace=False)
    xt = encode_texts(tokenizer, [clean_or_empty(train.texts[i], 1000) for i in pick], 128, "head")
    yt = [train.labels[i] for i in pick]
    xv = encode_texts(
        tokenizer, [clean_or_empty(t, 1000) for t in val.texts[: args.val]], 128, "head"
    )
    yv = val.labels[: args.val]
    n = int(encoder.config.num_hidden_layers)
    subsets = [list(range(n))] + [list(c) for c in itertools.combinations(range(n), args.keep)]
    scores: dict[str, float] = {}
    for layers in subsets:
        t0 = time.perf_counter()
        model = shrink_encoder(encoder, layers).eval()
        clf = LogisticRegression(max_iter=2000, class_weight="balanced")
        clf.fit(_embed(model, xt), yt)
        score = float(recall_score(yv, clf.predict(_embed(model, xv)), average="macro"))
        scores[",".join(map(str, layers))] = round(score, 4)
        print(f"layers {layers}: macro-recall {score:.4f} ({time.perf_counter() - t0:.0f}s)")
    best = max((k for k in scores if k.count(",") == args.keep - 1), key=lambda k: scores[k])
    print(f"best {args.keep}-layer subset: {best}")
    if args.output:
        result = {
            "base_model": args.base_model,
            "data": str(args.data),
            "probe": f"balanced logistic regression on mean-pooled states, {args.train} train "
            f"/ {args.val} validation texts, sentiment macro-recall",
            "scores": scores,
            "best": best,
        }
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
