"""Leakage-aware train/val/test splits and group k-fold over audited manifest rows.

The unit of splitting is a *split unit*: a reconstructed scan group (``ManifestRow.group_id``) merged
with every exact duplicate (same bytes or same pixels), so no scan and no copy of a file can sit on
both sides. :func:`random_split` ignores groups; it exists only to show how much an image-level split
leaks (:func:`leakage_report`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lungct import CLASSES
from lungct.data.manifest import ManifestRow
from lungct.errors import ConfigError, DataError
from lungct.fileio import atomic_text_writer

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
N_TRIALS = 200
"""Random unit orders tried by :func:`grouped_split`; the one closest to the target fractions wins."""


def _fractions(fractions: Sequence[float]) -> np.ndarray:
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0, atol=1e-6) or fr[0] <= 0:
        raise ConfigError(
            f"split fractions must be three non-negative numbers (train, val, test) that sum "
            f"to 1 with train > 0, got {tuple(fractions)}"
        )
    return fr


def split_units(rows: list[ManifestRow]) -> np.ndarray:
    """int (N,) unit id per row: connected components of shared group_id, sha256 or pixel_sha256."""
    keys: dict[str, int] = {}
    ii, jj = [], []
    for i, r in enumerate(rows):
        for key in ("g" + r.group_id if r.group_id else f"r{i}", "b" + r.sha256, "p" + r.pixel_sha256):
            ii.append(i)
            jj.append(keys.setdefault(key, len(keys)))
    n = len(rows) + len(keys)
    graph = coo_matrix((np.ones(len(ii)), (ii, np.asarray(jj) + len(rows))), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    return np.unique(comp[: len(rows)], return_inverse=True)[1]


def _assign_once(sizes: np.ndarray, order: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first units (in ``order``) go one to each split with a non-zero target when there are enough
    units; each further unit goes to the split with the largest remaining deficit."""
    counts = np.zeros(3)
    where = np.empty(len(sizes), dtype=int)
    open_splits = np.flatnonzero(target > 0)
    first = order[: len(open_splits)] if len(order) >= len(open_splits) else order[:0]
    for s, u in zip(open_splits, first, strict=False):
        where[u] = s
        counts[s] += sizes[u]
    for u in order[len(first) :]:
        s = int(np.argmax(np.where(target > 0, target - counts, -np.inf)))
        where[u] = s
        counts[s] += sizes[u]
    return where, counts


