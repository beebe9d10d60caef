"""Which recipe and decision rule generalise to unseen patients? A study on grouped folds of the
training groups only — the test split that `lungct train` holds out (same seed) is never loaded.

For every lever (a set of TrainConfig overrides), k grouped folds over the training scan groups: each
fold model is fitted on the other folds and predicts its own held-out groups (plain and with a
horizontal-flip average). Then, per fold j, the operating point (temperature, malignant and benign
thresholds, case aggregation) is fitted on the held-out predictions of the *other* folds and applied
to fold j, exactly as the shipped pipeline does with its out-of-fold predictions. Reported: mean ± sd
over folds of the decision-rule metrics, threshold-free AUCs, ECE and training time; and, per lever,
the Grad-CAM pointing game on phantoms.

Pre-declared selection criterion: highest mean slice balanced accuracy of the shipped decision among
levers whose mean malignant sensitivity is >= 0.95; ties (within 0.01) go to the cheaper lever.

    .venv/bin/python benchmarks/study_levers.py [--data DIR] [--levers baseline,res320,...] [--folds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungct.config import make_config
from lungct.data.audit import run_audit
from lungct.data.splits import grouped_kfold
from lungct.evaluation.evaluate import decision_block, decision_columns
from lungct.evaluation.metrics import ece, point_metrics, softmax
from lungct.evaluation.operating import fit_operating_point
from lungct.explain.checks import run_pointing_game_benchmark
from lungct.model.registry import get_spec
from lungct.model.train import load_images, predict_logits, set_determinism, set_threads
from lungct.pipeline.training import fit_model, make_split, preprocess_config
from lungct.runs import RunPaths

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "iq-othnccd"

LEVERS: dict[str, dict[str, Any]] = {
    "baseline": {"image_size": 224, "balance": "none"},
    "res320": {"image_size": 320, "balance": "none"},
    "res384": {"image_size": 384, "balance": "none", "batch_size": 16},
    "lite1": {"model": "efficientnet_lite1", "image_size": None, "balance": "none"},
    "lite2": {"model": "efficientnet_lite2", "image_size": None, "balance": "none"},
    "weights": {"image_size": 224, "balance": "weights"},
    "sampler": {"image_size": 224, "balance": "sampler"},
    "focal": {"image_size": 224, "balance": "none", "focal_gamma": 2.0},
    "focal_weights": {"image_size": 224, "balance": "weights", "focal_gamma": 2.0},
    "unfrozen": {"image_size": 224, "balance": "weights", "freeze_fraction": 0.0},
    "no_crop": {"image_size": 224, "balance": "weights", "body_crop": False},
    "weights320": {"image_size": 320, "balance": "weights"},
    "weights384": {"image_size": 384, "balance": "weights"},
    "weights512": {"image_size": 512, "balance": "weights"},
}
"""Recipe levers (TrainConfig overrides on the shipped defaults)."""


def training_folds(data: str, k: int):
    """(manifest rows, indices of the training rows (not `lungct train`'s test split, same seed), labels
    (N,), scan groups (N,), k grouped folds over the training rows, fold index per training row)."""
    base = make_config({"data": data})
    rows = run_audit(Path(data), progress=False).rows
    split = make_split(base, rows)
    fit_rows = np.array([i for i, s in enumerate(split) if s != "test"])
    y = np.array([r.label for r in rows])
    groups = np.array([r.group_id for r in rows])
    folds = grouped_kfold([rows[i] for i in fit_rows], k=k, seed=base.seed)
    fold_of = np.zeros(len(fit_rows), dtype=int)
    for j, (_, te) in enumerate(folds):
        fold_of[te] = j
    return rows, fit_rows, y, groups, folds, fold_of


def held_out_logits(cfg, images: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, folds) -> dict[str, Any]:
    """Out-of-fold logits (plain and flip-averaged) for the training rows, one model per fold."""
    n = len(fit_rows)
    plain, flip = np.zeros((n, 3)), np.zeros((n, 3))
    seconds = []
    for j, (tr, te) in enumerate(folds):
        set_determinism(cfg.seed + 1000 * (j + 1))
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            net, _ = fit_model(
                cfg, images, y, fit_rows[tr], None, RunPaths(Path(tmp)), f"fold{j}", False, False
            )
        seconds.append(time.time() - t0)
        x = images[fit_rows[te]]
        plain[te] = predict_logits(net, x)
        flip[te] = (plain[te] + predict_logits(net, np.ascontiguousarray(x[:, :, ::-1]))) / 2
        print(f"  fold {j + 1}: {seconds[-1]:.0f} s", flush=True)
    return {"plain": plain, "flip": flip, "fit_seconds": seconds}


def fold_metrics(
    logits: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    fold_of: np.ndarray,
    cfg,
    target: float | None = None,
    adjust=None,
) -> list[dict]:
    """Per fold: operating point from the other folds' held-out predictions, applied to this fold.
    ``adjust(rule, calibrated probs, labels)`` of the other folds may replace the fitted rule."""
    out = []
    for j in np.unique(fold_of):
        fit, ev = fold_of != j, fold_of == j
        t, rule, _ = fit_operating_point(
            logits[fit],
            y[fit],
            groups[fit],
            target_sensitivity=target or cfg.target_sensitivity,
            target_normal_recall=cfg.target_normal_recall,
            fitted_on="other folds",
        )
        if adjust is not None:
            rule = adjust(rule, softmax(logits[fit], t), y[fit])
        probs = softmax(logits[ev], t)
        d = decision_block(y[ev], probs, groups[ev], rule, n_boot=0, seed=0)
        pm = point_metrics(y[ev], probs)
        out.append(
            {
                **decision_columns(d),
                "abnormal_auc": pm["abnormal_vs_normal"]["auc"],
                "benign_auc": pm["per_class"]["benign"]["auc"],
                "ece": ece(probs, y[ev]),
                "case_rule": rule.case_aggregation,
                "benign_threshold": rule.benign_threshold,
                "malignant_threshold": rule.malignant_threshold,
            }
        )
    return out


def summarise(per_fold: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in per_fold[0]:
        vals = [f[k] for f in per_fold if isinstance(f[k], int | float)]
        if vals:
            out[k] = {
                "mean": float(np.mean(vals)),
                "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            }
        else:
            out[k] = [f[k] for f in per_fold]
    return out


def pointing(cfg) -> dict[str, Any]:
    """Pointing game on phantoms with the lever's model and input size (ImageNet weights when it has them)."""
    spec = get_spec(cfg.model)
    size = cfg.image_size or spec.input_size
    pretrained = "none" if spec.imagenet_source is None else "auto"
    r = run_pointing_game_benchmark(
        size=size, n_train=45, n_val=8, epochs=8, model=cfg.model, pretrained=pretrained, lr=1e-3, n_test=10
    )
    return {
        "hit_rate": r.get("hit_rate"),
        "random": r.get("random_hit_rate"),
        "phantom_accuracy": r["test_accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--levers", default="baseline,res320,weights,lite1,sampler,focal,lite2,res384,unfrozen")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/study")
    ap.add_argument("--no-pointing", action="store_true")
    args = ap.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"data folder {args.data} not found; pass --data", file=sys.stderr)
        return 2
    set_threads(None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, fit_rows, y, groups, folds, fold_of = training_folds(args.data, args.folds)
    print(
        f"{len(fit_rows)} training images, {len(set(groups[fit_rows]))} scan groups, {args.folds} folds; "
        f"{len(rows) - len(fit_rows)} test-split images never loaded",
        flush=True,
    )
    results: dict[str, Any] = {}
    cache: dict[tuple, np.ndarray] = {}
    for name in args.levers.split(","):
        cfg = make_config({**LEVERS[name], "data": args.data})
        pre = preprocess_config(cfg, get_spec(cfg.model).input_size)
        key = (pre.size, pre.body_crop, pre.intensity)
        if key not in cache:
            all_imgs = np.zeros((len(rows), pre.size, pre.size), np.uint8)
            all_imgs[fit_rows] = load_images(
                [Path(args.data) / rows[i].path for i in fit_rows], pre, progress=False
            )
            cache = {key: all_imgs}  # one cache at a time (memory)
        print(f"lever {name}: {LEVERS[name]}", flush=True)
        torch.manual_seed(cfg.seed)
        held = held_out_logits(cfg, cache[key], y, fit_rows, folds)
        res = {"overrides": LEVERS[name], "fit_seconds_per_fold": float(np.mean(held["fit_seconds"]))}
        yy, gg = y[fit_rows], groups[fit_rows]
        res["plain"] = summarise(fold_metrics(held["plain"], yy, gg, fold_of, cfg))
        res["flip_tta"] = summarise(fold_metrics(held["flip"], yy, gg, fold_of, cfg))
        res["plain_sens95"] = summarise(fold_metrics(held["plain"], yy, gg, fold_of, cfg, target=0.95))
        prior = np.log(np.bincount(yy, minlength=3) / len(yy))
        res["logit_adjusted"] = summarise(fold_metrics(held["plain"] - prior, yy, gg, fold_of, cfg))
        if not args.no_pointing:
            res["pointing_game_phantoms"] = pointing(cfg)
        results[name] = res
        np.savez(out / f"{name}_oof.npz", plain=held["plain"], flip=held["flip"], rows=fit_rows)
        (out / "levers.json").write_text(json.dumps(results, indent=2))
        print(json.dumps({k: v for k, v in res.items() if k != "overrides"}, indent=1)[:3000], flush=True)
    print(markdown(results))
    return 0


def markdown(results: dict[str, Any]) -> str:
    cols = (
        "accuracy",
        "balanced_accuracy",
        "benign_recall",
        "normal_recall",
        "malignant_sensitivity",
        "malignant_specificity",
        "abnormal_auc",
        "ece",
        "case_abnormal_flagged",
        "case_normal_cleared",
    )
    lines = [
        "| lever | variant | " + " | ".join(cols) + " | fit s/fold | pointing game |",
        "|" + "---|" * (len(cols) + 4),
    ]
    for name, r in results.items():
        pg = r.get("pointing_game_phantoms") or {}
        for variant in ("plain", "plain_sens95", "flip_tta", "logit_adjusted"):
            s = r[variant]
            cells = [
                f"{s[c]['mean']:.3f} ± {s[c]['sd']:.3f}" if isinstance(s.get(c), dict) else "n/a"
                for c in cols
            ]
            hit = f"{pg.get('hit_rate')} (random {pg.get('random')})" if pg and variant == "plain" else ""
            fit = f"{r['fit_seconds_per_fold']:.0f}" if variant == "plain" else ""
            lines.append(f"| {name} | {variant} | " + " | ".join(cells) + f" | {fit} | {hit} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
