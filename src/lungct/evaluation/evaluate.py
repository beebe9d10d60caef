"""Evaluation: slice- and case-level metrics with group-bootstrap CIs, plots, predictions CSV.

Any folder in the class-folder layout can be evaluated (external validation): it is audited first,
so its reconstructed scan groups drive the bootstrap and the case-level aggregation.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lungct import CLASSES
from lungct.evaluation.decision_metrics import decision_metrics
from lungct.evaluation.metrics import aggregate_cases, classification_metrics, point_metrics, softmax
from lungct.evaluation.overlap import check_overlap
from lungct.evaluation.plots import plot_confusion, plot_pr, plot_reliability, plot_roc
from lungct.fileio import atomic_text_writer
from lungct.model.decision import DecisionRule
from lungct.model.predictor import Predictor
from lungct.runs import write_json


def evaluate_predictions(
    y: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    out_dir: Path,
    *,
    rule: DecisionRule,
    temperature: float,
    subsets: dict[str, np.ndarray] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    title: str = "test",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics for calibrated ``probs`` (N, 3); writes metrics.json, cases.csv and PNG plots to ``out_dir``.

    ``decision`` holds the metrics of the shipped ``rule`` (slices and cases); the top-level metrics
    are the arg-max view (a secondary, threshold-free description of the ranking). ``subsets`` maps a
    name to a bool (N,) mask, e.g. square 512x512 images only; each gets its own decision block.
    ``probs`` were produced at ``temperature``; the uncalibrated view is softmax(T * log p).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    probs = np.clip(probs, 1e-12, 1.0)
    logits = temperature * np.log(probs)
    m = classification_metrics(
        y,
        probs,
        groups,
        malignant_threshold=rule.malignant_threshold,
        n_boot=n_boot,
        seed=seed,
        logits=logits,
        temperature=temperature,
    )
    m["argmax_note"] = "arg-max class view: not the shipped decision (see 'decision')"
    cy, cp, ids = aggregate_cases(y, probs, groups, how=rule.case_aggregation)
    case = classification_metrics(
        cy, cp, None, malignant_threshold=rule.malignant_threshold, n_boot=n_boot, seed=seed
    )
    case["aggregation"] = rule.case_aggregation
    m["case_level"] = case
    m["decision"] = decision_block(y, probs, groups, rule, n_boot=n_boot, seed=seed)
    write_cases(out_dir / "cases.csv", ids, cy, cp, rule, [int(np.sum(groups == g)) for g in ids])
    m["subsets"] = {
        name: _subset_block(y[mask], probs[mask], groups[mask], rule, n_boot, seed)
        for name, mask in (subsets or {}).items()
    }
    before = softmax(logits)
    plots = {
        "confusion": plot_confusion(
            np.asarray(m["decision"]["slice"]["confusion_matrix"]),
            out_dir / "confusion.png",
            title=f"Shipped decision ({title}, slices)",
        ),
        "confusion_cases": plot_confusion(
            np.asarray(m["decision"]["case"]["confusion_matrix"]),
            out_dir / "confusion_cases.png",
            title=f"Shipped decision ({title}, scans)",
        ),
        "roc": plot_roc(y, probs, out_dir / "roc.png", title=f"ROC ({title})"),
        "pr": plot_pr(y, probs, out_dir / "pr.png", title=f"Precision-recall ({title})"),
        "reliability": plot_reliability(y, before, probs, out_dir / "reliability.png"),
    }
    m["plots"] = {k: Path(v).name for k, v in plots.items()}
    m.update(extra or {})
    write_json(out_dir / "metrics.json", m)
    return m


def decision_block(
    y: np.ndarray, probs: np.ndarray, groups: np.ndarray, rule: DecisionRule, *, n_boot: int, seed: int
) -> dict[str, Any]:
    """Metrics of the shipped rule on slices (group-bootstrap CIs) and on cases (one row per group)."""
    cy, cp, _ = aggregate_cases(y, probs, groups, how=rule.case_aggregation)
    return {
        "rule": rule.to_dict(),
        "slice": decision_metrics(y, rule.decide(probs), groups, n_boot=n_boot, seed=seed),
        "case": decision_metrics(cy, rule.decide(cp), None, n_boot=n_boot, seed=seed),
    }


def decision_columns(block: dict[str, Any]) -> dict[str, float | None]:
    """Flat comparison columns of a :func:`decision_block` (benchmarks and studies print these):
    slice accuracy, balanced accuracy, normal / benign recall, malignant sensitivity / specificity, and
    at case level balanced accuracy, abnormal scans flagged and normal scans cleared."""
    s, c = block["slice"], block["case"]
    return {
        "accuracy": s["accuracy"],
        "balanced_accuracy": s["balanced_accuracy"],
        "normal_recall": s["per_class"]["normal"]["recall"],
        "benign_recall": s["per_class"]["benign"]["recall"],
        "malignant_sensitivity": s["malignant"]["sensitivity"],
        "malignant_specificity": s["malignant"]["specificity"],
        "case_balanced_accuracy": c["balanced_accuracy"],
        "case_abnormal_flagged": c["abnormal"]["sensitivity"],
        "case_normal_cleared": c["abnormal"]["specificity"],
    }


def _subset_block(
    y: np.ndarray, probs: np.ndarray, groups: np.ndarray, rule: DecisionRule, n_boot: int, seed: int
) -> dict[str, Any]:
    if len(y) == 0:
        return {"n": 0}
    point = point_metrics(y, probs, rule.malignant_threshold)
    return {
        "n": len(y),
        "n_groups": len(set(groups.tolist())),
        "classes": {c: int(np.sum(y == k)) for k, c in enumerate(CLASSES)},
        "malignant_auc": point["malignant_vs_rest"]["auc"],
        "macro_auc": point["macro_auc"],
        "decision": decision_block(y, probs, groups, rule, n_boot=n_boot, seed=seed),
    }


def write_cases(
    path: Path, ids: np.ndarray, cy: np.ndarray, cp: np.ndarray, rule: DecisionRule, n_slices: list[int]
) -> None:
    """One CSV row per case: group id, true class, the shipped case decision, case probabilities, slices."""
    with atomic_text_writer(path) as fh:
        w = csv.writer(fh)
        w.writerow(["group_id", "true", "decision", *[f"p_{c}" for c in CLASSES], "n_slices"])
        for g, t, p, n in zip(ids, cy, cp, n_slices, strict=True):
            w.writerow([g, CLASSES[int(t)], rule.decide_one(p), *[f"{v:.6f}" for v in p], n])


def write_predictions(
    path: Path, sources: list[str], y: np.ndarray, groups: np.ndarray, probs: np.ndarray, rule: DecisionRule
) -> None:
    """One CSV row per slice: path, true class, group, probabilities, arg-max and the shipped decision."""
    decided = rule.decide(probs)
    with atomic_text_writer(path) as fh:
        w = csv.writer(fh)
        w.writerow(["path", "true", "group_id", *[f"p_{c}" for c in CLASSES], "predicted", "decision"])
        for s, t, g, p, d in zip(sources, y, groups, probs, decided, strict=True):
            w.writerow(
                [s, CLASSES[int(t)], g, *[f"{v:.6f}" for v in p], CLASSES[int(np.argmax(p))], CLASSES[d]]
            )


SQUARE_512 = "512x512 only"
"""Subset name: images of the release's usual size (all non-square images in it are malignant)."""


