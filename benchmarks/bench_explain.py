"""Latency of one Grad-CAM explanation (preprocess + forward + backward + map back), in ms.

Usage: python benchmarks/bench_explain.py [--run RUN] [--model efficientnet_lite0] [--method gradcam]
       [--threads 2] [--iters 20] [--warmup 3] [--image FILE] [--pointing-game]

Without --run the model is built from the registry (packaged ImageNet weights when available, else
random initialisation; latency does not depend on the weights) at its spec input size. The slice is a
512 x 512 phantom unless --image is given. --pointing-game also trains small_cnn on phantoms and prints
the pointing-game hit rate against random maps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def _predictor(args: argparse.Namespace):
    from lungct.data.transforms import PreprocessConfig
    from lungct.model.network import build_network
    from lungct.model.predictor import Predictor

    if args.run:
        return Predictor.from_run(args.run), "run weights"
    net, spec, info = build_network(args.model, pretrained="auto")
    return Predictor(net, args.model, PreprocessConfig(size=spec.input_size)), info.source


def _image(path: Path | None) -> np.ndarray:
    if path is not None:
        from lungct.data.imaging import read_image

        return read_image(path)[0]
    from lungct.data.phantoms import make_phantom

    img, _ = make_phantom("malignant", 512, 0)
    return img.astype(np.float32) / 255.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--image", type=Path)
    ap.add_argument("--pointing-game", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lungct.explain.cam import explain_image
    from lungct.explain.checks import run_pointing_game_benchmark

    predictor, weights = _predictor(args)
    img = _image(args.image)
    for _ in range(args.warmup):
        explain_image(predictor, img, args.method)
    times, plain = [], []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        e = explain_image(predictor, img, args.method)
        t1 = time.perf_counter()
        predictor.predict_images([img])
        times.append(1000 * (t1 - t0))
        plain.append(1000 * (time.perf_counter() - t1))
    ms = np.array(times)
    print(
        f"{args.method} on {predictor.model_name} ({weights}), input {predictor.pre.size} px, slice "
        f"{img.shape[0]}x{img.shape[1]}, {torch.get_num_threads()} threads, {args.iters} calls: "
        f"median {np.median(ms):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, min {ms.min():.1f} ms "
        f"(explained class {e.target_class}); prediction alone: median {np.median(plain):.1f} ms"
    )
    if args.pointing_game:
        print(json.dumps(run_pointing_game_benchmark()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
