"""The evaluation suite: metrics on a hand-computed example, the set loaders, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sentistream.evaluation.render import comparison_table, markdown
from sentistream.evaluation.sets import CHECK_SETS, EvalSet, load_jsonl_set, suite_sets
from sentistream.evaluation.suite import score_set, suite_report

LABELS = ["negative", "neutral", "positive"]
EVERYDAY = Path(__file__).parents[1] / "data" / "everyday_posts.jsonl"


def _onehot(predicted: list[str]) -> np.ndarray:
    probs = np.full((len(predicted), 3), 0.1, dtype=np.float32)
    for row, lab in enumerate(predicted):
        probs[row, LABELS.index(lab)] = 0.8
    return probs


def test_metrics_of_a_hand_computed_example() -> None:
    # truth: neg neg neg neu neu neu neu pos pos pos
    # pred:  neg neg neu neg neu neu pos pos pos neg
    truth = ["negative"] * 3 + ["neutral"] * 4 + ["positive"] * 3
    pred = ["negative", "negative", "neutral", "negative", "neutral", "neutral", "positive"]
    pred += ["positive", "positive", "negative"]
    s = EvalSet("toy", "check", [f"t{i}" for i in range(10)], truth)
    r = score_set(_onehot(pred), LABELS, s)
    # recall: neg 2/3, neu 2/4, pos 2/3 -> macro (2/3 + 1/2 + 2/3) / 3 = 11/18
    assert r["macro_recall"] == pytest.approx(11 / 18)
    # precision: neg 2/4 (predicted neg: 4), neu 2/3, pos 2/3
    assert r["per_class"]["negative"]["precision"] == pytest.approx(0.5)
    assert r["per_class"]["neutral"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["positive"]["recall"] == pytest.approx(2 / 3)
    assert r["accuracy"] == pytest.approx(0.6)
    # F1: neg 2*(.5*.667)/(1.167)=0.5714, neu 2*(.667*.5)/1.167=0.5714, pos 0.6667
    assert r["macro_f1"] == pytest.approx((4 / 7 + 4 / 7 + 2 / 3) / 3)
    assert r["confusion_matrix"]["rows_true_cols_pred"] == [[2, 1, 0], [1, 2, 1], [1, 0, 2]]


def test_binary_set_compares_only_its_two_classes() -> None:
    # neutral has the highest probability, but sts_gold scores negative vs positive only
    probs = np.asarray([[0.3, 0.6, 0.1], [0.1, 0.6, 0.3], [0.2, 0.5, 0.3]], dtype=np.float32)
    s = EvalSet("sts_gold", "check", ["a", "b", "c"], ["negative", "positive", "negative"])
    r = score_set(probs, LABELS, s)
    assert r["confusion_matrix"]["labels"] == ["negative", "positive"]
    assert r["confusion_matrix"]["rows_true_cols_pred"] == [[1, 1], [0, 1]]
    assert r["macro_recall"] == pytest.approx((0.5 + 1.0) / 2)


def test_unknown_labels_and_wrong_shapes_are_refused() -> None:
    s = EvalSet("x", "check", ["a"], ["mixed"])
    with pytest.raises(ValueError, match="not the model's"):
        score_set(_onehot(["neutral"]), LABELS, s)
    with pytest.raises(ValueError, match="shape"):
        score_set(
            np.zeros((2, 3), dtype=np.float32), LABELS, EvalSet("y", "check", ["a"], ["neutral"])
        )


def _shared_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    sentiment = root / "tweeteval" / "sentiment"
    sentiment.mkdir(parents=True)
    (sentiment / "mapping.txt").write_text("0\tnegative\n1\tneutral\n2\tpositive\n")
    (sentiment / "val_text.txt").write_text("negative day\nok\ngreat day\n")
    (sentiment / "val_labels.txt").write_text("0\n1\n2\n")
    check = root / "extra" / "check"
    check.mkdir(parents=True)
    for name in CHECK_SETS:
        labels = ["negative", "positive"] if name == "sts_gold" else LABELS
        rows = [{"text": f"{name} {lab}", "label": lab} for lab in labels]
        (check / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_suite_sets_and_report(tmp_path: Path) -> None:
    root = _shared_data(tmp_path)
    sets = suite_sets(root, EVERYDAY)
    assert [s.name for s in sets] == ["validation", *CHECK_SETS, "everyday"]
    assert sets[0].labels == LABELS and sets[0].role == "validation"

    def oracle(texts: list[str]) -> np.ndarray:
        # right on everything whose label is written in the text, neutral otherwise
        return _onehot([next((lab for lab in LABELS if lab in t), "neutral") for t in texts])

    result = suite_report(sets, oracle, LABELS, "toy:1")
    summary = result["summary"]
    assert summary["check_mean_macro_recall"] == pytest.approx(1.0)
    assert summary["check_mean_per_class"]["neutral"]["sets"] == 6  # sts_gold has no neutral
    assert summary["validation_macro_recall"] == pytest.approx(2 / 3)  # "great day" -> neutral
    assert not summary["balance"]["balanced"]
    assert any("validation positive recall" in f for f in summary["balance"]["failures"])
    everyday = result["sets"][-1]
    assert set(everyday["accuracy_by_kind"]) == {
        "emoji",
        "negation",
        "news",
        "plain",
        "sarcasm",
        "slang",
    }
    text = markdown(result)
    assert "| **check-suite mean** | | **1.000** |" in text
    assert "Balanced errors" in text and "**no**" in text
    table = comparison_table([result, {**result, "model": "other:2"}])
    assert "| set | toy:1 | other:2 |" in table


def test_missing_sets_are_named(tmp_path: Path) -> None:
    root = _shared_data(tmp_path)
    (root / "extra" / "check" / "weather.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"weather\.jsonl"):
        suite_sets(root, EVERYDAY)


def test_check_set_loader_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text('{"text": "fine", "label": "positive"}\n{"text": "no label"}\n')
    with pytest.raises(ValueError, match=r"set\.jsonl:2"):
        load_jsonl_set(path)
    with pytest.raises(FileNotFoundError, match="cannot read"):
        load_jsonl_set(tmp_path / "absent.jsonl")


def test_everyday_posts_are_well_formed() -> None:
    s = load_jsonl_set(EVERYDAY, "everyday", "everyday")
    assert len(s.texts) >= 200 and len(set(s.texts)) == len(s.texts)
    assert set(s.labels) == set(LABELS)
    assert {k: s.kinds.count(k) for k in set(s.kinds)} == {
        k: 40 for k in ("plain", "slang", "emoji", "negation", "sarcasm", "news")
    }
