from __future__ import annotations

import pytest

from sentistream.metrics import (
    classification_report,
    confusion_matrix,
    macro_f1,
    macro_recall,
    official_score,
)


def test_macro_recall_hand_made_example() -> None:
    # negative: 2 of 4 right (0.5); neutral: 3 of 3 (1.0); positive: 1 of 3 (1/3)
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 1, 1, 2, 1, 1]
    assert macro_recall(y_true, y_pred, 3) == pytest.approx((0.5 + 1.0 + 1 / 3) / 3)
    # SemEval-2017 4A uses macro recall; accuracy would be 6/10 here.
    report = classification_report(y_true, y_pred, ["negative", "neutral", "positive"], "sentiment")
    assert report["accuracy"] == pytest.approx(0.6)
    assert report["official_metric"] == "macro_recall"
    assert report["official_score"] == pytest.approx(0.6111111)
    assert report["confusion_matrix"]["rows_true_cols_pred"] == [[2, 1, 1], [0, 3, 0], [0, 2, 1]]


def test_macro_f1_and_irony_f1() -> None:
    y_true = [1, 1, 0, 0]
    y_pred = [1, 0, 0, 0]
    # class 0: P=2/3 R=1 F1=0.8; class 1: P=1 R=0.5 F1=2/3
    assert macro_f1(y_true, y_pred, 2) == pytest.approx((0.8 + 2 / 3) / 2)
    assert official_score("irony", y_true, y_pred, 2) == pytest.approx(2 / 3)
    assert official_score("hate", y_true, y_pred, 2) == pytest.approx((0.8 + 2 / 3) / 2)


def test_class_never_predicted_or_absent() -> None:
    assert macro_recall([0, 0], [0, 0], 3) == pytest.approx(1 / 3)


def test_rejects_mismatched_lengths_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match="range"):
        confusion_matrix([0, 3], [0, 1], 2)
