"""Grouped k-fold cross-validation: fold assignment, the per-fold summary and its table."""

from __future__ import annotations

from typing import Any

import numpy as np

from lungct.data.splits import grouped_kfold

KEY_METRICS = (
    "decision.slice.accuracy",
    "decision.slice.balanced_accuracy",
    "decision.slice.per_class.normal.recall",
    "decision.slice.per_class.benign.recall",
    "decision.slice.malignant.sensitivity",
    "decision.slice.malignant.specificity",
    "decision.case.balanced_accuracy",
    "decision.case.abnormal.sensitivity",
    "decision.case.abnormal.specificity",
    "abnormal_vs_normal.auc",
    "malignant_vs_rest.auc",
    "macro_auc",
    "calibration.ece",
)
"""Per-fold numbers that CV summarises: the shipped decision first, then threshold-free ranking."""


def metric_at(d: dict, dotted: str) -> float | None:
    """The number at a dotted key of a nested metrics dict (None when absent or not a number)."""
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, int | float) else None


def fold_assignment(rows: list, test_idx: np.ndarray, val_fraction: float, seed: int) -> list[str]:
    """Split names for one fold: held-out fold = 'test'; a grouped 'val' part carved from the rest."""
    rest = np.setdiff1d(np.arange(len(rows)), test_idx)
    n_groups = len({rows[i].group_id for i in rest})
    k_val = max(2, min(round(1 / val_fraction), n_groups))
    _, val_local = grouped_kfold([rows[i] for i in rest], k=k_val, seed=seed)[0]
    assignment = ["train"] * len(rows)
    for i in test_idx:
        assignment[i] = "test"
    for j in val_local:
        assignment[rest[j]] = "val"
    return assignment


def summarise(per_fold: list[dict]) -> dict[str, dict[str, float | None]]:
    """Mean and sample standard deviation of each key metric over folds (None when undefined)."""
    out: dict[str, dict[str, float | None]] = {}
    for key in KEY_METRICS:
        vals = [v for v in (metric_at(m, key) for m in per_fold) if v is not None]
        out[key] = {
            "mean": float(np.mean(vals)) if vals else None,
            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "n_folds": len(vals),
        }
    return out


def cv_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Grouped {result['folds']}-fold cross-validation: {result['model']}",
        "",
        "| metric | mean | sd | folds |",
        "|---|---|---|---|",
    ]
    for key, s in result["summary"].items():
        mean = "n/a" if s["mean"] is None else f"{s['mean']:.3f}"
        sd = "n/a" if s["sd"] is None else f"{s['sd']:.3f}"
        lines.append(f"| {key} | {mean} | {sd} | {s['n_folds']} |")
    return "\n".join(lines) + "\n"
