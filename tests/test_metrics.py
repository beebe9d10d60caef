"""Metrics: hand-computed values, calibration, thresholds, group bootstrap and case aggregation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lungct.errors import LungctError
from lungct.evaluation import metrics as metrics

# Six images: true labels and argmax predictions (rows of the confusion matrix below).
Y6 = np.array([0, 0, 1, 1, 2, 2])
PRED6 = np.array([0, 1, 1, 1, 2, 0])


def _probs_for(pred: np.ndarray, top: float = 0.7) -> np.ndarray:
    """Probabilities with ``top`` on the predicted class and the rest split evenly."""
    probs = np.full((len(pred), 3), (1 - top) / 2)
    probs[np.arange(len(pred)), pred] = top
    return probs


def test_point_metrics_match_hand_computed_values():
    m = metrics.point_metrics(Y6, _probs_for(PRED6))
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    expected = {
        "normal": {"sensitivity": 0.5, "specificity": 3 / 4, "precision": 0.5, "f1": 0.5, "support": 2},
        "benign": {"sensitivity": 1.0, "specificity": 3 / 4, "precision": 2 / 3, "f1": 0.8, "support": 2},
        "malignant": {"sensitivity": 0.5, "specificity": 1.0, "precision": 1.0, "f1": 2 / 3, "support": 2},
    }
    for name, values in expected.items():
        for key, value in values.items():
            assert m["per_class"][name][key] == pytest.approx(value), (name, key)
    # p(malignant) is 0.7 for image 4 and 0.15 elsewhere: image 4 beats all four negatives and
    # image 5 ties all four, so AUC = (4 + 4 * 0.5) / 8.
    mal = m["malignant_vs_rest"]
    assert (mal["sensitivity"], mal["specificity"], mal["threshold"]) == (0.5, 1.0, 0.5)
    assert mal["auc"] == pytest.approx(0.75)
    # Abnormal score 1 - p(normal) is 0.3 for images predicted normal (0, 5) and 0.85 otherwise.
    abn = m["abnormal_vs_normal"]
    assert abn["sensitivity"] == pytest.approx(3 / 4)
    assert abn["specificity"] == pytest.approx(1 / 2)


def test_malignant_threshold_moves_the_decision():
    probs = _probs_for(PRED6)
    low = metrics.point_metrics(Y6, probs, malignant_threshold=0.1)["malignant_vs_rest"]
    assert (low["sensitivity"], low["specificity"], low["threshold"]) == (1.0, 0.0, 0.1)
    with pytest.raises(LungctError):
        metrics.point_metrics(Y6, probs, malignant_threshold=1.5)


def test_macro_auc_matches_sklearn_ovr():
    rng = np.random.default_rng(0)
    y = np.tile([0, 1, 2], 20)
    probs = metrics.softmax(rng.normal(size=(60, 3)) + 2 * np.eye(3)[y])
    m = metrics.point_metrics(y, probs)
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_undefined_values_are_none_and_json_is_strict():
    y = np.array([0, 0, 1, 1, 0, 1])  # no malignant image
    probs = _probs_for(np.array([0, 2, 1, 1, 0, 0]))
    report = metrics.classification_metrics(y, probs, n_boot=50)
    assert report["per_class"]["malignant"]["auc"] is None
    assert report["per_class"]["malignant"]["sensitivity"] is None
    assert report["malignant_vs_rest"]["auc"] is None
    assert report["malignant_vs_rest"]["sensitivity"] is None
    assert report["macro_auc"] is None
    assert report["ci95"]["malignant_vs_rest.auc"] is None
    assert report["ci95_valid_replicates"]["malignant_vs_rest.auc"] == 0
    assert report["per_class"]["normal"]["auc"] is not None
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text)["n"] == 6


def test_classification_metrics_has_required_keys():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3)) + 2 * np.eye(3)[y]
    groups = [f"scan{i // 3}" for i in range(90)]
    report = metrics.classification_metrics(
        y, metrics.softmax(logits, 2.0), groups, n_boot=200, logits=logits, temperature=2.0
    )
    for key in ("n", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "confusion_matrix"):
        assert key in report
    for name in ("normal", "benign", "malignant"):
        assert set(report["per_class"][name]) >= {"sensitivity", "specificity", "precision", "f1", "auc"}
    assert set(report["malignant_vs_rest"]) >= {"sensitivity", "specificity", "auc", "threshold"}
    assert set(report["abnormal_vs_normal"]) >= {"sensitivity", "specificity", "auc"}
    cal = report["calibration"]
    assert cal["temperature"] == 2.0
    assert set(cal["before"]) == {"ece", "nll", "brier"}
    assert cal["before"]["nll"] == pytest.approx(metrics.nll(metrics.softmax(logits), y))
    assert set(report["ci95"]) == set(metrics.CI_METRICS)
    for name, (low, high) in report["ci95"].items():
        assert low <= high, name
    assert report["ci95_method"] == "group bootstrap, n_boot=200, groups=30"
    json.dumps(report, allow_nan=False)


def test_bootstrap_replicates_equal_metrics_on_resampled_data():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 120)
    probs = metrics.softmax(np.round(rng.normal(size=(120, 3)), 1) + np.eye(3)[y])  # with ties
    codes, ids = metrics.group_codes([i // 4 for i in range(120)], 120)
    weights = metrics.group_weights(codes, len(ids), 4, rng)
    replicated = metrics._replicate_metrics(weights, y, probs, threshold=0.4)
    for b in range(4):
        idx = np.repeat(np.arange(120), weights[b].astype(int))
        point = metrics.point_metrics(y[idx], probs[idx], malignant_threshold=0.4)
        for name in metrics.CI_METRICS:
            value = point
            for part in name.split("."):
                value = value[part]
            assert replicated[name][b] == pytest.approx(value, abs=1e-12), name


def test_bootstrap_resamples_groups_not_images():
    # 10 scans x 40 identical slices; a scan is either all right or all wrong.
    n_groups, per_group = 10, 40
    group_correct = np.array([1, 1, 1, 0, 1, 0, 1, 1, 0, 1], dtype=bool)
    y = np.repeat(np.arange(n_groups) % 3, per_group)
    pred = np.where(np.repeat(group_correct, per_group), y, (y + 1) % 3)
    probs = _probs_for(pred)
    groups = np.repeat([f"scan{g}" for g in range(n_groups)], per_group)
    by_group = metrics.group_bootstrap(y, probs, groups, n_boot=400, seed=3)
    by_image = metrics.group_bootstrap(y, probs, None, n_boot=400, seed=3)
    low_g, high_g = by_group["ci95"]["accuracy"]
    low_i, high_i = by_image["ci95"]["accuracy"]
    assert high_g - low_g > 2.5 * (high_i - low_i)
    assert by_group["ci95_method"].endswith("groups=10")
    assert by_image["ci95_method"].endswith(f"groups={n_groups * per_group}")


def test_bootstrap_is_seeded():
    y = np.tile([0, 1, 2], 10)
    probs = _probs_for(np.roll(y, 1))
    first = metrics.group_bootstrap(y, probs, n_boot=100, seed=7)
    again = metrics.group_bootstrap(y, probs, n_boot=100, seed=7)
    other = metrics.group_bootstrap(y, probs, n_boot=100, seed=8)
    assert first == again
    assert first["ci95"] != other["ci95"]


def test_temperature_scaling_fixes_overconfidence():
    rng = np.random.default_rng(4)
    true_logits = rng.normal(size=(3000, 3)) * 1.5
    cumulative = metrics.softmax(true_logits).cumsum(axis=1)
    y = (rng.random((3000, 1)) > cumulative).sum(axis=1)
    overconfident = 4.0 * true_logits
    temperature = metrics.fit_temperature(overconfident, y)
    assert 3.0 < temperature < 5.5
    before = metrics.nll(metrics.softmax(overconfident), y)
    after = metrics.nll(metrics.softmax(overconfident, temperature), y)
    assert after < before - 0.1
    assert metrics.ece(metrics.softmax(overconfident, temperature), y) < metrics.ece(
        metrics.softmax(overconfident), y
    )


def test_softmax_rejects_bad_temperature():
    assert metrics.softmax(np.zeros((2, 3))) == pytest.approx(np.full((2, 3), 1 / 3))
    with pytest.raises(LungctError):
        metrics.softmax(np.zeros((2, 3)), temperature=0.0)


def test_ece_zero_when_calibrated_and_large_when_confidently_wrong():
    calibrated = np.tile([0.8, 0.1, 0.1], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert metrics.ece(calibrated, y) == pytest.approx(0.0, abs=1e-12)
    wrong = np.tile([0.99, 0.005, 0.005], (10, 1))
    assert metrics.ece(wrong, np.ones(10, dtype=int)) == pytest.approx(0.99)


def test_nll_and_brier_hand_values():
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    y = np.array([0, 1])
    assert metrics.nll(probs, y) == pytest.approx(-(math.log(0.5) + math.log(0.1)) / 2)
    assert metrics.brier(probs, y) == pytest.approx(((0.25 + 0.0625 * 2) + (0.01 + 0.81 + 0.64)) / 2)


def test_pick_threshold_is_highest_meeting_target():
    scores = np.r_[np.linspace(0.05, 1.0, 20), np.linspace(0.0, 0.5, 30)]
    positives = np.r_[np.ones(20, bool), np.zeros(30, bool)]
    t = metrics.pick_threshold(scores, positives, 0.95)
    sens = lambda thr: np.mean(scores[positives] >= thr)  # noqa: E731
    assert sens(t) >= 0.95
    assert sens(np.nextafter(t, np.inf)) < 0.95
    assert t == pytest.approx(0.1)


def test_pick_threshold_ties_and_errors():
    scores = np.array([0.5, 0.5, 0.5, 0.9, 0.95])
    positives = np.array([True, True, True, True, False])
    assert metrics.pick_threshold(scores, positives, 0.5) == 0.5  # sensitivity 1.0 at 0.5
    assert metrics.pick_threshold(scores, positives, 0.25) == 0.9
    with pytest.raises(LungctError, match="no positive"):
        metrics.pick_threshold(scores, np.zeros(5, bool))
    with pytest.raises(LungctError):
        metrics.pick_threshold(scores, positives, 0.0)


def test_aggregate_cases_mean_and_max():
    y = np.array([0, 0, 2, 2, 1, 1])
    groups = ["a", "a", "b", "b", "b", "c"]
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.6, 0.2, 0.2],
            [0.1, 0.2, 0.7],
            [0.3, 0.1, 0.6],
            [0.2, 0.6, 0.2],
            [0.3, 0.4, 0.3],
        ]
    )
    with pytest.warns(UserWarning, match="1 of 3 groups mix labels"):
        case_y, case_p, ids = metrics.aggregate_cases(y, probs, groups)
    assert ids.tolist() == ["a", "b", "c"]
    assert case_y.tolist() == [0, 2, 1]
    assert case_p[1] == pytest.approx([0.2, 0.3, 0.5])
    assert case_p.sum(axis=1) == pytest.approx(np.ones(3))
    with pytest.warns(UserWarning):
        _, case_max, _ = metrics.aggregate_cases(y, probs, groups, how="max")
    assert case_max[0] == pytest.approx([0.6, 0.2, 0.2])
    assert case_max[1] == pytest.approx([0.0, 0.6 / 1.3, 0.7 / 1.3])  # max benign + max malignant > 1
    assert metrics.mixed_groups(y, groups) == ["b"]
    with pytest.raises(LungctError):
        metrics.aggregate_cases(y, probs, groups, how="median")


def test_aggregate_cases_majority_tie_goes_to_more_severe():
    y = np.array([1, 2, 0])
    probs = np.full((3, 3), 1 / 3)
    with pytest.warns(UserWarning):
        case_y, _, ids = metrics.aggregate_cases(y, probs, np.array([7, 7, 8]))
    assert case_y.tolist() == [2, 0]
    assert ids.tolist() == [7, 8]


def test_bad_inputs_raise_lungct_error():
    with pytest.raises(LungctError):
        metrics.point_metrics(np.array([0, 3]), np.full((2, 3), 1 / 3))
    with pytest.raises(LungctError):
        metrics.point_metrics(np.array([0, 1]), np.full((2, 3), 0.5))
    with pytest.raises(LungctError):
        metrics.classification_metrics(np.array([0, 1]), np.full((2, 3), 1 / 3), groups=["a"])
    with pytest.raises(LungctError):
        metrics.binary_view(np.array([0, 1]), np.full((2, 3), 1 / 3), "benign_vs_rest")
