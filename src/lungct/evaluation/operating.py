"""Fitting what comes after training: temperature and the decision rule, on held-out predictions.

The selection criteria are declared here, before any data is seen, and never look at a test split:

* temperature: minimum NLL (:func:`lungct.evaluation.metrics.fit_temperature`);
* malignant threshold: the highest threshold whose sensitivity on held-out malignant slices reaches
  ``target_sensitivity``;
* benign threshold (on the benign share ``p_benign / (p_benign + p_normal)``): the lowest threshold
  that keeps at least ``target_normal_recall`` of the held-out normal slices below it, i.e. as many
  benign slices flagged as that allows (normal slices called malignant lower normal recall further:
  the report shows the recall of the whole rule);
* case aggregation: the one of :data:`CASE_AGGREGATIONS` with the best case-level balanced accuracy of
  the whole rule on the held-out scan groups (ties: the earlier in that list).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from lungct import CLASSES
from lungct.evaluation.decision_metrics import decision_metrics
from lungct.evaluation.metrics import aggregate_cases, ece, fit_temperature, nll, pick_threshold, softmax
from lungct.model.decision import BENIGN, CASE_AGGREGATIONS, MALIGNANT, NORMAL, DecisionRule, benign_share


def benign_threshold(probs: np.ndarray, y: np.ndarray, target_normal_recall: float) -> float:
    """Lowest benign-share threshold keeping the recall of normal slices >= target (0.5 without normals)."""
    normal = np.sort(benign_share(probs[y == NORMAL]))
    if normal.size == 0:
        return 0.5
    keep = math.ceil(target_normal_recall * normal.size - 1e-9)  # normals that must stay below
    if keep >= normal.size:
        return float(min(1.0, np.nextafter(normal[-1], np.inf)))
    return float(np.nextafter(normal[keep - 1], np.inf)) if keep > 0 else 0.0


def fit_operating_point(
    logits: np.ndarray,
    y: np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    *,
    target_sensitivity: float,
    target_normal_recall: float,
    case_aggregation: str = "auto",
    fitted_on: str,
) -> tuple[float, DecisionRule, dict[str, Any]]:
    """(temperature, rule, report) from held-out logits float (N, 3), labels (N,) and scan groups (N,).

    ``case_aggregation="auto"`` chooses among :data:`CASE_AGGREGATIONS` (see the module docstring);
    the report holds what each candidate scored, so the choice can be checked.
    """
    y = np.asarray(y, dtype=np.int64)
    t = fit_temperature(logits, y) if len(np.unique(y)) > 1 else 1.0
    probs = softmax(logits, t)
    t_mal = (
        pick_threshold(probs[:, MALIGNANT], y == MALIGNANT, target_sensitivity)
        if (y == MALIGNANT).any()
        else 0.5
    )
    t_ben = benign_threshold(probs, y, target_normal_recall) if (y == BENIGN).any() else 0.5
    candidates = CASE_AGGREGATIONS if case_aggregation == "auto" else (case_aggregation,)
    scores: dict[str, float | None] = {}
    for how in candidates:
        rule = DecisionRule(t_mal, t_ben, how)
        cy, cp, _ = aggregate_cases(y, probs, groups, how=how)
        scores[how] = decision_metrics(cy, rule.decide(cp), n_boot=0)["balanced_accuracy"]
    best = max(candidates, key=lambda h: (scores[h] if scores[h] is not None else -1.0, -candidates.index(h)))
    rule = DecisionRule(t_mal, t_ben, best, fitted_on)
    before = softmax(logits)
    report = {
        "temperature": float(t),
        "malignant_threshold": float(t_mal),
        "benign_threshold": float(t_ben),
        "target_sensitivity": target_sensitivity,
        "target_normal_recall": target_normal_recall,
        "case_aggregation_scores": scores,
        "fitted_on": fitted_on,
        "n_slices": len(y),
        "n_groups": len(set(np.asarray(groups).tolist())),
        "nll_before": nll(before, y),
        "nll_after": nll(probs, y),
        "ece_before": ece(before, y),
        "ece_after": ece(probs, y),
        "held_out_decision": decision_metrics(y, rule.decide(probs), groups, n_boot=0),
        "classes": list(CLASSES),
    }
    return float(t), rule, report
