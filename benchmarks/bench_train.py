"""Train the default model on the development subset: honest (grouped) split, then the leaky one.

Prints test metrics, wall time, peak memory and inference speed (batched slices/s, one-slice latency).
Not a test: run it by hand, e.g.

    .venv/bin/python benchmarks/bench_train.py [--data DIR] [--out runs/bench] [--skip-random] [k=v ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lungct.config import make_config
from lungct.model.predictor import Predictor
from lungct.pipeline.training import run_training
from lungct.runs import read_json

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "iq-othnccd"


def inference_speed(run_dir: Path, threads: int = 2) -> dict[str, float]:
    """Throughput (slices/s, the Predictor's default batch) and one-slice latency (ms, p50/p95)."""
    torch.set_num_threads(threads)
    pred = Predictor.from_run(run_dir)
    rng = np.random.default_rng(0)
    imgs = [rng.random((512, 512), dtype=np.float32) for _ in range(64)]  # decoded 512 px slices
    pred.predict_images(imgs[:8])  # warm-up
    t = time.perf_counter()
    pred.predict_images(imgs)
    batched = len(imgs) / (time.perf_counter() - t)
    lat = []
    for im in imgs[:30]:
        t = time.perf_counter()
        pred.predict_images([im])
        lat.append((time.perf_counter() - t) * 1000)
    return {
        "batched_slices_per_s": round(batched, 1),
        "single_ms_p50": round(statistics.median(lat), 1),
        "single_ms_p95": round(float(np.percentile(lat, 95)), 1),
    }


def headline(run_dir: Path) -> dict:
    """The shipped decision on the test split (slices, scans, 512x512 only), then the arg-max view."""
    m = read_json(run_dir / "eval" / "test" / "metrics.json")
    run = read_json(run_dir / "run.json")
    s, c = m["decision"]["slice"], m["decision"]["case"]
    sq = m["subsets"]["512x512 only"]
    return {
        "n_test": m["n"],
        "decision_rule": run["decision_rule"],
        "temperature": run["calibration"]["temperature"],
        "accuracy": s["accuracy"],
        "ci95_accuracy": s["ci95"].get("accuracy"),
        "balanced_accuracy": s["balanced_accuracy"],
        "recall": {k: v["recall"] for k, v in s["per_class"].items()},
        "ci95_benign_recall": s["ci95"].get("per_class.benign.recall"),
        "malignant": s["malignant"],
        "ci95_malignant_specificity": s["ci95"].get("malignant.specificity"),
        "abnormal": s["abnormal"],
        "case": {
            "n": c["n"],
            "accuracy": c["accuracy"],
            "abnormal": c["abnormal"],
            "cm": c["confusion_matrix"],
        },
        "square_512": {
            "n": sq["n"],
            "accuracy": sq["decision"]["slice"]["accuracy"],
            "malignant": sq["decision"]["slice"]["malignant"],
            "malignant_auc": sq["malignant_auc"],
        },
        "argmax_accuracy": m["accuracy"],
        "macro_auc": m["macro_auc"],
        "malignant_auc": m["malignant_vs_rest"]["auc"],
        "abnormal_auc": m["abnormal_vs_normal"]["auc"],
        "benign_auc": m["per_class"]["benign"]["auc"],
        "ece_after": m["calibration"]["ece"],
        "ece_before": m["calibration"].get("before", {}).get("ece"),
        "train_fit_seconds": run["training"]["fit_seconds"],
        "total_seconds": run["training"].get("total_seconds"),
        "pretrained": run["pretrained"]["source"],
        "leakage": run.get("leakage"),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--skip-random", action="store_true")
    ap.add_argument("--measure", nargs="*", default=None, help="only measure these finished run folders")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        print(f"data folder {args.data} not found; pass --data", file=sys.stderr)
        return 2
    if args.measure is not None:
        for run in args.measure:
            print(f"== {run} ==")
            print(json.dumps({**headline(Path(run)), **inference_speed(Path(run))}, indent=2, default=str))
        return 0
    extra = dict(kv.split("=", 1) for kv in args.overrides)
    results = {}
    for split in ("grouped",) if args.skip_random else ("grouped", "random"):
        cfg = make_config({"data": args.data, "split": split, "threads": 2, **extra})
        out = Path(args.out) / split
        t = time.time()
        run_training(cfg, out, progress=False)
        res = headline(out)
        res["wall_seconds"] = round(time.time() - t, 1)
        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        res.update(inference_speed(out))
        results[split] = res
        print(f"== {split} split ({cfg.model}) ==")
        print(json.dumps(res, indent=2, default=str))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_train.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
