"""Is an upload one scan? Split a study's slices into scans: DICOM series, else the audit's grouping.

DICOM slices are grouped by SeriesInstanceUID (decisive). Other images are grouped by content with
the audit's own linking (:func:`lungct.data.audit.link_components` over
:func:`lungct.data.audit.similarity_features`: appearance, lower-half edges, silhouette; mean cosine;
same image size only; exact copies always together), without labels:

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

from lungct.data.audit import (
    DEFAULT_THRESHOLD,
    K_MAX,
    Linkable,
    LinkRule,
    link_components,
    nearest_neighbours,
)
from lungct.data.slices import Slice

log = logging.getLogger("lungct.serve")

NEIGHBOUR_FLOOR = 0.7
"""A nearest neighbour less similar than this is never chained into the same scan. On the first 117
malignant files of IQ-OTH/NCCD (about 11 scans) the rule finds 17 groups; phantom slices of one
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
    if len(images) <= 1:
        return [0] * len(images)
    inp = Linkable.of_images(list(images))
    rule = LinkRule(threshold, K_MAX, "upload: no labels", floor=NEIGHBOUR_FLOOR)
    comp, _ = link_components(inp, rule, nearest_neighbours(inp))
    return comp.tolist()


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
