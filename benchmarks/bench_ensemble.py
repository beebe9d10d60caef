"""Ship the refit or the cross-fitting fold ensemble? Both measured on a run's test split.

A run of `lungct train` with cross-fitting keeps its k fold models (RUN/crossfit/fold_j/best.pt). This
script predicts the run's test slices with the shipped refit and with the fold ensemble (mean of the
fold models' temperature-scaled probabilities), applies the run's own decision rule (fitted on the
out-of-fold predictions) to both, and prints the shipped-decision metrics and the inference cost
side by side.

    .venv/bin/python benchmarks/bench_ensemble.py RUN
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lungct.config import load_config
from lungct.data.manifest import read_manifest
from lungct.data.splits import read_split
from lungct.evaluation.evaluate import decision_block, decision_columns
from lungct.evaluation.metrics import point_metrics
from lungct.model.network import build_network
from lungct.model.predictor import Predictor
from lungct.model.train import load_images, predict_logits, set_threads
from lungct.runs import load_checkpoint

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "iq-othnccd"


def probs_of(net: torch.nn.Module, images: np.ndarray, temperature: float) -> tuple[np.ndarray, float]:
    """(calibrated probabilities (N, 3), seconds after a warm-up batch)."""
    predict_logits(net, images[:2])
    t0 = time.perf_counter()
    logits = predict_logits(net, images)
    return torch.softmax(torch.as_tensor(logits) / temperature, 1).numpy(), time.perf_counter() - t0


def row(y: np.ndarray, p: np.ndarray, groups: np.ndarray, rule, seconds: float) -> dict:
    return {
        "ms_per_slice": round(1000 * seconds / len(y), 1),
        "macro_auc": point_metrics(y, p, rule.malignant_threshold)["macro_auc"],
        **decision_columns(decision_block(y, p, groups, rule, n_boot=0, seed=0)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", help="the run's data folder (default: its config's, else the shared subset)")
    args = ap.parse_args()
    run_dir = Path(args.run)
    folds = sorted((run_dir / "crossfit").glob("fold_*/checkpoints/best.pt"))
    if not folds:
        print(f"{run_dir} keeps no fold models (train it with cross-fitting)", file=sys.stderr)
        return 2
    set_threads(2)
    pred = Predictor.from_run(run_dir)
    root = Path(args.data or load_config(run_dir / "config.yaml").data or DEFAULT_DATA)
    split = read_split(run_dir / "split.csv")
    rows = [r for r in read_manifest(run_dir / "audit" / "manifest.csv") if split.get(r.path) == "test"]
    images = load_images([root / r.path for r in rows], pred.pre, progress=False)
    y = np.array([r.label for r in rows])
    groups = np.array([r.group_id for r in rows])
    refit, t_refit = probs_of(pred.net, images, pred.temperature)
    members = []
    t_ens = 0.0
    for ck in folds:
        net = build_network(pred.model_name, pretrained="none")[0]
        net.load_state_dict(load_checkpoint(ck)["state_dict"])
        p, t = probs_of(net, images, pred.temperature)
        members.append(p)
        t_ens += t
    ensemble = np.mean(members, axis=0)
    out = {
        "refit (shipped)": row(y, refit, groups, pred.rule, t_refit),
        f"{len(folds)}-fold ensemble": row(y, ensemble, groups, pred.rule, t_ens),
    }
    cols = list(next(iter(out.values())))
    print(f"test split: {len(y)} slices, {len(set(groups.tolist()))} scan groups; rule {pred.rule.to_dict()}")
    print("| model | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in out.items():
        print(
            f"| {name} | "
            + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values())
            + " |"
        )
    (run_dir / "ensemble_vs_refit.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
