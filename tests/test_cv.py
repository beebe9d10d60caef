"""Grouped cross-validation: folds never share a scan group; summary has mean and sd."""

from __future__ import annotations

import json

from lungct.config import make_config
from lungct.evaluation.cv import summarise
from lungct.pipeline.crossval import run_cv


def test_cv_on_phantoms(phantom_root, tmp_path):
    cfg = make_config(
        {
            "data": str(phantom_root),
            "model": "small_cnn",
            "pretrained": "none",
            "image_size": 32,
            "epochs": 1,
            "batch_size": 8,
            "n_boot": 10,
            "threads": 2,
        }
    )
    res = run_cv(cfg, tmp_path / "cv", folds=2, progress=False)
    assert res["folds"] == 2 and len(res["per_fold"]) == 2
    acc = res["summary"]["decision.slice.accuracy"]
    assert acc["n_folds"] == 2 and acc["sd"] is not None
    # Model selection never sees the test split that `lungct train` holds out with this seed.
    from lungct.data.audit import run_audit
    from lungct.pipeline.training import make_split

    rows = run_audit(phantom_root, progress=False).rows
    test_groups_of_train = {
        r.group_id for r, s in zip(rows, make_split(cfg, rows), strict=True) if s == "test"
    }
    assert set(res["excluded_test_groups"]) == test_groups_of_train and test_groups_of_train
    for k in (1, 2):
        split = tmp_path / "cv" / f"fold_{k}" / "split.csv"
        run = json.loads((tmp_path / "cv" / f"fold_{k}" / "run.json").read_text())
        assert run["split"]["test"]["images"] > 0
        assert not split.exists() or split.stat().st_size > 0
    test_groups = []
    for k in (1, 2):
        m = json.loads((tmp_path / "cv" / f"fold_{k}" / "eval" / "test" / "metrics.json").read_text())
        assert m["n"] > 0
        preds = (
            (tmp_path / "cv" / f"fold_{k}" / "eval" / "test" / "predictions.csv").read_text().splitlines()[1:]
        )
        test_groups.append({line.split(",")[2] for line in preds})
    assert not (test_groups[0] & test_groups[1]), "a scan group was tested in two folds"
    assert not (test_groups[0] | test_groups[1]) & test_groups_of_train, "CV evaluated a test-split group"
    assert (tmp_path / "cv" / "cv.md").read_text().startswith("# Grouped 2-fold")


def test_summarise_mean_and_sd():
    folds = [{"decision": {"slice": {"accuracy": v}}} for v in (0.5, 0.7, None)]
    s = summarise(folds)["decision.slice.accuracy"]
    assert abs(s["mean"] - 0.6) < 1e-9 and s["n_folds"] == 2
    assert abs(s["sd"] - 0.1414213) < 1e-6
