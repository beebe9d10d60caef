"""The input guard on sources it was NOT tuned on (its thresholds were set on benchmarks/bench_ood.py's
generated sets, matplotlib's portrait / MR brain / terrain samples, phantoms and the development CT).

Held-out sources:
* every DICOM file that pydicom ships as test data: sent as DICOM (header checks) and, with its pixels
  exported to an 8-bit PNG (min-max or the file's own window), through the image-statistics guard;
* matplotlib sample images not used for tuning (a photograph of a product box, a logo, bathymetry);
* documents rendered by matplotlib (text pages, tables, plots) - another renderer than the tuning set's.

Every held-out image is non-CT or CT of another region except where the table says otherwise, so the
flagged share is the guard's recall on that source. Prints one row per source.

    .venv/bin/python benchmarks/bench_ood_heldout.py
"""

from __future__ import annotations

import io
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from lungct.data.slices import decode_slice
from lungct.errors import ImageReadError


def _png(arr: np.ndarray) -> bytes:
    a = np.asarray(arr, dtype=np.float64)
    lo, hi = np.percentile(a, [0.5, 99.5]) if a.size else (0, 1)
    a = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)
    buf = io.BytesIO()
    Image.fromarray(np.round(a * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def pydicom_sources() -> dict[str, list[tuple[str, bytes]]]:
    """{'DICOM <modality>' / 'PNG from DICOM <modality>': [(name, bytes)]} from pydicom's test files."""
    import pydicom
    from pydicom.data import get_testdata_files

    out: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = get_testdata_files("*.dcm")
        for f in files:
            try:
                ds = pydicom.dcmread(f)
                arr = ds.pixel_array
            except Exception:  # no pixel data, unsupported compression: not an image source
                continue
            mod = str(getattr(ds, "Modality", "?") or "?")
            part = str(getattr(ds, "BodyPartExamined", "") or "")
            label = f"{mod}{' ' + part if part else ''}"
            out[f"DICOM file, {label}"].append((Path(f).name, Path(f).read_bytes()))
            frame = np.asarray(arr)
            if frame.ndim >= 3 and frame.shape[-1] in (3, 4):
                frame = frame[..., :3].mean(axis=-1)
            while frame.ndim > 2:
                frame = frame[frame.shape[0] // 2]
            if frame.ndim != 2 or min(frame.shape) < 2:
                continue
            out[f"PNG export, {label}"].append((Path(f).name, _png(frame)))
    return dict(out)


def matplotlib_sources() -> dict[str, list[tuple[str, bytes]]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.cbook as cbook
    import matplotlib.pyplot as plt

    out: dict[str, list[tuple[str, bytes]]] = {"photo / logo (matplotlib samples)": []}
    for name in ("Minduka_Present_Blue_Pack.png", "logo2.png"):
        data = Path(cbook.get_sample_data(name, asfileobj=False)).read_bytes()
        out["photo / logo (matplotlib samples)"].append((name, data))
        grey = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        out["photo / logo (matplotlib samples)"].append((name + " grey", _png(grey)))
    with np.load(cbook.get_sample_data("topobathy.npz", asfileobj=False)) as z:
        topo = z["topo"].astype(np.float32)
    out["bathymetry map (matplotlib sample)"] = [
        ("topobathy", _png(topo)),
        ("topobathy-flip", _png(topo[::-1])),
    ]
    rng = np.random.default_rng(0)
    docs = []
    for k in range(12):
        fig = plt.figure(figsize=(4, 5.5), dpi=80)
        if k % 3 == 0:
            for line in range(24):
                words = " ".join(rng.choice(["dose", "series", "report", "scan", "value", "table"], 6))
                fig.text(0.05, 0.95 - line * 0.038, words, fontsize=8)
        elif k % 3 == 1:
            ax = fig.add_subplot(111)
            ax.table(cellText=rng.integers(0, 999, (12, 4)).astype(str).tolist(), loc="center")
            ax.axis("off")
        else:
            ax = fig.add_subplot(111)
            ax.plot(np.cumsum(rng.normal(size=(100, 3)), axis=0))
            ax.set_title("trend")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", facecolor="white" if k % 2 else "black")
        plt.close(fig)
        docs.append((f"doc{k}", buf.getvalue()))
    out["documents rendered by matplotlib"] = docs
    return out


def main() -> int:
    sources = {**pydicom_sources(), **matplotlib_sources()}
    total, flagged_total = 0, 0
    print("| source | images | flagged by the guard | refused as unreadable | passed |")
    print("|---|---|---|---|---|")
    for name in sorted(sources):
        flagged = unreadable = passed = 0
        passed_names = []
        for fname, data in sources[name]:
            try:
                s = decode_slice(data, fname)
            except ImageReadError:
                unreadable += 1
                continue
            if s.guard.flagged:
                flagged += 1
            else:
                passed += 1
                passed_names.append(fname)
        n = len(sources[name])
        total += n
        flagged_total += flagged + unreadable
        which = f" ({', '.join(passed_names)})" if passed_names else ""
        print(f"| {name} | {n} | {flagged} | {unreadable} | {passed}{which} |")
    print(f"\nall held-out inputs: {flagged_total} of {total} refused ({flagged_total / total:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
