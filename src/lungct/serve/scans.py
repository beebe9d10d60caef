"""Is an upload one scan? Split a study's slices into scans: DICOM series, else the audit's grouping.

DICOM slices are grouped by SeriesInstanceUID (decisive). Other images are grouped by content with
the audit's features (:func:`lungct.data.audit.similarity_features`: appearance, lower-half edges,
silhouette; mean cosine; same image size only) and the audit's kind of link rule, without labels:

* two slices are linked when their similarity exceeds the run's audit threshold (``audit.json``
  ``groups.threshold``; :data:`lungct.data.audit.DEFAULT_THRESHOLD` when the run has no audit);
* each slice is also linked to its ``K_MAX`` nearest same-size slices whose similarity is at least
  :data:`NEIGHBOUR_FLOOR` (consecutive slices chain into one scan);

groups are the connected components. Like the audit, the rule errs on merging: it separates scans
that are clearly different, it does not promise to separate every pair of similar patients.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse.csgraph import connected_components

from lungct.data.audit import DEFAULT_THRESHOLD, K_MAX, similarity_features
from lungct.data.slices import Slice

log = logging.getLogger("lungct.serve")

NEIGHBOUR_FLOOR = 0.7
"""A nearest neighbour less similar than this is never chained into the same scan. On the first 117
malignant files of IQ-OTH/NCCD (about 11 scans) the rule found 18 groups; phantom slices of one
patient score >= 0.95 and of different patients <= 0.65."""


@dataclass(frozen=True)
class ScanGroups:
    """Slice indices per scan (in input order) and how the scans were told apart."""

    groups: list[list[int]]
    basis: str  # "single", "series" (DICOM SeriesInstanceUID), "content" or "series+content"


def audit_threshold(run_dir: str | Path | None) -> float:
    """The run's audit link threshold (``audit/audit.json``), else the audit's default."""
    if run_dir is not None:
        path = Path(run_dir) / "audit" / "audit.json"
        try:
            value = json.loads(path.read_text())["groups"]["threshold"]
            if isinstance(value, int | float) and 0 < value < 1:
                return float(value)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return DEFAULT_THRESHOLD


def content_groups(images: Sequence[np.ndarray], threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """Group label per float32 (H, W) image (see the module docstring); labels numbered by first use."""
    n = len(images)
    if n <= 1:
        return [0] * n
    feats = [np.stack(f) for f in zip(*(similarity_features(im) for im in images), strict=True)]
    sims = sum(f @ f.T for f in feats) / len(feats)
    shapes = [im.shape for im in images]
    same = np.array([[a == b for b in shapes] for a in shapes])
    links = (sims > threshold) & same
    near = np.where(same, sims, -np.inf)
    np.fill_diagonal(near, -np.inf)
    order = np.argsort(-near, axis=1, kind="stable")[:, :K_MAX]
    for i in range(n):
        for j in order[i]:
            if near[i, j] >= NEIGHBOUR_FLOOR:
                links[i, j] = True
    _, comp = connected_components(links, directed=False)
    first = {c: k for k, c in enumerate(dict.fromkeys(comp.tolist()))}
    return [first[c] for c in comp.tolist()]


def split_scans(slices: Sequence[Slice], threshold: float = DEFAULT_THRESHOLD) -> ScanGroups:
    """Scans in a study: DICOM slices by series UID, other images by content (see the module docstring)."""
    groups: dict[tuple[str, str | int], list[int]] = {}
    plain = [i for i, s in enumerate(slices) if s.dicom is None]
    for i, s in enumerate(slices):
        if s.dicom is not None:
            groups.setdefault(("series", s.dicom.series_key or ""), []).append(i)
    if plain:
        labels = content_groups([slices[i].image for i in plain], threshold)
        for i, lab in zip(plain, labels, strict=True):
            groups.setdefault(("content", lab), []).append(i)
    out = sorted(groups.values(), key=lambda g: g[0])
    kinds = {k for k, _ in groups}
    basis = "single" if len(out) <= 1 else "+".join(k for k in ("series", "content") if k in kinds)
    return ScanGroups(out, basis)
