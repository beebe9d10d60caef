"""Evaluation figures written as PNG files.

Figures are built from ``matplotlib.figure.Figure`` objects (Agg canvas) and never touch
``pyplot``, so importing or calling this module changes no global matplotlib state.
Array conventions follow ``lungct.metrics``: ``y`` int ``(N,)``, ``probs`` float ``(N, 3)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from lungct import CLASSES
from lungct.errors import LungctError
from lungct.evaluation.metrics import BINARY_TASKS, binary_view, ece, reliability_bins

DPI = 120
_TASK_LABELS = {"malignant_vs_rest": "malignant vs rest", "abnormal_vs_normal": "abnormal vs normal"}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png")
    fig.clear()
    return out


def _curves(y: np.ndarray, probs: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(label, positives (N,) bool, score (N,))`` for each one-vs-rest class and binary task."""
    labels = np.asarray(y)
    p = np.asarray(probs, dtype=np.float64)
    rows = [(name, labels == k, p[:, k]) for k, name in enumerate(CLASSES)]
    rows += [(_TASK_LABELS[task], *binary_view(labels, p, task)) for task in BINARY_TASKS]
    return rows


def plot_confusion(
    cm: np.ndarray, path: str | Path, title: str = "Confusion matrix", normalise: bool = True
) -> Path:
    """Confusion matrix ``(3, 3)`` (rows = true, columns = predicted) with counts and row %.

    Colour shows the row fraction when ``normalise`` is true, raw counts otherwise.
    """
    counts = np.asarray(cm, dtype=np.float64)
    if counts.shape != (len(CLASSES), len(CLASSES)):
        raise LungctError(f"confusion matrix must be {len(CLASSES)}x{len(CLASSES)}, got {counts.shape}")
    row_sums = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    shown = fractions if normalise else counts
    fig = _new_figure(5.2, 4.6)
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else max(1.0, counts.max()))
    fig.colorbar(image, ax=ax, label="fraction of true class" if normalise else "images")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            dark = shown[i, j] > 0.5 * (1 if normalise else max(1.0, counts.max()))
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}\n({100 * fractions[i, j]:.1f}%)",
                ha="center",
                va="center",
                color="white" if dark else "black",
                fontsize=10,
            )
    ticks = range(len(CLASSES))
    ax.set_xticks(ticks, CLASSES)
    ax.set_yticks(ticks, CLASSES)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    return _save(fig, path)


def plot_roc(y: np.ndarray, probs: np.ndarray, path: str | Path, title: str = "ROC curves") -> Path:
    """One-vs-rest ROC per class plus malignant-vs-rest and abnormal-vs-normal; AUC in the legend.

    A curve whose positives or negatives are absent is listed as "n/a" and not drawn.
    """
    fig = _new_figure(6.0, 5.2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    for i, (label, pos, score) in enumerate(_curves(y, probs)):
        style = "-" if i < len(CLASSES) else "--"
        if pos.all() or not pos.any():
            ax.plot([], [], linestyle=style, label=f"{label} (AUC n/a: one class only)")
            continue
        fpr, tpr, _ = roc_curve(pos, score)
        auc = roc_auc_score(pos, score)
        ax.plot(fpr, tpr, linestyle=style, linewidth=1.6, label=f"{label} (AUC {auc:.3f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pr(
    y: np.ndarray, probs: np.ndarray, path: str | Path, title: str = "Precision-recall curves"
) -> Path:
    """Precision-recall curves for the same tasks as ``plot_roc``; average precision in the legend."""
    fig = _new_figure(6.0, 5.2)
    ax = fig.add_subplot()
    for i, (label, pos, score) in enumerate(_curves(y, probs)):
        style = "-" if i < len(CLASSES) else "--"
        if not pos.any():
            ax.plot([], [], linestyle=style, label=f"{label} (AP n/a: no positives)")
            continue
        precision, recall, _ = precision_recall_curve(pos, score)
        ap = average_precision_score(pos, score)
        prevalence = pos.mean()
        ax.plot(
            recall,
            precision,
            linestyle=style,
            linewidth=1.6,
            label=f"{label} (AP {ap:.3f}, prev {prevalence:.2f})",
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_reliability(
    y: np.ndarray,
    probs_before: np.ndarray | None,
    probs_after: np.ndarray,
    path: str | Path,
    n_bins: int = 15,
    title: str = "Reliability (top-label)",
) -> Path:
    """Reliability diagram before/after temperature scaling with ECE in the legend.

    Top panel: accuracy vs mean confidence per bin (empty bins skipped). Bottom panel: images per
    bin. ``probs_before`` may be None to draw a single curve.
    """
    fig = _new_figure(5.6, 6.2)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    series = [("before scaling", probs_before, "o--"), ("after scaling", probs_after, "s-")]
    width = 1.0 / n_bins
    for offset, (label, probs, marker) in enumerate(s for s in series if s[1] is not None):
        table = reliability_bins(probs, y, n_bins)
        filled = table["count"] > 0
        score = ece(probs, y, n_bins)
        top.plot(
            table["confidence"][filled],
            table["accuracy"][filled],
            marker,
            markersize=4,
            label=f"{label} (ECE {score:.3f})",
        )
        centres = table["edges"][:-1] + width * (0.3 + 0.4 * offset)
        bottom.bar(centres, table["count"], width=0.4 * width, label=label)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.01)
    top.set_ylabel("Accuracy in bin")
    top.set_title(title)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_xlabel("Confidence (top-class probability)")
    bottom.set_ylabel("Images")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and values of ``key`` over the rows that have a finite value for it."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        value = row.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value):
            xs.append(row.get("epoch", i + 1))
            ys.append(float(value))
    return np.asarray(xs, dtype=np.float64), np.asarray(ys)


def plot_history(history_rows: Sequence[dict[str, Any]], path: str | Path, title: str = "Training") -> Path:
    """Loss, validation accuracy and learning rate per epoch; missing keys are simply not drawn.

    Rows: dicts with any of ``epoch, train_loss, val_loss, val_accuracy, val_balanced_accuracy, lr``.
    """
    fig = _new_figure(11.0, 3.8)
    panels = fig.subplots(1, 3)
    layout = [
        (panels[0], "Loss", ("train_loss", "val_loss")),
        (panels[1], "Validation accuracy", ("val_accuracy", "val_balanced_accuracy")),
        (panels[2], "Learning rate", ("lr",)),
    ]
    for ax, label, keys in layout:
        drawn = 0
        for key in keys:
            xs, ys = _series(history_rows, key)
            if xs.size:
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
                drawn += 1
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    lr = _series(history_rows, "lr")[1]
    if lr.size and np.all(lr > 0):
        panels[2].set_yscale("log")
    fig.suptitle(title)
    return _save(fig, path)
