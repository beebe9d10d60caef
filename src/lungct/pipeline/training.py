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
from lungct.data.transforms import PreprocessConfig
from lungct.errors import DataError
from lungct.evaluation.evaluate import evaluate_rows
from lungct.evaluation.metrics import fit_temperature, pick_threshold, softmax
from lungct.evaluation.plots import plot_history
from lungct.model.network import build_network
from lungct.model.predictor import MALIGNANT, Predictor
from lungct.model.registry import get_spec
from lungct.model.train import fit, load_images, predict_logits, set_determinism, set_threads
from lungct.runs import RunPaths, environment, load_checkpoint, read_json, write_json

log = logging.getLogger("lungct")

LEAKY_WARNING = (
    "LEAKY SPLIT: --split random assigns images, not scans, to train/test; near-identical "
    "slices of one patient land on both sides and the test numbers are inflated. "
    "Use only to compare with published image-level results."
)


def _split_rows(cfg: TrainConfig, rows: list, paths: RunPaths, resume: bool) -> list[str]:
    from lungct.data.splits import grouped_split, random_split, read_split, write_split

    if resume and paths.split.is_file():
        saved = read_split(paths.split)
        return [saved[r.path] for r in rows]
    fractions = (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
    split_fn = grouped_split if cfg.split == "grouped" else random_split
    assignment = split_fn(rows, fractions=fractions, seed=cfg.seed)
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


def _calibrate(net, images: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> dict[str, float]:
    """Temperature on validation logits; malignant threshold on calibrated validation scores."""
    from lungct.evaluation.metrics import ece, nll

    logits = predict_logits(net, images)
    t = fit_temperature(logits, y) if len(set(y.tolist())) > 1 else 1.0
    before, after = softmax(logits), softmax(logits, t)
    pos = y == MALIGNANT
    thr = pick_threshold(after[:, MALIGNANT], pos, cfg.target_sensitivity) if pos.any() else 0.5
    return {
        "temperature": float(t),
        "malignant_threshold": float(thr),
        "target_sensitivity": cfg.target_sensitivity,
        "val_nll_before": nll(before, y),
        "val_nll_after": nll(after, y),
        "val_ece_before": ece(before, y),
        "val_ece_after": ece(after, y),
    }


def run_training(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    synthetic: bool = False,
) -> RunPaths:
    """Train, calibrate and evaluate one model; everything lands in ``out_dir`` (a run folder)."""
    from lungct.data.audit import run_audit
    from lungct.data.splits import leakage_report

    get_spec(cfg.model)  # fail fast on an unknown model, before any work
    root = resolve_data_dir(cfg.data)
    paths = RunPaths(Path(out_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    set_determinism(cfg.seed)
    set_threads(cfg.threads)
    t_start = time.time()
    save_config(cfg, paths.config)
    write_json(paths.root / "environment.json", environment())
    audit = run_audit(root, class_map=cfg.class_map, out_dir=paths.audit, progress=progress)
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
    """Fit on the 'train' rows, calibrate on 'val', evaluate on 'test'; writes run.json. Returns metrics."""
    paths.root.mkdir(parents=True, exist_ok=True)
    net, spec, pinfo = build_network(cfg.model, cfg.pretrained)
    pre = preprocess_config(cfg, spec.input_size)
    if pinfo.source == "random" and cfg.freeze_fraction > 0:
        log.info(
            "random initialisation: freeze_fraction %.2f ignored (nothing pretrained to keep)",
            cfg.freeze_fraction,
        )
        cfg = replace(cfg, freeze_fraction=0.0)
    warnings = _warnings(cfg, pinfo, synthetic)
    for w in warnings:
        log.warning(w)
    run: dict[str, Any] = {
        "run_id": f"{cfg.model}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}",
        "created": datetime.now(UTC).isoformat(),
        "lungct_version": __version__,
        "model": cfg.model,
        "classes": list(CLASSES),
        "model_spec": {
            k: getattr(spec, k)
            for k in (
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
        },
        "pretrained": {"requested": pinfo.requested, "source": pinfo.source, "warning": pinfo.warning},
        "preprocess": pre.to_dict(),
        "warnings": warnings,
        **(extra or {}),
        "split": _split_summary(rows, assignment),
    }
    write_json(paths.run_json, run)
    y_all = np.array([r.label for r in rows])
    idx = {s: np.flatnonzero(np.array(assignment) == s) for s in ("train", "val", "test")}
    empty = [s for s, ix in idx.items() if len(ix) == 0]
    if empty:
        raise DataError(
            f"the {'/'.join(empty)} split is empty: too few scan groups "
            f"({len({r.group_id for r in rows})}) for a train/val/test split"
        )
    t_cache = time.time()
    if images is None:
        images = load_images([root / r.path for r in rows], pre, progress=progress)
    t_fit = time.time()
    state = fit(
        net,
        cfg,
        (images[idx["train"]], y_all[idx["train"]]),
        (images[idx["val"]], y_all[idx["val"]]),
        paths.best,
        paths.last,
        paths.history,
        resume=resume,
        progress=progress,
        meta={"model": cfg.model, "run_id": run["run_id"]},
    )
    plot_history(state.history, paths.root / "history.png")
    best = load_checkpoint(paths.best)
    net.load_state_dict(best["state_dict"])
    run["calibration"] = _calibrate(net, images[idx["val"]], y_all[idx["val"]], cfg)
    run["training"] = {
        "epochs_run": state.epoch,
        "best_epoch": int(best["meta"]["epoch"]),
        "threads": torch.get_num_threads(),
        "cache_seconds": round(t_fit - t_cache, 1),
        "fit_seconds": round(time.time() - t_fit, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    write_json(paths.run_json, run)
    predictor = Predictor(
        net, cfg.model, pre, run["calibration"]["temperature"], run["calibration"]["malignant_threshold"], run
    )
    test_rows = [rows[i] for i in idx["test"]]
    return evaluate_rows(
        predictor,
        root,
        test_rows,
        paths.eval_dir("test"),
        case_how=cfg.case_aggregation,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        title="test split",
        progress=progress,
    )


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
