"""The end-to-end training run: audit -> grouped split -> cache -> fit -> calibrate -> evaluate -> report."""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungct import CLASSES, __version__
from lungct.config import TrainConfig, save_config
from lungct.data.discovery import resolve_data_dir
from lungct.data.splits import grouped_kfold, grouped_split, random_split, read_split, write_split
from lungct.data.transforms import PreprocessConfig
from lungct.errors import DataError
from lungct.evaluation.evaluate import evaluate_rows
from lungct.evaluation.operating import fit_operating_point
from lungct.evaluation.plots import plot_history
from lungct.model.network import build_network
from lungct.model.predictor import Predictor
from lungct.model.registry import get_spec
from lungct.model.train import fit, load_images, predict_logits, set_determinism, set_threads
from lungct.runs import RunPaths, environment, load_checkpoint, mark_latest, read_json, write_json

log = logging.getLogger("lungct")

LEAKY_WARNING = (
    "LEAKY SPLIT: --split random assigns images, not scans, to train/test; near-identical "
    "slices of one patient land on both sides and the test numbers are inflated. "
    "Use only to compare with published image-level results."
)


def make_split(cfg: TrainConfig, rows: list) -> list[str]:
    """'train' / 'val' / 'test' per row: the split `lungct train` uses for this config (seeded)."""
    fractions = (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
    split_fn = grouped_split if cfg.split == "grouped" else random_split
    return split_fn(rows, fractions=fractions, seed=cfg.seed)


def _split_rows(cfg: TrainConfig, rows: list, paths: RunPaths, resume: bool) -> list[str]:
    if resume and paths.split.is_file():
        saved = read_split(paths.split)
        return [saved[r.path] for r in rows]
    assignment = make_split(cfg, rows)
    write_split(paths.split, rows, assignment)
    return assignment


def _split_summary(rows: list, assignment: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("train", "val", "test"):
        sel = [r for r, a in zip(rows, assignment, strict=True) if a == name]
        out[name] = {
            "images": len(sel),
            "groups": len({r.group_id for r in sel}),
            **{c: sum(r.label == i for r in sel) for i, c in enumerate(CLASSES)},
        }
    return out


def open_run(cfg: TrainConfig, out_dir: str | Path, progress: bool = True):
    """Start a run folder: seed and threads set, config.yaml, environment.json and the data audit
    written. Returns (paths, data root, audit result). Fails fast on an unknown model or missing data."""
    from lungct.data.audit import run_audit

    get_spec(cfg.model)  # fail fast on an unknown model, before any work
    root = resolve_data_dir(cfg.data)
    paths = RunPaths(Path(out_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    set_determinism(cfg.seed)
    set_threads(cfg.threads)
    save_config(cfg, paths.config)
    write_json(paths.root / "environment.json", environment())
    audit = run_audit(root, class_map=cfg.class_map, out_dir=paths.audit, progress=progress)
    return paths, root, audit


def run_training(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    synthetic: bool = False,
) -> RunPaths:
    """Train, calibrate and evaluate one model; everything lands in ``out_dir`` (a run folder)."""
    from lungct.data.splits import leakage_report

    t_start = time.time()
    paths, root, audit = open_run(cfg, out_dir, progress)
    rows = audit.rows
    assignment = _split_rows(cfg, rows, paths, resume)
    leakage = leakage_report(rows, assignment)
    write_json(paths.root / "leakage.json", leakage)
    extra = {
        "split_mode": cfg.split,
        "synthetic": synthetic,
        "leakage": leakage,
        "data": {
            "n_images": len(rows),
            "skipped_files": len(audit.skipped),
            "classes": {c: sum(r.label == i for r in rows) for i, c in enumerate(CLASSES)},
        },
    }
    train_and_evaluate(
        cfg, root, rows, assignment, paths, extra=extra, resume=resume, progress=progress, synthetic=synthetic
    )
    run = read_json(paths.run_json)
    run["training"]["total_seconds"] = round(time.time() - t_start, 1)
    write_json(paths.run_json, run)
    write_run_report(paths)
    mark_latest(paths.root)
    return paths


def train_and_evaluate(
    cfg: TrainConfig,
    root: Path,
    rows: list,
    assignment: list[str],
    paths: RunPaths,
    *,
    extra: dict | None = None,
    images: np.ndarray | None = None,
    resume: bool = False,
    progress: bool = True,
    synthetic: bool = False,
) -> dict[str, Any]:
    """Fit, fix the operating point on held-out data, evaluate on 'test'; writes run.json. Returns metrics.

    With ``cfg.cross_fit_folds >= 2`` the training groups are 'train' + 'val': k grouped fold models
    give out-of-fold predictions for all of them, which fix temperature, thresholds and the case rule,
    and the shipped model is refit on all training groups. With 0, the model is fitted on 'train' with
    early stopping on 'val' and the operating point is fitted on 'val'.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    cfg, spec, pinfo, pre = _resolve_model(cfg)
    run = run_record(cfg, spec, pinfo, pre, rows, assignment, extra, synthetic)
    write_json(paths.run_json, run)
    y = np.array([r.label for r in rows])
    groups = np.array([r.group_id for r in rows])
    idx = _split_indices(rows, assignment, need_val=cfg.cross_fit_folds == 0)
    t_cache = time.time()
    if images is None:
        images = load_images([root / r.path for r in rows], pre, progress=progress)
    t_fit = time.time()
    if cfg.cross_fit_folds:
        fit_idx = np.concatenate([idx["train"], idx["val"]])
        logits = cross_fit(cfg, images, rows, fit_idx, paths, resume=resume, progress=progress)
        held = (logits, y[fit_idx], groups[fit_idx])
        n_groups = len(set(groups[fit_idx]))
        source = f"out-of-fold predictions of {n_groups} training scan groups ({cfg.cross_fit_folds} folds)"
        net, state = fit_model(cfg, images, y, fit_idx, None, paths, run["run_id"], resume, progress)
    else:
        net, state = fit_model(
            cfg, images, y, idx["train"], idx["val"], paths, run["run_id"], resume, progress
        )
        held = (predict_logits(net, images[idx["val"]]), y[idx["val"]], groups[idx["val"]])
        source = f"validation split ({len(set(groups[idx['val']]))} scan groups)"
    temperature, rule, report = fit_operating_point(
        *held,
        target_sensitivity=cfg.target_sensitivity,
        target_normal_recall=cfg.target_normal_recall,
        case_aggregation=cfg.case_aggregation,
        fitted_on=source,
    )
    run["calibration"] = report
    run["decision_rule"] = rule.to_dict()
    run["training"] = _training_record(state, t_cache, t_fit)
    write_json(paths.run_json, run)
    predictor = Predictor(net, cfg.model, pre, temperature, rule, run)
    return evaluate_test_split(predictor, cfg, root, [rows[i] for i in idx["test"]], paths, progress)


def evaluate_test_split(
    predictor: Predictor, cfg: TrainConfig, root: Path, test_rows: list, paths: RunPaths, progress: bool
) -> dict[str, Any]:
    """Evaluate the shipped predictor on the run's test rows into RUN/eval/test (metrics, CSVs, plots)."""
    return evaluate_rows(
        predictor,
        root,
        test_rows,
        paths.eval_dir("test"),
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        title="test split",
        progress=progress,
    )


def _resolve_model(cfg: TrainConfig):
    """(cfg, spec, pretrained info, preprocessing): nothing is frozen in a randomly initialised net."""
    spec = get_spec(cfg.model)
    pinfo = build_network(cfg.model, cfg.pretrained)[2]
    if pinfo.source == "random" and cfg.freeze_fraction > 0:
        log.info(
            "random initialisation: freeze_fraction %.2f ignored (nothing pretrained to keep)",
            cfg.freeze_fraction,
        )
        cfg = replace(cfg, freeze_fraction=0.0)
    return cfg, spec, pinfo, preprocess_config(cfg, spec.input_size)


SPEC_KEYS = (
    "name",
    "family",
    "input_size",
    "mean",
    "std",
    "cam_layer",
    "licence",
    "imagenet_source",
    "description",
)


def run_record(cfg, spec, pinfo, pre, rows, assignment, extra, synthetic) -> dict[str, Any]:
    """The run.json skeleton: identity, model card facts, preprocessing, warnings, split summary."""
    warnings = _warnings(cfg, pinfo, synthetic)
    for w in warnings:
        log.warning(w)
    return {
        "run_id": f"{cfg.model}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}",
        "created": datetime.now(UTC).isoformat(),
        "lungct_version": __version__,
        "model": cfg.model,
        "classes": list(CLASSES),
        "model_spec": {k: getattr(spec, k) for k in SPEC_KEYS},
        "pretrained": {"requested": pinfo.requested, "source": pinfo.source, "warning": pinfo.warning},
        "preprocess": pre.to_dict(),
        "warnings": warnings,
        **(extra or {}),
        "split": _split_summary(rows, assignment),
    }


def _split_indices(rows: list, assignment: list[str], need_val: bool) -> dict[str, np.ndarray]:
    idx = {s: np.flatnonzero(np.array(assignment) == s) for s in ("train", "val", "test")}
    empty = [s for s, ix in idx.items() if len(ix) == 0 and (s != "val" or need_val)]
    if empty:
        raise DataError(
            f"the {'/'.join(empty)} split is empty: too few scan groups "
            f"({len({r.group_id for r in rows})}) for a train/val/test split"
        )
    return idx


def fit_model(
    cfg: TrainConfig,
    images: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    paths: RunPaths,
    run_id: str,
    resume: bool,
    progress: bool,
):
    """Build and fit one network on ``train_idx`` (early stopping on ``val_idx`` when given); returns
    (network with the best checkpoint loaded, fit state)."""
    net = build_network(cfg.model, cfg.pretrained)[0]
    val = None if val_idx is None else (images[val_idx], y[val_idx])
    paths.best.parent.mkdir(parents=True, exist_ok=True)
    state = fit(
        net,
        cfg,
        (images[train_idx], y[train_idx]),
        val,
        paths.best,
        paths.last,
        paths.history,
        resume=resume,
        progress=progress,
        meta={"model": cfg.model, "run_id": run_id},
    )
    plot_history(state.history, paths.root / "history.png")
    best = load_checkpoint(paths.best)
    net.load_state_dict(best["state_dict"])
    state.best_epoch = int(best["meta"]["epoch"])
    return net, state


def cross_fit(
    cfg: TrainConfig,
    images: np.ndarray,
    rows: list,
    fit_idx: np.ndarray,
    paths: RunPaths,
    *,
    resume: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """Out-of-fold logits float (len(fit_idx), 3): k grouped folds over the training rows ``fit_idx``,
    each predicted by a model fitted on the other folds (same recipe and epochs as the shipped model).
    Finished folds are kept in RUN/crossfit/fold_k/oof.npz (reused by ``resume``) and best.pt."""
    k = cfg.cross_fit_folds
    y = np.array([r.label for r in rows])
    folds = grouped_kfold([rows[i] for i in fit_idx], k=k, seed=cfg.seed)
    out = np.full((len(fit_idx), len(CLASSES)), np.nan, dtype=np.float64)
    for j, (tr, te) in enumerate(folds):
        fold = RunPaths(paths.root / "crossfit" / f"fold_{j + 1}")
        saved = fold.root / "oof.npz"
        if resume and saved.is_file():
            out[te] = np.load(saved)["logits"]
            continue
        log.info("cross-fitting fold %d/%d: %d training, %d held-out slices", j + 1, k, len(tr), len(te))
        set_determinism(cfg.seed + 1000 * (j + 1))
        fold.root.mkdir(parents=True, exist_ok=True)
        net, _ = fit_model(cfg, images, y, fit_idx[tr], None, fold, f"fold {j + 1}", resume, progress)
        out[te] = predict_logits(net, images[fit_idx[te]])
        np.savez(saved, logits=out[te], index=fit_idx[te])
        fold.last.unlink(missing_ok=True)  # best.pt stays: benchmarks/bench_ensemble.py compares the
        # fold ensemble with the shipped refit on the test split (the Predictor never loads it)
    set_determinism(cfg.seed)
    return out


def _training_record(state, t_cache: float, t_fit: float) -> dict[str, Any]:
    return {
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "threads": torch.get_num_threads(),
        "cache_seconds": round(t_fit - t_cache, 1),
        "fit_seconds": round(time.time() - t_fit, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def preprocess_config(cfg: TrainConfig, default_size: int) -> PreprocessConfig:
    """The preprocessing a run uses, from its config and the model spec's input size."""
    return PreprocessConfig(
        size=cfg.image_size or default_size,
        body_crop=cfg.body_crop,
        intensity=cfg.intensity,
        denoise=cfg.denoise,
        window_level=cfg.dicom_window_level,
        window_width=cfg.dicom_window_width,
    )


def _warnings(cfg: TrainConfig, pinfo, synthetic: bool) -> list[str]:
    out = []
    if synthetic:
        out.append(
            "SYNTHETIC DATA: no real dataset was found; this run trained on generated phantoms. "
            "Its numbers say nothing about real CT."
        )
    if pinfo.warning:
        out.append(pinfo.warning)
    if cfg.split == "random":
        out.append(LEAKY_WARNING)
    return out


def write_run_report(paths: RunPaths) -> Path | None:
    """Write report.html for a run folder."""
    from lungct.report.document import write_report

    return write_report(paths.root)
