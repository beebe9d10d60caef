"""PACS round trip on loopback: a 60-slice CT study in a local Orthanc, end to end.

    python benchmarks/bench_pacs.py [--run runs/main] [--slices 60] [--size 512] [--repeat 3]

Starts a throw-away Orthanc (DICOMweb plugin) on 127.0.0.1, uploads a synthetic CT study (phantom
slices as CT Image Storage, int16 HU, ``--size`` px), then times ``lungct.pacs.round_trip`` on it:
QIDO (series), WADO (all slices), decode + input guard + order, inference through the Predictor,
Grad-CAM of the top 3 slices, building the SR and the Secondary Captures, STOW of both (with the
post-STOW check that every instance arrived). The first run is reported separately (it includes
the first forward pass and the model's lazy set-up); the target is <= 10 s per study on 2 cores.

Model: ``--run`` if given, else runs/main, runs/latest or the newest finished run under runs/;
without any run, an untrained efficientnet_lite0 at 224 px (the shipped architecture: the same
compute, meaningless outputs) - the script says which.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from lungct.model.predictor import Predictor
from lungct.pacs.client import PacsClient
from lungct.pacs.orthanc import LocalOrthanc
from lungct.pacs.roundtrip import round_trip
from lungct.pacs.synthetic import phantom_ct_study


def load_predictor(run: str | None) -> tuple[Predictor, str]:
    candidates = [Path(run)] if run else [Path("runs/main"), Path("runs/latest")]
    if not run:
        candidates += sorted(Path("runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for c in candidates:
        root = c.parent if c.name == "run.json" else c
        if (root / "run.json").is_file() and (root / "checkpoints" / "best.pt").is_file():
            try:
                return Predictor.from_run(root), f"run {root}"
            except Exception as exc:  # an unfinished run: try the next one
                print(f"skipping {root}: {exc}", file=sys.stderr)
    if run:
        raise SystemExit(f"no finished run at {run}")
    from lungct.data.transforms import PreprocessConfig
    from lungct.model.network import build_network

    net, _, _ = build_network("efficientnet_lite0", pretrained="none")
    return Predictor(net, "efficientnet_lite0", PreprocessConfig(size=224)), "UNTRAINED efficientnet_lite0"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run")
    ap.add_argument("--slices", type=int, default=60)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--top", type=int, default=3)
    args = ap.parse_args()

    predictor, what = load_predictor(args.run)
    print(
        f"model: {predictor.model_name} {predictor.pre.size} px ({what}); "
        f"torch threads {torch.get_num_threads()}"
    )
    study = phantom_ct_study(args.slices, args.size, kind="malignant", seed=0)
    with LocalOrthanc() as pacs:
        client = PacsClient(pacs.dicomweb_url)
        uid = str(study[0].StudyInstanceUID)
        t = time.perf_counter()
        client.store(study, uid)
        print(
            f"uploaded {args.slices} slices of {args.size} px in {time.perf_counter() - t:.2f} s (not timed)"
        )
        runs = []
        for k in range(args.repeat + 1):
            res = round_trip(client, predictor, uid, top_k=args.top)
            ts = res["timing_s"]
            runs.append(ts)
            label = "first (cold)" if k == 0 else f"run {k}"
            print(
                f"{label:13s} total {ts['total']:.2f} s | fetch+decode {ts['fetch']:.2f} | infer "
                f"{ts['infer']:.2f} | Grad-CAM x{args.top} {ts['explain']:.2f} | build SR+SC "
                f"{ts['build']:.2f} | store {ts['store']:.2f} | decision {res['decision']}"
            )
        warm = runs[1:] or runs
        total = statistics.median(r["total"] for r in warm)
        infer = statistics.median(r["infer"] for r in warm)
        model = statistics.median(r["infer"] + r["explain"] for r in warm)
        print(
            f"\nmedian of {len(warm)} warm runs: end to end {total:.2f} s for {args.slices} slices "
            f"({args.slices / total:.1f} slices/s); inference {infer:.2f} s = {100 * infer / total:.0f} % "
            f"(inference + Grad-CAM {model:.2f} s = {100 * model / total:.0f} %); cold first run "
            f"{runs[0]['total']:.2f} s; target <= 10 s: {'met' if total <= 10 else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
