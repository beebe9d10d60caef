"""Plots: every function writes a valid, non-trivial PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungct.evaluation import metrics as metrics
from lungct.evaluation import plots as plots


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    logits = 3 * rng.normal(size=(60, 3)) + 2 * np.eye(3)[y]
    return y, metrics.softmax(logits), metrics.softmax(logits, 3.0)


def _check_png(path: Path, min_side: int = 300) -> None:
    assert path.is_file() and path.stat().st_size > 2000
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) >= min_side
        extrema = image.convert("L").getextrema()
        assert extrema[0] < extrema[1]  # not a blank canvas


def test_plot_confusion(tmp_path, data):
    y, probs, _ = data
    cm = np.array(metrics.point_metrics(y, probs)["confusion_matrix"])
    out = plots.plot_confusion(cm, tmp_path / "sub" / "cm.png")
    assert out == tmp_path / "sub" / "cm.png"
    _check_png(out)
    _check_png(plots.plot_confusion(cm, tmp_path / "cm_counts.png", normalise=False))


def test_plot_roc_and_pr(tmp_path, data):
    y, probs, _ = data
    _check_png(plots.plot_roc(y, probs, tmp_path / "roc.png"))
    _check_png(plots.plot_pr(y, probs, tmp_path / "pr.png"))


def test_curves_tolerate_missing_class(tmp_path, data):
    y, probs, _ = data
    keep = y != 2
    _check_png(plots.plot_roc(y[keep], probs[keep], tmp_path / "roc.png"))
    _check_png(plots.plot_pr(y[keep], probs[keep], tmp_path / "pr.png"))


def test_plot_reliability(tmp_path, data):
    y, before, after = data
    _check_png(plots.plot_reliability(y, before, after, tmp_path / "rel.png"))
    _check_png(plots.plot_reliability(y, None, after, tmp_path / "rel_after.png", n_bins=10))


def test_plot_history_tolerates_missing_keys(tmp_path):
    rows = [
        {"epoch": 1, "train_loss": 1.1, "val_loss": 1.0, "val_accuracy": 0.5, "lr": 1e-3},
        {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9, "val_accuracy": 0.6, "lr": 5e-4},
        {"epoch": 3, "train_loss": 0.6, "val_balanced_accuracy": 0.55},
    ]
    _check_png(plots.plot_history(rows, tmp_path / "history.png"))
    _check_png(plots.plot_history([], tmp_path / "empty.png"))
