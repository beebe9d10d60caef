"""Classification and calibration metrics with group-bootstrap confidence intervals.

Conventions used throughout:

* ``y``: int array ``(N,)`` of labels, ``0=normal, 1=benign, 2=malignant`` (see ``lungct.CLASSES``).
* ``probs``: float array ``(N, 3)`` whose rows sum to 1; ``logits``: float array ``(N, 3)``.
* ``groups``: array ``(N,)`` of scan-group ids (any hashable values); images of one scan share an id.

Every dict returned here is JSON-serialisable: plain ``float``/``int``/``list``, and ``None`` where a
value is undefined (for example an AUC when only one class is present). It never contains NaN.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from scipy.special import softmax as _scipy_softmax
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from lungct import CLASSES
from lungct.errors import LungctError
from lungct.model.decision import CASE_AGGREGATIONS, aggregate

N_CLASSES = len(CLASSES)
MALIGNANT = CLASSES.index("malignant")
NORMAL = CLASSES.index("normal")
BINARY_TASKS = ("malignant_vs_rest", "abnormal_vs_normal")
CI_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "macro_auc",
    "malignant_vs_rest.sensitivity",
    "malignant_vs_rest.specificity",
    "malignant_vs_rest.auc",
    "abnormal_vs_normal.sensitivity",
    "abnormal_vs_normal.specificity",
    "per_class.benign.sensitivity",
)
"""Metrics that get a bootstrap interval under ``ci95`` (dotted paths into the metrics dict)."""

_TEMPERATURE_BOUNDS = (0.05, 20.0)
_BOOT_CELLS = 4_000_000  # replicates x images processed at once; bounds bootstrap memory (~32 MB)


# --------------------------------------------------------------------------- input checks


def _check_labels(y: Any) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.size == 0:
        raise LungctError(f"labels must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise LungctError("labels must be integers 0 (normal), 1 (benign) or 2 (malignant)")
        arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= N_CLASSES:
        raise LungctError(f"labels must be in 0..{N_CLASSES - 1}, got values {sorted(set(arr.tolist()))}")
    return arr.astype(np.int64)


def _check_probs(probs: Any, n: int | None = None) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != N_CLASSES:
        raise LungctError(f"probabilities must have shape (N, {N_CLASSES}), got {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise LungctError(f"probabilities have {arr.shape[0]} rows but there are {n} labels")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise LungctError("probabilities must be finite and within [0, 1]")
    if not np.allclose(arr.sum(axis=1), 1.0, atol=1e-4):
        raise LungctError("probability rows must sum to 1 (apply softmax to logits first)")
    return arr


def _check_logits(logits: Any, n: int | None = None) -> np.ndarray:
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != N_CLASSES or (n is not None and arr.shape[0] != n):
        rows = "N" if n is None else n
        raise LungctError(f"logits must have shape ({rows}, {N_CLASSES}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise LungctError("logits must be finite")
    return arr


def group_codes(groups: Sequence[Hashable] | np.ndarray | None, n: int) -> tuple[np.ndarray, list]:
    """Integer code per image ``(N,)`` and the distinct group ids, in order of first appearance."""
    if groups is None:
        return np.arange(n), list(range(n))
    values = groups.ravel().tolist() if isinstance(groups, np.ndarray) else list(groups)
    if len(values) != n:
        raise LungctError(f"groups has {len(values)} entries but there are {n} labels")
    index: dict[Hashable, int] = {}
    codes = np.fromiter((index.setdefault(g, len(index)) for g in values), dtype=np.int64, count=n)
    return codes, list(index)


def _num(x: Any) -> float | None:
    """Plain float, or None when undefined (NaN/inf/None)."""
    if x is None:
        return None
    value = float(x)
    return value if math.isfinite(value) else None


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


# --------------------------------------------------------------------------- calibration


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``: ``(N, C)`` float64, rows sum to 1."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise LungctError(f"temperature must be a positive finite number, got {temperature}")
    return _scipy_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature ``T`` in [0.05, 20] minimising the NLL of ``softmax(logits / T)`` on ``y``.

    Fit on validation data only. ``T > 1`` softens over-confident predictions; argmax is unchanged.
    """
    labels = _check_labels(y)
    z = _check_logits(logits, len(labels))
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t), axis=1)[rows, labels].mean())

    lo, hi = (math.log(b) for b in _TEMPERATURE_BOUNDS)
    result = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(result.x))


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label reliability table over ``n_bins`` equal-width confidence bins ``(lo, hi]``.

    Returns arrays of length ``n_bins``: ``confidence`` (mean top probability, NaN for empty bins),
    ``accuracy`` (fraction correct, NaN for empty bins), ``count`` (int) and ``edges`` (n_bins + 1).
    """
    labels = _check_labels(y)
    p = _check_probs(probs, len(labels))
    if n_bins < 1:
        raise LungctError(f"n_bins must be >= 1, got {n_bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return {
        "confidence": mean_conf,
        "accuracy": mean_acc,
        "count": count,
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
    }


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error: sum over bins of ``|bin| / N * |accuracy - confidence|``."""
    table = reliability_bins(probs, y, n_bins)
    filled = table["count"] > 0
    weights = table["count"][filled] / table["count"].sum()
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float(np.sum(weights * gaps))


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log; probabilities clipped at 1e-15)."""
    labels = _check_labels(y)
    p = _check_probs(probs, len(labels))
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-15, 1.0)).mean())


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    """Multi-class Brier score: mean over samples of ``sum_k (p_k - onehot_k)^2`` (range 0..2)."""
    labels = _check_labels(y)
    p = _check_probs(probs, len(labels))
    onehot = np.eye(N_CLASSES)[labels]
    return float(np.sum((p - onehot) ** 2, axis=1).mean())


def _calibration_block(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"ece": ece(probs, y), "nll": nll(probs, y), "brier": brier(probs, y)}


# --------------------------------------------------------------------------- thresholds


def pick_threshold(scores: np.ndarray, positives: np.ndarray, target_sensitivity: float = 0.95) -> float:
    """Highest threshold ``t`` with sensitivity of ``scores >= t`` on the positives >= target.

    ``scores``: float ``(N,)``; ``positives``: bool ``(N,)`` marking the positive samples (negatives
    do not affect the result). The answer is the k-th highest positive score with
    ``k = ceil(target * n_positives)``. Ties: every sample whose score equals ``t`` is called
    positive, so with tied scores the achieved sensitivity can exceed the target.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos = np.asarray(positives, dtype=bool).ravel()
    if s.shape != pos.shape:
        raise LungctError(f"scores ({s.size}) and positives ({pos.size}) must have the same length")
    if not 0 < target_sensitivity <= 1:
        raise LungctError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    pos_scores = np.sort(s[pos])[::-1]
    if pos_scores.size == 0:
        raise LungctError("cannot pick a threshold: there are no positive samples in this split")
    if not np.all(np.isfinite(pos_scores)):
        raise LungctError("scores must be finite")
    k = max(1, math.ceil(target_sensitivity * pos_scores.size - 1e-9))
    return float(pos_scores[k - 1])


