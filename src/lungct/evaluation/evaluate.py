"""Evaluation: slice- and case-level metrics with group-bootstrap CIs, plots, predictions CSV.

Any folder in the class-folder layout can be evaluated (external validation): it is audited first,
so its reconstructed scan groups drive the bootstrap and the case-level aggregation.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from lungct import CLASSES
from lungct.evaluation.metrics import aggregate_cases, classification_metrics, softmax
from lungct.evaluation.plots import plot_confusion, plot_pr, plot_reliability, plot_roc
from lungct.model.predictor import Predictor, decide
from lungct.runs import write_json


def evaluate_predictions(
    y: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    out_dir: Path,
    *,
    threshold: float,
    temperature: float,
    case_how: str = "mean",
    n_boot: int = 1000,
    seed: int = 0,
    title: str = "test",
) -> dict[str, Any]:
    """Metrics for calibrated ``probs`` (N, 3); writes metrics.json and PNG plots into ``out_dir``.

    ``probs`` were produced at ``temperature``; the uncalibrated view is recovered as
    softmax(T * log p) for the before/after calibration comparison.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    probs = np.clip(probs, 1e-12, 1.0)
    logits = temperature * np.log(probs)
    m = classification_metrics(
        y,
        probs,
        groups,
        malignant_threshold=threshold,
        n_boot=n_boot,
        seed=seed,
        logits=logits,
        temperature=temperature,
    )
    cy, cp, _ = aggregate_cases(y, probs, groups, how=case_how)
    case = classification_metrics(cy, cp, None, malignant_threshold=threshold, n_boot=n_boot, seed=seed)
    case["aggregation"] = case_how
    m["case_level"] = case
    before = softmax(logits)
    plots = {
        "confusion": plot_confusion(
            np.asarray(m["confusion_matrix"]),
            out_dir / "confusion.png",
            title=f"Confusion matrix ({title}, slices)",
        ),
        "confusion_cases": plot_confusion(
            np.asarray(case["confusion_matrix"]),
            out_dir / "confusion_cases.png",
            title=f"Confusion matrix ({title}, scan groups)",
        ),
        "roc": plot_roc(y, probs, out_dir / "roc.png", title=f"ROC ({title})"),
        "pr": plot_pr(y, probs, out_dir / "pr.png", title=f"Precision-recall ({title})"),
        "reliability": plot_reliability(y, before, probs, out_dir / "reliability.png"),
    }
    m["plots"] = {k: Path(v).name for k, v in plots.items()}
    write_json(out_dir / "metrics.json", m)
    return m


def write_predictions(
    path: Path, sources: list[str], y: np.ndarray, groups: np.ndarray, probs: np.ndarray, threshold: float
) -> None:
    """One CSV row per slice: path, true class, group, probabilities, arg-max and thresholded decision."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "true", "group_id", *[f"p_{c}" for c in CLASSES], "predicted", "decision"])
        for s, t, g, p in zip(sources, y, groups, probs, strict=True):
            pred = CLASSES[int(np.argmax(p))]
            dec = decide(p, threshold)
            w.writerow([s, CLASSES[int(t)], g, *[f"{v:.6f}" for v in p], pred, dec])


def evaluate_rows(
    predictor: Predictor,
    root: Path,
    rows: list,
    out_dir: Path,
    *,
    case_how: str = "mean",
    n_boot: int = 1000,
    seed: int = 0,
    title: str = "test",
    progress: bool = True,
) -> dict[str, Any]:
    """Predict the manifest ``rows`` (paths relative to ``root``) and evaluate them."""
    preds = predictor.predict_paths([root / r.path for r in rows], progress=progress)
    probs = np.stack([p.probs for p in preds]) if preds else np.zeros((0, len(CLASSES)))
    y = np.array([r.label for r in rows])
    groups = np.array([r.group_id for r in rows])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(
        out_dir / "predictions.csv", [r.path for r in rows], y, groups, probs, predictor.threshold
    )
    return evaluate_predictions(
        y,
        probs,
        groups,
        out_dir,
        threshold=predictor.threshold,
        temperature=predictor.temperature,
        case_how=case_how,
        n_boot=n_boot,
        seed=seed,
        title=title,
    )


def evaluate_folder(
    predictor: Predictor,
    data_root: Path,
    out_dir: Path,
    *,
    class_map: dict | None = None,
    case_how: str = "mean",
    n_boot: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Audit an external folder (for its scan groups), then evaluate every readable image in it."""
    from lungct.data.audit import run_audit

    audit = run_audit(data_root, class_map=class_map, out_dir=out_dir / "audit", progress=progress)
    m = evaluate_rows(
        predictor,
        Path(audit.root),
        audit.rows,
        out_dir,
        case_how=case_how,
        n_boot=n_boot,
        title=Path(data_root).name or "external",
        progress=progress,
    )
    m["skipped_files"] = len(audit.skipped)
    write_json(out_dir / "metrics.json", m)
    return m