def evaluate_rows(
    predictor: Predictor,
    root: Path,
    rows: list,
    out_dir: Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    title: str = "test",
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict the manifest ``rows`` (paths relative to ``root``) and evaluate them with the shipped rule;
    ``extra`` keys are added to metrics.json."""
    preds = predictor.predict_paths([root / r.path for r in rows], progress=progress)
    probs = np.stack([p.probs for p in preds]) if preds else np.zeros((0, len(CLASSES)))
    y = np.array([r.label for r in rows])
    groups = np.array([r.group_id for r in rows])
    square = np.array([r.width == 512 and r.height == 512 for r in rows], dtype=bool)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(out_dir / "predictions.csv", [r.path for r in rows], y, groups, probs, predictor.rule)
    flagged = [p.guard.reason for p in preds if not p.assessed and p.guard is not None]
    guard = {
        "n_flagged": len(flagged),
        "reasons": dict(Counter(flagged)),
        "note": "metrics include flagged images; lungct predict and the web page refuse them",
    }
    return evaluate_predictions(
        y,
        probs,
        groups,
        out_dir,
        rule=predictor.rule,
        temperature=predictor.temperature,
        subsets={SQUARE_512: square},
        n_boot=n_boot,
        seed=seed,
        title=title,
        extra={**(extra or {}), "input_guard": guard},
    )


def evaluate_folder(
    predictor: Predictor,
    data_root: Path,
    out_dir: Path,
    *,
    run_root: Path | None = None,
    class_map: dict | None = None,
    n_boot: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Audit a folder (for its scan groups), evaluate every readable image in it, and check its overlap
    with the run's training and validation data (``run_root``): a folder with overlap is labelled leaky."""
    from lungct.data.audit import run_audit

    audit = run_audit(data_root, class_map=class_map, out_dir=out_dir / "audit", progress=progress)
    overlap = (
        check_overlap(run_root, Path(audit.root), audit.rows)
        if run_root is not None
        else {"checked": False, "note": "no run folder given: overlap not checked"}
    )
    return evaluate_rows(
        predictor,
        Path(audit.root),
        audit.rows,
        out_dir,
        n_boot=n_boot,
        title=Path(data_root).name or "external",
        progress=progress,
        extra={
            "skipped_files": len(audit.skipped),
            "data_root": str(data_root),
            "overlap": overlap,
            "external_validation": bool(overlap.get("checked")) and not overlap.get("leaky"),
        },
    )