def binary_view(y: np.ndarray, probs: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Positives mask ``(N,)`` bool and score ``(N,)`` float for a binary task.

    ``"malignant_vs_rest"``: positive = malignant, score = p(malignant).
    ``"abnormal_vs_normal"``: positive = benign or malignant, score = 1 - p(normal).
    """
    labels = _check_labels(y)
    p = _check_probs(probs, len(labels))
    if task == "malignant_vs_rest":
        return labels == MALIGNANT, p[:, MALIGNANT]
    if task == "abnormal_vs_normal":
        return labels != NORMAL, 1.0 - p[:, NORMAL]
    raise LungctError(f"unknown binary task {task!r}; choose one of {', '.join(BINARY_TASKS)}")


# --------------------------------------------------------------------------- point metrics


def _auc(positives: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present."""
    if positives.all() or not positives.any():
        return None
    return float(roc_auc_score(positives, scores))


def _binary_block(positives: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    decision = scores >= threshold
    return {
        "sensitivity": _ratio(np.sum(decision & positives), np.sum(positives)),
        "specificity": _ratio(np.sum(~decision & ~positives), np.sum(~positives)),
        "auc": _auc(positives, scores),
        "threshold": float(threshold),
    }


def _per_class(labels: np.ndarray, p: np.ndarray, pred: np.ndarray, cm: np.ndarray) -> dict[str, Any]:
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, pred, labels=list(range(N_CLASSES)), zero_division=np.nan
    )
    out: dict[str, Any] = {}
    for k, name in enumerate(CLASSES):
        negatives = cm.sum() - cm[k].sum()
        true_negatives = negatives - (cm[:, k].sum() - cm[k, k])
        out[name] = {
            "sensitivity": _num(recall[k]),
            "specificity": _ratio(true_negatives, negatives),
            "precision": _num(precision[k]),
            "f1": _num(f1[k]),
            "auc": _auc(labels == k, p[:, k]),
            "support": int(support[k]),
        }
    return out


def point_metrics(y: np.ndarray, probs: np.ndarray, malignant_threshold: float | None = None) -> dict:
    """Point estimates (no intervals). Prediction = argmax of ``probs``.

    ``macro_f1`` counts an F1 with zero denominator as 0 (scikit-learn ``zero_division=0``);
    ``per_class.*.f1``/``precision`` are None when undefined. ``macro_auc`` is the unweighted mean
    of the one-vs-rest AUCs, None unless all three classes are present. ``balanced_accuracy``
    averages recall over the classes present in ``y``.
    """
    labels = _check_labels(y)
    p = _check_probs(probs, len(labels))
    threshold = 0.5 if malignant_threshold is None else float(malignant_threshold)
    if not 0.0 <= threshold <= 1.0:
        raise LungctError(f"malignant_threshold must be within [0, 1], got {malignant_threshold}")
    pred = p.argmax(axis=1)
    all_labels = list(range(N_CLASSES))
    cm = confusion_matrix(labels, pred, labels=all_labels)
    per_class = _per_class(labels, p, pred, cm)
    aucs = [per_class[name]["auc"] for name in CLASSES]
    abnormal = _binary_block(*binary_view(labels, p, "abnormal_vs_normal"), 0.5)
    del abnormal["threshold"]
    return {
        "n": len(labels),
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": _balanced_accuracy(labels, pred),
        "macro_f1": float(f1_score(labels, pred, labels=all_labels, average="macro", zero_division=0.0)),
        "macro_auc": None if None in aucs else float(np.mean(aucs)),
        "per_class": per_class,
        "malignant_vs_rest": _binary_block(*binary_view(labels, p, "malignant_vs_rest"), threshold),
        "abnormal_vs_normal": abnormal,
        "confusion_matrix": cm.astype(int).tolist(),
    }


def _balanced_accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over classes present in ``labels`` (predicted-only classes add nothing)."""
    present = np.isin(pred, np.unique(labels))
    if present.all():
        return float(balanced_accuracy_score(labels, pred))
    # A predicted class absent from the truth has undefined recall; scikit-learn drops it with a
    # warning. Mapping those predictions to a dummy wrong label gives the same value without one.
    remapped = np.where(present, pred, -1)
    recalls = [np.mean(remapped[labels == k] == k) for k in np.unique(labels)]
    return float(np.mean(recalls))


# --------------------------------------------------------------------------- group bootstrap


def _weighted_auc(weights: np.ndarray, positives: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC per row of ``weights`` ``(B, N)`` (image multiplicities); NaN where one class is absent.

    Mann-Whitney form with ties counted 1/2, identical to ``roc_auc_score`` on resampled data.
    """
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = weights[:, order]
    pos = positives[order]
    wp = np.add.reduceat(w * pos, starts, axis=1)
    wn = np.add.reduceat(w * ~pos, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn
    num = np.sum(wp * (below + 0.5 * wn), axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    return np.divide(num, den, out=np.full(len(num), np.nan), where=den > 0)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den > 0)


def _replicate_metrics(
    weights: np.ndarray, labels: np.ndarray, p: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Every metric of ``CI_METRICS`` for each row of ``weights`` ``(B, N)``; NaN where undefined."""
    pred = p.argmax(axis=1)
    cells = np.zeros((len(labels), N_CLASSES * N_CLASSES))
    cells[np.arange(len(labels)), labels * N_CLASSES + pred] = 1.0
    cm = (weights @ cells).reshape(-1, N_CLASSES, N_CLASSES)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    recall = _safe_div(tp, support)
    f1_den = support + predicted
    f1 = np.divide(2 * tp, f1_den, out=np.zeros_like(tp), where=f1_den > 0)
    aucs = np.stack([_weighted_auc(weights, labels == k, p[:, k]) for k in range(N_CLASSES)], axis=1)
    out = {
        "accuracy": tp.sum(axis=1) / cm.sum(axis=(1, 2)),
        "balanced_accuracy": np.nansum(recall, axis=1) / np.sum(support > 0, axis=1),
        "macro_f1": f1.mean(axis=1),
        "macro_auc": aucs.mean(axis=1),
        "per_class.benign.sensitivity": recall[:, CLASSES.index("benign")],
    }
    for task, thr in (("malignant_vs_rest", threshold), ("abnormal_vs_normal", 0.5)):
        pos, score = binary_view(labels, p, task)
        dec = score >= thr
        out[f"{task}.sensitivity"] = _safe_div(weights @ (pos & dec), weights @ pos)
        out[f"{task}.specificity"] = _safe_div(weights @ (~pos & ~dec), weights @ ~pos)
        out[f"{task}.auc"] = _weighted_auc(weights, pos, score)
    return {name: out[name] for name in CI_METRICS}


def group_weights(codes: np.ndarray, n_groups: int, n_rep: int, rng: np.random.Generator) -> np.ndarray:
    """Image multiplicities ``(n_rep, N)`` from drawing ``n_groups`` groups with replacement."""
    draws = rng.integers(0, n_groups, size=(n_rep, n_groups))
    flat = (draws + np.arange(n_rep)[:, None] * n_groups).ravel()
    counts = np.bincount(flat, minlength=n_rep * n_groups).reshape(n_rep, n_groups)
    return counts[:, codes].astype(np.float64)


def group_bootstrap(
    y: np.ndarray,
    probs: np.ndarray,
    groups: Sequence[Hashable] | np.ndarray | None = None,
    *,
    malignant_threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile 95% intervals for ``CI_METRICS``, resampling whole groups with replacement.

    Without ``groups`` each image is its own group. Replicates where a metric is undefined (e.g.
    no malignant image drawn) are skipped for that metric. Returns ``ci95`` (name -> [low, high] or
    None), ``ci95_valid_replicates`` (name -> count) and ``ci95_method``.
    """
    labels = _check_labels(y)
    p = _check_probs(probs, len(labels))
    if n_boot < 1:
        raise LungctError(f"n_boot must be >= 1, got {n_boot}")
    threshold = 0.5 if malignant_threshold is None else float(malignant_threshold)
    codes, ids = group_codes(groups, len(labels))
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CELLS // len(labels))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in CI_METRICS}
    for start in range(0, n_boot, chunk):
        weights = group_weights(codes, len(ids), min(chunk, n_boot - start), rng)
        for name, values in _replicate_metrics(weights, labels, p, threshold).items():
            parts[name].append(values)
    ci95: dict[str, list[float] | None] = {}
    valid_counts: dict[str, int] = {}
    for name in CI_METRICS:
        values = np.concatenate(parts[name])
        values = values[np.isfinite(values)]
        valid_counts[name] = int(values.size)
        ci95[name] = [float(v) for v in np.percentile(values, [2.5, 97.5])] if values.size else None
    return {
        "ci95": ci95,
        "ci95_valid_replicates": valid_counts,
        "ci95_method": f"group bootstrap, n_boot={n_boot}, groups={len(ids)}",
    }


# --------------------------------------------------------------------------- full report


def classification_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    groups: Sequence[Hashable] | np.ndarray | None = None,
    *,
    malignant_threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    logits: np.ndarray | None = None,
    temperature: float | None = None,
) -> dict[str, Any]:
    """Point metrics, calibration and group-bootstrap 95% intervals as a JSON-serialisable dict.

    ``probs`` are the (possibly temperature-scaled) probabilities being evaluated. When both
    ``logits`` and ``temperature`` are given, ``calibration.before`` reports ECE/NLL/Brier of
    ``softmax(logits)`` at T=1. ``n_boot=0`` skips the bootstrap (``ci95`` is then empty).
    """
    labels = _check_labels(y)
    p = _check_probs(probs, len(labels))
    out = point_metrics(labels, p, malignant_threshold)
    out["n_groups"] = len(group_codes(groups, len(labels))[1])
    calibration: dict[str, Any] = {"temperature": _num(temperature), **_calibration_block(p, labels)}
    if logits is not None and temperature is not None:
        calibration["before"] = _calibration_block(softmax(_check_logits(logits, len(labels))), labels)
    out["calibration"] = calibration
    if n_boot > 0:
        out.update(
            group_bootstrap(
                labels, p, groups, malignant_threshold=malignant_threshold, n_boot=n_boot, seed=seed
            )
        )
    else:
        out.update({"ci95": {}, "ci95_valid_replicates": {}, "ci95_method": None})
    return out


# --------------------------------------------------------------------------- case level


def mixed_groups(y: np.ndarray, groups: Sequence[Hashable] | np.ndarray) -> list[Hashable]:
    """Group ids whose images carry more than one label, in order of first appearance."""
    labels = _check_labels(y)
    codes, ids = group_codes(groups, len(labels))
    return [g for code, g in enumerate(ids) if len(np.unique(labels[codes == code])) > 1]


def _majority(labels: np.ndarray) -> int:
    """Most frequent label; a tie goes to the most severe label (higher index)."""
    counts = Counter(labels.tolist())
    return max(counts, key=lambda k: (counts[k], k))


def aggregate_cases(
    y: np.ndarray, probs: np.ndarray, groups: Sequence[Hashable] | np.ndarray, how: str = "mean"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per group (order of first appearance): ``(case_y (G,), case_probs (G, 3), ids (G,))``.

    Case probabilities: :func:`lungct.model.decision.aggregate` with ``how`` (one of
    ``CASE_AGGREGATIONS``; e.g. ``"mean"`` over slices, or ``"max"``: per-class maxima of p(malignant)
    and p(benign), p(normal) the rest, rescaled when they exceed 1). Case label = the group's label, or
    its majority label when the group is mixed (ties go to the more severe label); mixed groups
    raise a ``UserWarning`` giving their count (see ``mixed_groups``).
    """
    labels = _check_labels(y)
    p = _check_probs(probs, len(labels))
    if how not in CASE_AGGREGATIONS:
        raise LungctError(f"unknown case aggregation {how!r}; choose one of {', '.join(CASE_AGGREGATIONS)}")
    codes, ids = group_codes(groups, len(labels))
    case_y = np.empty(len(ids), dtype=np.int64)
    case_p = np.empty((len(ids), N_CLASSES))
    n_mixed = 0
    for g in range(len(ids)):
        members = codes == g
        case_y[g] = _majority(labels[members])
        n_mixed += len(np.unique(labels[members])) > 1
        case_p[g] = aggregate(p[members], how)
    if n_mixed:
        warnings.warn(
            f"{n_mixed} of {len(ids)} groups mix labels; their case label is the majority label",
            UserWarning,
            stacklevel=2,
        )
    return case_y, case_p, np.asarray(ids)
