"""Metrics of the shipped decision (not of the arg-max): what a user of the CLI or web page sees.

``y`` and ``pred`` are int arrays (N,) of class indices (``lungct.CLASSES`` order); ``pred`` comes from
:meth:`lungct.model.decision.DecisionRule.decide`. Intervals are percentile 95 % group-bootstrap
intervals (whole scan groups resampled), as for the other metrics. JSON-serialisable, None where
undefined, never NaN.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from lungct import CLASSES
from lungct.evaluation.metrics import group_codes, group_weights
from lungct.model.decision import MALIGNANT, NORMAL

K = len(CLASSES)

DECISION_CI = (
    "accuracy",
    "balanced_accuracy",
    *(f"per_class.{c}.recall" for c in CLASSES),
    "malignant.sensitivity",
    "malignant.specificity",
    "abnormal.sensitivity",
    "abnormal.specificity",
)
"""Decision metrics that get a bootstrap interval under ``ci95``."""


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), np.nan, dtype=np.float64), where=den > 0)


def _from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Every DECISION_CI metric from confusion matrices (B, K, K) (rows true, columns decided)."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)
    recall = _div(tp, support)
    out = {
        "accuracy": _div(tp.sum(axis=1), cm.sum(axis=(1, 2))),
        "balanced_accuracy": _div(np.nansum(recall, axis=1), np.sum(support > 0, axis=1).astype(float)),
    }
    for k, c in enumerate(CLASSES):
        out[f"per_class.{c}.recall"] = recall[:, k]
    mal_pos, mal_called = support[:, MALIGNANT], cm[:, :, MALIGNANT].sum(axis=1)
    out["malignant.sensitivity"] = _div(cm[:, MALIGNANT, MALIGNANT], mal_pos)
    out["malignant.specificity"] = _div(
        cm.sum(axis=(1, 2)) - mal_pos - mal_called + cm[:, MALIGNANT, MALIGNANT],
        cm.sum(axis=(1, 2)) - mal_pos,
    )
    abn = [k for k in range(K) if k != NORMAL]
    abn_true = cm[:, abn, :]
    out["abnormal.sensitivity"] = _div(abn_true[:, :, abn].sum(axis=(1, 2)), abn_true.sum(axis=(1, 2)))
    out["abnormal.specificity"] = _div(cm[:, NORMAL, NORMAL], support[:, NORMAL])
    return out


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)


def confusion(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """int (K, K) confusion matrix, rows = true class, columns = decided class."""
    cm = np.zeros((K, K), dtype=np.int64)
    np.add.at(cm, (np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return cm


def decision_metrics(
    y: np.ndarray,
    pred: np.ndarray,
    groups: Sequence[Hashable] | np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Confusion matrix, accuracy, balanced accuracy, per-class recall/precision, malignant and abnormal
    sensitivity/specificity of decided classes, with group-bootstrap 95 % CIs (``n_boot=0``: none)."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if y.shape != pred.shape:
        raise ValueError(f"y {y.shape} and pred {pred.shape} must have the same shape")
    cm = confusion(y, pred)
    point = {k: v[0] for k, v in _from_confusion(cm[None].astype(np.float64)).items()}
    precision = _div(np.diagonal(cm).astype(float), cm.sum(axis=0).astype(float))
    out: dict[str, Any] = {
        "n": len(y),
        "confusion_matrix": cm.tolist(),
        "accuracy": _num(point["accuracy"]),
        "balanced_accuracy": _num(point["balanced_accuracy"]),
        "per_class": {
            c: {
                "recall": _num(point[f"per_class.{c}.recall"]),
                "precision": _num(precision[k]),
                "n_true": int(cm[k].sum()),
                "n_decided": int(cm[:, k].sum()),
            }
            for k, c in enumerate(CLASSES)
        },
        "malignant": {s: _num(point[f"malignant.{s}"]) for s in ("sensitivity", "specificity")},
        "abnormal": {s: _num(point[f"abnormal.{s}"]) for s in ("sensitivity", "specificity")},
    }
    codes, ids = group_codes(groups, len(y))
    out["n_groups"] = len(ids)
    if n_boot <= 0 or len(y) == 0:
        out["ci95"] = {}
        return out
    rng = np.random.default_rng(seed)
    cells = np.zeros((len(y), K * K))
    cells[np.arange(len(y)), y * K + pred] = 1.0
    weights = group_weights(codes, len(ids), n_boot, rng)
    reps = _from_confusion((weights @ cells).reshape(-1, K, K))
    ci: dict[str, list[float] | None] = {}
    for name in DECISION_CI:
        v = reps[name][np.isfinite(reps[name])]
        ci[name] = [round(float(q), 6) for q in np.percentile(v, [2.5, 97.5])] if v.size else None
    out["ci95"] = ci
    out["ci95_method"] = f"group bootstrap, n_boot={n_boot}, groups={len(ids)}"
    return out
