"""Does an evaluation folder overlap the data a run was trained and calibrated on?

Three checks per evaluated image against the run's training and validation images: the same bytes
(SHA-256), the same decoded pixels, and a near-duplicate by the audit's own similarity features
(:func:`lungct.data.audit.similarity_features`, same image size, combined similarity above the
run's audit link threshold). Any match makes the folder *leaky*: it is not external validation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from lungct.config import load_config
from lungct.data.audit import similarity_features
from lungct.data.discovery import resolve_data_dir
from lungct.data.imaging import read_image
from lungct.data.manifest import ManifestRow, read_manifest
from lungct.data.splits import read_split
from lungct.errors import LungctError
from lungct.runs import RunPaths, read_json

log = logging.getLogger("lungct")

SEEN_SPLITS = ("train", "val")


def _features(root: Path, rows: list[ManifestRow]) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[], [], []]
    for r in rows:
        img, _ = read_image(root / r.path)
        for store, f in zip(parts, similarity_features(img), strict=True):
            store.append(f)
    return [np.stack(p) for p in parts]


def _near(
    seen_root: Path, seen: list[ManifestRow], root: Path, rows: list[ManifestRow], threshold: float
) -> np.ndarray:
    """bool (len(rows),): a same-size seen image has combined similarity > threshold."""
    out = np.zeros(len(rows), dtype=bool)
    sizes = {(r.width, r.height) for r in rows} & {(r.width, r.height) for r in seen}
    for size in sizes:
        a = [i for i, r in enumerate(rows) if (r.width, r.height) == size]
        b = [r for r in seen if (r.width, r.height) == size]
        fa, fb = _features(root, [rows[i] for i in a]), _features(seen_root, b)
        sim = sum(x @ y.T for x, y in zip(fa, fb, strict=True)) / len(fa)
        out[a] = sim.max(axis=1) > threshold
    return out


def check_overlap(run_root: Path, root: Path, rows: list[ManifestRow]) -> dict[str, Any]:
    """Overlap of evaluated ``rows`` (relative to ``root``) with the run's train+val images."""
    paths = RunPaths(Path(run_root))
    manifest, split = paths.audit / "manifest.csv", paths.split
    if not manifest.is_file() or not split.is_file():
        return {"checked": False, "note": "the run folder has no manifest/split: overlap not checked"}
    where = read_split(split)
    seen = [r for r in read_manifest(manifest) if where.get(r.path) in SEEN_SPLITS]
    by_bytes = {r.sha256 for r in seen}
    by_pixels = {r.pixel_sha256 for r in seen}
    exact = np.array([r.sha256 in by_bytes for r in rows], dtype=bool)
    pixels = np.array([r.pixel_sha256 in by_pixels for r in rows], dtype=bool)
    out: dict[str, Any] = {
        "checked": True,
        "n_evaluated": len(rows),
        "n_seen": len(seen),
        "exact_bytes": int(exact.sum()),
        "identical_pixels": int(pixels.sum()),
    }
    near = np.zeros(len(rows), dtype=bool)
    try:
        data = load_config(paths.config).data
        if not data:
            raise LungctError("the run's config.yaml names no data folder")
        seen_root = resolve_data_dir(data)
        threshold = float(read_json(paths.audit / "audit.json")["groups"]["threshold"])
        near = _near(seen_root, seen, Path(root), rows, threshold)
        out.update(near_duplicates=int(near.sum()), near_threshold=threshold)
    except (LungctError, OSError, KeyError, TypeError, ValueError) as exc:
        out.update(near_duplicates=None, near_note=f"near-duplicate check not run: {exc}")
        log.warning("overlap: near-duplicate check not run (%s)", exc)
    any_match = exact | pixels | near
    out["images_with_match"] = int(any_match.sum())
    out["fraction_with_match"] = round(float(any_match.mean()), 4) if len(rows) else 0.0
    out["leaky"] = bool(any_match.any())
    return out
