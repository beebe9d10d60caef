"""The shipped decision rule, its metrics and how its operating point is fitted on held-out data."""

from __future__ import annotations

import numpy as np
import pytest

from lungct.errors import ModelError
from lungct.evaluation.decision_metrics import decision_metrics
from lungct.evaluation.metrics import softmax
from lungct.evaluation.operating import benign_threshold, fit_operating_point
from lungct.model.decision import (
    BENIGN,
    CASE_AGGREGATIONS,
    MALIGNANT,
    NORMAL,
    DecisionRule,
    aggregate,
    benign_share,
)

P = np.array(
    [
        [0.70, 0.10, 0.20],  # normal by arg-max; malignant at threshold 0.2
        [0.50, 0.40, 0.10],  # benign share 0.44
        [0.30, 0.60, 0.10],  # benign
        [0.05, 0.05, 0.90],  # malignant
    ]
)


def test_rule_thresholds_change_the_decision() -> None:
    plain = DecisionRule(0.5, 0.5)
    assert plain.decide(P).tolist() == [NORMAL, NORMAL, BENIGN, MALIGNANT]
    assert DecisionRule(0.2, 0.5).decide(P).tolist() == [MALIGNANT, NORMAL, BENIGN, MALIGNANT]
    assert DecisionRule(0.5, 0.4).decide(P).tolist() == [NORMAL, BENIGN, BENIGN, MALIGNANT]
    assert plain.decide_one(P[2]) == "benign"


def test_rule_validation_and_round_trip() -> None:
    rule = DecisionRule(0.3, 0.4, "max", "unit test")
    assert DecisionRule.from_dict(rule.to_dict()) == rule
    with pytest.raises(ModelError, match="malignant_threshold"):
        DecisionRule(1.5)
    with pytest.raises(ModelError, match="case_aggregation"):
        DecisionRule(0.5, 0.5, "median")
    with pytest.raises(ModelError, match="malformed"):
        DecisionRule.from_dict({"benign_threshold": 0.5})


@pytest.mark.parametrize("how", CASE_AGGREGATIONS)
def test_case_aggregations_are_distributions(how: str) -> None:
    out = aggregate(P, how)
    assert out.shape == (3,) and np.all(out >= 0) and out.sum() == pytest.approx(1.0)


def test_case_aggregations_differ_as_documented() -> None:
    slices = np.array([[0.9, 0.0, 0.1]] * 9 + [[0.1, 0.0, 0.9]])
    assert aggregate(slices, "mean")[MALIGNANT] == pytest.approx(0.18)
    assert aggregate(slices, "max")[MALIGNANT] == pytest.approx(0.9)
    assert aggregate(slices, "top3")[MALIGNANT] == pytest.approx((0.9 + 0.1 + 0.1) / 3)
    assert aggregate(slices, "noisy_or")[MALIGNANT] == pytest.approx(1 - 0.9**9 * 0.1)
    with pytest.raises(ModelError):
        aggregate(np.zeros((0, 3)), "mean")


def test_decision_metrics_point_values() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 2, 0, 1, 2, 2])
    m = decision_metrics(y, pred, n_boot=0)
    assert m["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["benign"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["normal"]["precision"] == pytest.approx(0.5)
    assert m["malignant"] == {"sensitivity": 1.0, "specificity": 0.75}
    assert m["abnormal"]["sensitivity"] == pytest.approx(3 / 4) and m["abnormal"]["specificity"] == 0.5


def test_decision_columns_flatten_the_shipped_rule_on_slices_and_cases() -> None:
    from lungct.evaluation.evaluate import decision_block, decision_columns

    rule = DecisionRule(malignant_threshold=0.5, benign_threshold=0.5)
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [[0.9, 0.05, 0.05], [0.2, 0.1, 0.7], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0, 0.2, 0.8]]
    )
    groups = np.array(["n", "n", "b", "b", "m", "m"])
    cols = decision_columns(decision_block(y, probs, groups, rule, n_boot=0, seed=0))
    assert cols["accuracy"] == pytest.approx(4 / 6) and cols["benign_recall"] == pytest.approx(0.5)
    assert cols["malignant_sensitivity"] == 1.0 and cols["malignant_specificity"] == pytest.approx(0.75)
    # case means: normal case (0.55, .075, .375) -> normal; benign (0.4, 0.5, 0.1) -> benign
    assert cols["case_normal_cleared"] == 1.0 and cols["case_abnormal_flagged"] == 1.0
    assert cols["case_balanced_accuracy"] == 1.0


def test_decision_metrics_bootstrap_resamples_groups() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    pred = np.where(rng.random(60) < 0.8, y, (y + 1) % 3)
    groups = np.repeat(np.arange(12), 5)
    m = decision_metrics(y, pred, groups, n_boot=200, seed=1)
    lo, hi = m["ci95"]["accuracy"]
    assert lo <= m["accuracy"] <= hi and hi - lo > 0
    assert m["n_groups"] == 12 and "groups=12" in m["ci95_method"]


def test_benign_threshold_keeps_normal_recall() -> None:
    share = np.linspace(0.01, 0.99, 100)
    probs = np.stack([1 - share, share, np.zeros(100)], axis=1)
    y = np.zeros(100, dtype=int)
    t = benign_threshold(probs, y, 0.85)
    assert np.mean(share < t) == pytest.approx(0.85)


def test_fit_operating_point_on_held_out_predictions() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 60)
    groups = np.repeat(np.arange(18), 10)
    logits = rng.normal(0, 1, (180, 3))
    logits[np.arange(180), y] += 2.5  # informative but imperfect
    t, rule, report = fit_operating_point(
        logits, y, groups, target_sensitivity=0.95, target_normal_recall=0.85, fitted_on="synthetic"
    )
    assert 0.05 <= t <= 20 and rule.fitted_on == "synthetic"
    held = report["held_out_decision"]
    assert held["malignant"]["sensitivity"] >= 0.95
    # The benign step keeps >= 85 % of normal slices below the benign threshold (before the malignant step).
    probs = softmax(logits, t)
    assert np.mean(benign_share(probs[y == NORMAL]) < rule.benign_threshold) >= 0.85 - 1e-9
    assert held["per_class"]["benign"]["recall"] > 0.3
    assert rule.case_aggregation in CASE_AGGREGATIONS and set(report["case_aggregation_scores"]) == set(
        CASE_AGGREGATIONS
    )
    fixed = fit_operating_point(
        logits,
        y,
        groups,
        target_sensitivity=0.95,
        target_normal_recall=0.85,
        case_aggregation="max",
        fitted_on="x",
    )[1]
    assert fixed.case_aggregation == "max"
