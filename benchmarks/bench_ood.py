"""Flag rates of the workstation's out-of-distribution guard (``lungct.data.ood``).

Usage::

    python benchmarks/bench_ood.py                     # 100 images per generated/bundled set
    python benchmarks/bench_ood.py --n 300 --data /path/to/iq-othnccd

Sets: generated non-CT images (blank, constant grey, uniform/Gaussian noise, colour gradients,
chest-X-ray-like projections, rendered text), non-CT pictures bundled with matplotlib (a colour and a
grey photograph, an MR brain slice, terrain maps, rendered charts), phantoms (synthetic CT-like
slices, 64-512 px, PNG and JPEG), pydicom's CT_small/MR_small test files and, when present, every
image of the real IQ-OTH/NCCD subset. For non-CT sets the flag rate should be high, for CT sets low.
Per statistic, the tightest in-distribution value is printed next to the threshold (the margin).
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from lungct.data import ood, oodsets
from lungct.data.phantoms import make_phantom
from lungct.data.slices import decode_slice as decode_upload

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "iq-othnccd"


def phantom_set(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        size = int(rng.choice([64, 128, 256, 512]))
        img, _ = make_phantom(("normal", "benign", "malignant")[k % 3], size, rng)
        out.append(oodsets.encode(img, "PNG" if k % 2 else "JPEG"))
    return out


def dicom_sets() -> dict[str, list[bytes]]:
    try:
        import pydicom
        from pydicom.data import get_testdata_file
    except ImportError:
        return {}
    sets: dict[str, list[bytes]] = {}
    ct, mr = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
    if ct:
        sets["dicom_ct_small"] = [Path(ct).read_bytes()]
        ds = pydicom.dcmread(ct)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        buf = io.BytesIO()
        ds.save_as(buf)
        sets["dicom_ct_localizer"] = [buf.getvalue()]
    if mr:
        sets["dicom_mr_small"] = [Path(mr).read_bytes()]
    return sets


def measure(blobs: list[bytes]) -> tuple[list[ood.OODResult], float]:
    """Guard results and mean seconds per image (decode + guard)."""
    t0 = time.perf_counter()
    results = [decode_upload(b).guard for b in blobs]
    return results, (time.perf_counter() - t0) / max(len(blobs), 1)


def report(name: str, kind: str, results: list[ood.OODResult], sec: float) -> None:
    rate = np.mean([r.flagged for r in results])
    reasons = Counter(r.reason.split(" (")[0] for r in results if r.flagged)
    top = "; ".join(f"{k} x{v}" for k, v in reasons.most_common(3))
    head = f"{name:20s} {kind:7s} n={len(results):4d} flagged={100 * rate:5.1f}%"
    print(f"{head}  {1000 * sec:5.1f} ms/img  {top}")


def margins(results: list[ood.OODResult]) -> None:
    """Tightest in-distribution value per statistic next to its accepted interval."""
    print("\nin-distribution extremes vs thresholds (image statistics):")
    for key, (low, high) in ood.THRESHOLDS.items():
        vals = [r.checks[key] for r in results if key in r.checks]
        if vals:
            print(
                f"  {key:17s} accepted [{low:g}, {high:g}]  observed min {min(vals):.3f}  max {max(vals):.3f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="images per generated/bundled set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("LUNGCT_SHARED_DATA", DEFAULT_DATA)))
    args = ap.parse_args()

    print(f"{'set':20s} {'kind':7s} flag rate (non-CT: should be high; CT: should be low)")
    for name in oodsets.GENERATED:
        report(name, "non-CT", *measure(oodsets.make_set(name, args.n, args.seed)))
    for name in oodsets.REAL:
        report(name, "non-CT", *measure(oodsets.make_set(name, args.n, args.seed)))
    for name, blobs in dicom_sets().items():
        report(name, "CT" if name == "dicom_ct_small" else "non-CT", *measure(blobs))
    in_dist, sec = measure(phantom_set(max(args.n, 300), args.seed))
    report("phantoms", "CT", in_dist, sec)
    files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if files:
        real, sec = measure([p.read_bytes() for p in files])
        report("iq-othnccd (real)", "CT", real, sec)
        in_dist += real
    else:
        print(f"iq-othnccd (real)    CT      skipped: no images under {args.data}")
    margins(in_dist)


if __name__ == "__main__":
    main()