def grouped_split(
    rows: list[ManifestRow], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> list[str]:
    """One of :data:`SPLIT_NAMES` per row. Split units never straddle; stratified by the unit's majority
    label (each class gets close to ``fractions`` of its images and, when it has enough units, at least
    one unit in every split with a non-zero fraction). Same rows and seed -> same result."""
    fr = _fractions(fractions)
    if not rows:
        return []
    unit = split_units(rows)
    labels = np.array([r.label for r in rows])
    n_units = int(unit.max()) + 1
    sizes = np.bincount(unit, minlength=n_units)
    major = np.array(
        [np.bincount(labels[unit == u], minlength=len(CLASSES)).argmax() for u in range(n_units)]
    )
    rng = np.random.default_rng(seed)
    split_of_unit = np.zeros(n_units, dtype=int)
    for c in range(len(CLASSES)):
        us = np.flatnonzero(major == c)
        if us.size == 0:
            continue
        target = fr * sizes[us].sum()
        best, best_score = None, np.inf
        for _ in range(N_TRIALS):
            where, counts = _assign_once(sizes[us], rng.permutation(us.size), target)
            score = np.abs(counts - target).sum()
            if score < best_score:
                best, best_score = where, score
        split_of_unit[us] = best
    return [SPLIT_NAMES[s] for s in split_of_unit[unit]]


def grouped_kfold(rows: list[ManifestRow], k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, test_idx) int arrays per fold: StratifiedGroupKFold over split units, seeded."""
    from sklearn.model_selection import StratifiedGroupKFold

    unit = split_units(rows)
    if k < 2 or (rows and k > int(unit.max()) + 1):
        raise ConfigError(
            f"k-fold needs 2 <= k <= number of scan groups ({int(unit.max()) + 1 if rows else 0}), got k={k}"
        )
    y = np.array([r.label for r in rows])
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in cv.split(np.zeros((len(rows), 1)), y, groups=unit)]


def random_split(
    rows: list[ManifestRow], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> list[str]:
    """LEAKY image-level split, stratified by label: near-identical slices of one scan (and exact
    duplicates) land on both sides. For comparison with image-level results only."""
    fr = _fractions(fractions)
    labels = np.array([r.label for r in rows])
    out = np.zeros(len(rows), dtype=int)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.rint(np.cumsum(fr)[:2] * idx.size).astype(int)
        for s, part in enumerate(np.split(idx, cuts)):
            out[part] = s
    return [SPLIT_NAMES[s] for s in out]


def leakage_report(rows: list[ManifestRow], assignment: Sequence[str]) -> dict[str, Any]:
    """How much the evaluation splits share scans: test (and val) images whose scan group or exact
    duplicate also appears in train, and groups/duplicate sets that straddle splits."""
    if len(assignment) != len(rows):
        raise DataError(f"split has {len(assignment)} entries for {len(rows)} images")
    a = np.asarray(assignment)
    unit = split_units(rows)
    train_units = set(unit[a == "train"].tolist())
    out: dict[str, Any] = {f"n_{s}": int((a == s).sum()) for s in SPLIT_NAMES}
    for s in ("test", "val"):
        sel = a == s
        leaked = int(sum(u in train_units for u in unit[sel]))
        out[f"{s}_images_with_group_in_train"] = leaked
        out[f"{s}_fraction_with_group_in_train"] = round(leaked / int(sel.sum()), 4) if sel.any() else 0.0
    splits_of: dict[str, set[str]] = {}
    for r, s in zip(rows, a, strict=True):
        splits_of.setdefault(r.group_id, set()).add(str(s))
    straddle = sorted(g for g, ss in splits_of.items() if len(ss) > 1)
    dup_splits: dict[str, set[str]] = {}
    for r, s in zip(rows, a, strict=True):
        dup_splits.setdefault(r.sha256, set()).add(str(s))
    out.update(
        {
            "groups": len(splits_of),
            "groups_straddling_splits": len(straddle),
            "straddling_group_ids": straddle,
            "exact_duplicate_sets_across_splits": sum(len(ss) > 1 for ss in dup_splits.values()),
            "leaky": bool(out["test_images_with_group_in_train"] or out["val_images_with_group_in_train"]),
            "note": "a test image 'has its group in train' when a near-identical slice of the same "
            "reconstructed scan, or an exact copy, is in the training split",
        }
    )
    return out


def write_split(path: Path, rows: list[ManifestRow], assignment: Sequence[str]) -> Path:
    """CSV with columns path, label, class, group_id, split."""
    if len(assignment) != len(rows):
        raise DataError(f"split has {len(assignment)} entries for {len(rows)} images")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_text_writer(path) as f:
        w = csv.writer(f)
        w.writerow(("path", "label", "class", "group_id", "split"))
        for r, s in zip(rows, assignment, strict=True):
            w.writerow((r.path, r.label, r.class_name, r.group_id, s))
    return path


def read_split(path: Path) -> dict[str, str]:
    """{relative path: split name} from a CSV written by :func:`write_split`. DataError when malformed."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"path", "split"} <= set(reader.fieldnames or ()):
                raise DataError(f"{path}: not a split file (needs columns path and split)")
            out = {d["path"]: d["split"] for d in reader}
    except OSError as exc:
        raise DataError(f"cannot read split file {path}: {exc.strerror or exc}") from exc
    bad = sorted({s for s in out.values() if s not in SPLIT_NAMES})
    if bad:
        raise DataError(f"{path}: unknown split name(s) {', '.join(bad)}; expected {', '.join(SPLIT_NAMES)}")
    return out
