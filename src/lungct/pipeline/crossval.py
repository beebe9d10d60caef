"""Grouped k-fold cross-validation runs: each fold is a full run folder; cv.json and cv.md summarise them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lungct.config import TrainConfig, save_config
from lungct.data.audit import run_audit
from lungct.data.discovery import resolve_data_dir
from lungct.data.splits import grouped_kfold
from lungct.evaluation.cv import KEY_METRICS, cv_markdown, fold_assignment, metric_at, summarise
from lungct.fileio import atomic_text
from lungct.model.registry import get_spec
from lungct.model.train import load_images, set_determinism, set_threads
from lungct.pipeline.training import make_split, preprocess_config, train_and_evaluate
from lungct.runs import RunPaths, environment, write_json


def run_cv(cfg: TrainConfig, out_dir: str | Path, folds: int = 5, progress: bool = True) -> dict[str, Any]:
    """Grouped k-fold CV over the training groups; each fold is a full run folder under ``out_dir/fold_k``.

    The test split that `lungct train` would hold out for this config (same seed and fractions) is
    excluded first, so model selection by CV never sees the groups the final numbers are reported on.
    Writes cv.json and cv.md.
    """

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(cfg.seed)
    set_threads(cfg.threads)
    save_config(cfg, out / "config.yaml")
    write_json(out / "environment.json", environment())
    t0 = time.time()
    root = resolve_data_dir(cfg.data)
    audit = run_audit(root, class_map=cfg.class_map, out_dir=out / "audit", progress=progress)
    split = make_split(cfg, audit.rows)
    rows = [r for r, s in zip(audit.rows, split, strict=True) if s != "test"]
    excluded = sorted({r.group_id for r, s in zip(audit.rows, split, strict=True) if s == "test"})
    pre = preprocess_config(cfg, get_spec(cfg.model).input_size)
    images = load_images([root / r.path for r in rows], pre, progress=progress)
    per_fold = []
    for k, (_, test_idx) in enumerate(grouped_kfold(rows, k=folds, seed=cfg.seed)):
        assignment = fold_assignment(rows, test_idx, cfg.val_fraction, cfg.seed + k)
        set_determinism(cfg.seed + k)
        m = train_and_evaluate(
            cfg,
            root,
            rows,
            assignment,
            RunPaths(out / f"fold_{k + 1}"),
            images=images,
            extra={"split_mode": f"grouped {folds}-fold CV, fold {k + 1}"},
            progress=progress,
        )
        per_fold.append(m)
    result = {
        "model": cfg.model,
        "folds": folds,
        "data": f"{len(rows)} images of the training groups; the {len(excluded)} test-split scan groups "
        "of `lungct train` with this seed are excluded",
        "excluded_test_groups": excluded,
        "summary": summarise(per_fold),
        "per_fold": [{key: metric_at(m, key) for key in KEY_METRICS} for m in per_fold],
        "seconds": round(time.time() - t0, 1),
    }
    write_json(out / "cv.json", result)
    atomic_text(out / "cv.md", cv_markdown(result))
    return result
