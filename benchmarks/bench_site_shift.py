"""Does a run's model survive another site's export settings? Its test split, re-exported differently.

No scans from another hospital are available offline, so this benchmark measures the part of the
"other site" question that can be simulated honestly: the same held-out test slices of a run (never
seen by any choice of that run) exported with other settings a hospital's PACS or viewer might use —
a narrower or wider display window, another gamma, a brightness offset, stronger JPEG compression, a
softer reconstruction kernel, more noise (lower dose), a coarser pixel spacing, a smaller or larger
field of view. Every variant goes through the path a user's upload takes (encoded file -> input
guard -> Predictor with the run's shipped decision rule).

Reported per variant: cancer-vs-normal AUC (p(malignant) on malignant vs normal slices), abnormal-vs-
normal AUC, macro AUC, the shipped decision's accuracy, malignant sensitivity / specificity, benign
and normal recall, and the share of slices the input guard flags. With 12 test scan groups, differences
under ~0.05 are within the noise of the split (see the CIs in the run's own metrics.json).
It does not replace a set from another scanner: anatomy, patients and protocols do not change here.

    .venv/bin/python benchmarks/bench_site_shift.py RUN [--data DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from lungct.config import load_config
from lungct.data.manifest import read_manifest
from lungct.data.slices import decode_slice
from lungct.data.splits import read_split
from lungct.evaluation.evaluate import decision_block, decision_columns
from lungct.evaluation.metrics import point_metrics
from lungct.model.decision import MALIGNANT, NORMAL
from lungct.model.predictor import Predictor
from lungct.model.train import set_threads

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "iq-othnccd"

Variant = Callable[[np.ndarray, np.random.Generator], np.ndarray]
"""uint8 (H, W) grey slice -> uint8 (H', W') slice as another site might export it."""


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _resize(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(x).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _fov(x: np.ndarray, scale: float) -> np.ndarray:
    """Field of view: ``scale`` < 1 crops the centre (zoom in), > 1 pads with air (zoom out); same size."""
    h, w = x.shape
    if scale < 1:
        dh, dw = round(h * (1 - scale) / 2), round(w * (1 - scale) / 2)
        return _resize(x[dh : h - dh, dw : w - dw], (h, w))
    ph, pw = round(h * (scale - 1) / 2), round(w * (scale - 1) / 2)
    return _resize(np.pad(x, ((ph, ph), (pw, pw))), (h, w))


VARIANTS: dict[str, Variant] = {
    "as released": lambda x, r: x,
    "narrower window (8-bit 40..215 stretched)": lambda x, r: _u8((x.astype(float) - 40) * 255 / 175),
    "wider window (contrast x0.7, +38)": lambda x, r: _u8(38 + 0.7 * x.astype(float)),
    "gamma 0.7": lambda x, r: _u8(255 * (x / 255.0) ** 0.7),
    "gamma 1.4": lambda x, r: _u8(255 * (x / 255.0) ** 1.4),
    "brighter (+30)": lambda x, r: _u8(x.astype(float) + 30),
    "soft kernel (Gaussian blur 1 px)": lambda x, r: _u8(ndimage.gaussian_filter(x.astype(float), 1.0)),
    "lower dose (Gaussian noise sd 8)": lambda x, r: _u8(x + r.normal(0, 8, x.shape)),
    "coarser pixels (1/2 resolution)": lambda x, r: _resize(
        _resize(x, (x.shape[0] // 2, x.shape[1] // 2)), x.shape
    ),
    "smaller field of view (centre 85 %)": lambda x, r: _fov(x, 0.85),
    "larger field of view (padded 15 %)": lambda x, r: _fov(x, 1.15),
}
"""Export variants; "JPEG quality 50" is applied at encoding (see :func:`encode`)."""


def encode(x: np.ndarray, jpeg_quality: int | None) -> bytes:
    """uint8 (H, W) -> PNG bytes (lossless), or JPEG bytes at ``jpeg_quality``."""
    buf = io.BytesIO()
    if jpeg_quality is None:
        Image.fromarray(x).save(buf, "PNG")
    else:
        Image.fromarray(x).save(buf, "JPEG", quality=jpeg_quality)
    return buf.getvalue()


def measure(pred: Predictor, raw: list[np.ndarray], y: np.ndarray, groups: np.ndarray, name: str) -> dict:
    """Predict every re-exported slice through the upload path; shipped-decision and ranking metrics."""
    rng = np.random.default_rng(0)
    variant, quality = (VARIANTS["as released"], 50) if name == "JPEG quality 50" else (VARIANTS[name], None)
    slices = [
        decode_slice(encode(variant(x, rng), quality), f"slice{i}", pred.pre.window)
        for i, x in enumerate(raw)
    ]
    preds = pred.predict_slices(slices, batch_size=8)
    p = np.stack([q.probs for q in preds])
    flagged = float(np.mean([not q.assessed for q in preds]))
    pm = point_metrics(y, p, pred.rule.malignant_threshold)
    keep = np.isin(y, (MALIGNANT, NORMAL))
    return {
        "cancer_vs_normal_auc": float(roc_auc_score(y[keep] == MALIGNANT, p[keep, MALIGNANT])),
        "abnormal_vs_normal_auc": pm["abnormal_vs_normal"]["auc"],
        "macro_auc": pm["macro_auc"],
        **decision_columns(decision_block(y, p, groups, pred.rule, n_boot=0, seed=0)),
        "guard_flagged": flagged,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", help="the run's data folder (default: its config's, else the shared subset)")
    ap.add_argument("--out", help="JSON file for the table (default RUN/site_shift.json)")
    args = ap.parse_args()
    run_dir = Path(args.run)
    set_threads(2)
    pred = Predictor.from_run(run_dir)
    root = Path(args.data or load_config(run_dir / "config.yaml").data or DEFAULT_DATA)
    if not root.is_dir():
        print(f"data folder {root} not found; pass --data", file=sys.stderr)
        return 2
    split = read_split(run_dir / "split.csv")
    rows = [r for r in read_manifest(run_dir / "audit" / "manifest.csv") if split.get(r.path) == "test"]
    raw = [np.asarray(Image.open(root / r.path).convert("L")) for r in rows]
    y = np.array([r.label for r in rows])
    groups = np.array([r.group_id for r in rows])
    print(f"test split of {run_dir}: {len(y)} slices, {len(set(groups.tolist()))} scan groups", flush=True)
    out = {}
    for name in [*VARIANTS, "JPEG quality 50"]:
        out[name] = measure(pred, raw, y, groups, name)
        print(name, json.dumps({k: round(v, 3) for k, v in out[name].items()}), flush=True)
    cols = list(next(iter(out.values())))
    print("| export variant | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in out.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" if v is not None else "n/a" for v in r.values()) + " |")
    Path(args.out or run_dir / "site_shift.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
