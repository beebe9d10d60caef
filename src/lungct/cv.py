"""Grouped k-fold cross-validation: model selection without touching a single small test split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from lungct.config import TrainConfig, save_config
from lungct.data import resolve_data_dir
from lungct.models import get_spec
from lungct.pipeline import preprocess_config, train_and_evaluate
from lungct.runs import RunPaths, environment, write_json
from lungct.train import load_images, set_determinism, set_threads

KEY_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "macro_auc",
    "per_class.benign.sensitivity",
    "per_class.normal.sensitivity",
    "malignant_vs_rest.sensitivity",
    "malignant_vs_rest.specificity",
    "calibration.ece",
    "case_level.accuracy",
    "case_level.balanced_accuracy",
)


def _get(d: dict, dotted: str) -> float | None:
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, int | float) else None


def fold_assignment(rows: list, test_idx: np.ndarray, val_fraction: float, seed: int) -> list[str]:
    """Split names for one fold: held-out fold = 'test'; a grouped 'val' part carved from the rest."""
    from lungct.splits import grouped_kfold

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
        vals = [v for v in (_get(m, key) for m in per_fold) if v is not None]
        out[key] = {
            "mean": float(np.mean(vals)) if vals else None,
            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "n_folds": len(vals),
        }
    return out


def run_cv(cfg: TrainConfig, out_dir: str | Path, folds: int = 5, progress: bool = True) -> dict[str, Any]:
    """Grouped k-fold CV; each fold is a full run folder under ``out_dir/fold_k``; writes cv.json, cv.md."""
    from lungct.audit import run_audit
    from lungct.splits import grouped_kfold

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(cfg.seed)
    set_threads(cfg.threads)
    save_config(cfg, out / "config.yaml")
    write_json(out / "environment.json", environment())
    t0 = time.time()
    root = resolve_data_dir(cfg.data)
    audit = run_audit(root, class_map=cfg.class_map, out_dir=out / "audit", progress=progress)
    rows = audit.rows
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
        "summary": summarise(per_fold),
        "per_fold": [{key: _get(m, key) for key in KEY_METRICS} for m in per_fold],
        "seconds": round(time.time() - t0, 1),
    }
    write_json(out / "cv.json", result)
    (out / "cv.md").write_text(cv_markdown(result))
    return result


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
