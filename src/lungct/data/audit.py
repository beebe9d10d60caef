"""Data audit: manifest, exact duplicates, reconstructed scan groups, label conflicts, confounders.

The IQ-OTH/NCCD release has no patient ids, about ten near-identical consecutive slices per scan and
byte-identical duplicate files, so images are grouped by *content*, using features that stay similar
across the slices of one scan rather than fine texture. Each image is resized to 64x64 (box filter):

* appearance: gradient magnitude (weight 2/3) and intensities (1/3);
* lower-half edges: vertical intensity steps in the lower half (couch, table height, back outline);
* silhouette: the body (:mod:`lungct.data.body`), blurred and reduced to 32x32 (outline and position);

each zero-mean and unit-norm; the similarity of two images is the mean of the three cosines, and only
images of the same size are compared. Links come from the data, with one error level ``ERROR_RATE``
(5 %), taking images of *another* class as the "different patient" reference:

* same-class images are linked when their similarity exceeds the 95th percentile of each image's most
  similar other-class image (clipped to [0.5, 0.95]);
* every image is also linked to those of its ``k`` nearest same-size neighbours that share its class,
  where ``k`` (at most ``K_MAX``) counts the leading neighbour ranks at which no more than 5 % of images
  find an image of another class (single-linkage chaining through consecutive slices);
* images of *different* classes are linked only as near-copies (appearance similarity > 0.9): shared
  couch and body shape make different patients look alike, so weaker evidence would report label
  conflicts that are not;
* linked pairs and exact duplicates (same bytes or same pixels) form groups (connected components).

The rule errs on merging, the safe side for group splits. A group that holds more than one label is a
label conflict: the same scan filed under two classes. File names are never used for grouping; where
they carry numbers ("case (12).jpg") the audit reports, as an independent check, how many same-class
files numbered n and n+1 fall into different groups.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from lungct import CLASSES, __version__
from lungct.data.audit_report import audit_warnings, write_audit
from lungct.data.body import find_body
from lungct.data.discovery import list_dataset
from lungct.data.imaging import decode_bytes
from lungct.data.manifest import AuditResult, ManifestRow
from lungct.errors import DataError, ImageReadError

log = logging.getLogger("lungct")

FEATURE_SIZE = 64
ERROR_RATE = 0.05
"""Accepted share of images linked to a different patient, judged against other-class images."""
K_MAX = 3
"""At most this many nearest neighbours per image are chained; deeper chaining merged visibly
different scans of one class on the IQ-OTH/NCCD release."""
THRESHOLD_BOUNDS = (0.5, 0.95)
DEFAULT_THRESHOLD = 0.9
CONFLICT_MIN = 0.9
"""Images of different classes are linked (a label conflict) only above this appearance similarity."""
MIN_REFERENCE = 20
BLOCK = 1024
META_FEATURES = ("width", "height", "aspect", "bytes", "bytes_per_pixel", "mean", "std")
PARTS = ("appearance", "lower-half edges", "silhouette")
Feats = tuple[np.ndarray, ...]
"""Feature matrices, one (N, D) float32 array per part of :data:`PARTS`."""
_NUMBER = re.compile(r"(\d+)\D*$")


@dataclass(frozen=True)
class LinkRule:
    """Same-size images of one class are linked when their similarity exceeds ``threshold`` or one is
    among the ``k`` nearest neighbours of the other (and at least ``floor`` similar); different classes
    only when appearance > ``conflict``."""

    threshold: float
    k: int
    method: str
    conflict: float = CONFLICT_MIN
    floor: float = -np.inf

    def links(self, combined: np.ndarray, appearance: np.ndarray, cross: np.ndarray) -> np.ndarray:
        """Bool threshold links; ``cross`` marks pairs of different classes."""
        return np.where(cross, appearance > self.conflict, combined > self.threshold)


def _unit(x: np.ndarray, weight: float = 1.0) -> np.ndarray:
    v = x.ravel().astype(np.float32) - float(x.mean())
    n = float(np.linalg.norm(v))
    return v * np.float32(np.sqrt(weight) / n) if n > 1e-8 else np.zeros_like(v)


def similarity_features(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 (H, W) image -> (appearance (2*64*64,), lower-half edges (31*64,), silhouette (32*32,))
    float32 unit vectors (see the module docstring)."""
    small = np.asarray(
        Image.fromarray(img.astype(np.float32)).resize((FEATURE_SIZE, FEATURE_SIZE), Image.Resampling.BOX),
        dtype=np.float32,
    )
    look = np.concatenate([_unit(np.hypot(*np.gradient(small)), 2 / 3), _unit(small, 1 / 3)])
    lower = _unit(np.abs(np.diff(small[FEATURE_SIZE // 2 :], axis=0)))
    body = find_body(small)
    hull = body.hull if body is not None else np.zeros_like(small, dtype=bool)
    fg = ndimage.gaussian_filter(hull.astype(np.float32), 1.0)
    half = FEATURE_SIZE // 2
    return look, lower, _unit(fg.reshape(half, 2, half, 2).mean(axis=(1, 3)))


def _pixel_digest(img: np.ndarray) -> str:
    return hashlib.sha256(f"{img.shape}".encode() + np.ascontiguousarray(img).tobytes()).hexdigest()


def _scan(root: Path, class_map: dict[str, str] | None, progress: bool):
    """Read every listed file once: rows, feature matrices (one (N, D) per part) and skipped files."""
    listing = list_dataset(root, class_map)
    skipped = [(p.relative_to(root).as_posix(), why) for p, why in listing.skipped]
    rows, parts = [], ([], [], [])
    for s in tqdm(listing.samples, desc="audit", unit="img", disable=not progress):
        rel = s.path.relative_to(root).as_posix()
        try:
            data = s.path.read_bytes()
            img, info = decode_bytes(data, name=rel)
        except OSError as exc:
            skipped.append((rel, f"cannot read file ({exc.strerror or exc})"))
            continue
        except ImageReadError as exc:
            skipped.append((rel, str(exc)))
            continue
        digests = (hashlib.sha256(data).hexdigest(), _pixel_digest(img))
        w, h, stats = info.width, info.height, (float(img.mean()), float(img.std()))
        rows.append(ManifestRow(rel, s.label, s.class_name, *digests, w, h, info.mode, len(data), *stats))
        for store, f in zip(parts, similarity_features(img), strict=True):
            store.append(f)
    for rel, why in skipped:
        log.warning("skipped %s: %s", rel, why)
    feats = tuple(np.stack(f) if rows else np.zeros((0, 1), np.float32) for f in parts)
    return rows, feats, skipped


def _duplicate_sets(rows: list[ManifestRow], key: str) -> list[list[int]]:
    by: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by[getattr(r, key)].append(i)
    return [ix for ix in by.values() if len(ix) > 1]


def _mark_duplicates(rows: list[ManifestRow]) -> None:
    first: dict[str, str] = {}
    for r in rows:
        r.duplicate_of = first.get("b" + r.sha256) or first.get("p" + r.pixel_sha256)
        first.setdefault("b" + r.sha256, r.path)
        first.setdefault("p" + r.pixel_sha256, r.path)


def _codes(values: list[str]) -> np.ndarray:
    return np.unique(np.array(values), return_inverse=True)[1]


@dataclass(frozen=True)
class Linkable:
    """What grouping needs to know of N images: ``feats`` (one (N, D) unit-vector matrix per part of
    :data:`PARTS`), ``labels`` int (N,) (all equal when unlabelled), ``shapes`` (height, width) per
    image, and ``copies``: int (N,) code arrays, images sharing a code in any of them are exact copies."""

    feats: Feats
    labels: np.ndarray
    shapes: list[tuple[int, int]]
    copies: tuple[np.ndarray, ...]

    @classmethod
    def of_rows(cls, rows: list[ManifestRow], feats: Feats) -> Linkable:
        """Manifest rows: exact copies by file bytes or by decoded pixels."""
        return cls(
            feats,
            np.array([r.label for r in rows]),
            [(r.height, r.width) for r in rows],
            (_codes([r.sha256 for r in rows]), _codes([r.pixel_sha256 for r in rows])),
        )

    @classmethod
    def of_images(cls, images: list[np.ndarray]) -> Linkable:
        """Unlabelled decoded float (H, W) images (e.g. the slices of one upload)."""
        feats = tuple(np.stack(f) for f in zip(*(similarity_features(im) for im in images), strict=True))
        return cls(
            feats,
            np.zeros(len(images), dtype=np.int64),
            [im.shape for im in images],
            (_codes([_pixel_digest(im) for im in images]),),
        )


def _blocks(inp: Linkable):
    """Yield (row indices, column indices, combined and appearance similarity blocks, exact-copy mask)
    for every same-size bucket; the exact-copy mask includes each image itself."""
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, shape in enumerate(inp.shapes):
        buckets[tuple(shape)].append(i)
    for idx in buckets.values():
        cols = np.array(idx)
        for start in range(0, len(cols), BLOCK):
            b = cols[start : start + BLOCK]
            sims = [f[b] @ f[cols].T for f in inp.feats]
            exact = np.zeros((len(b), len(cols)), bool)
            for code in inp.copies:
                exact |= code[b][:, None] == code[cols][None, :]
            yield b, cols, sum(sims) / len(sims), sims[0], exact


def nearest_neighbours(inp: Linkable) -> dict[str, np.ndarray]:
    """Per image, the highest combined similarity to an image of another class ("cross") and of its own
    class ("same"), its ``K_MAX`` nearest same-size images ("neighbours", -1 where none), their
    similarities ("neighbour_sim") and whether each is of another class ("neighbour_other"). Exact
    copies and the image itself are excluded."""
    labels, n = inp.labels, len(inp.labels)
    out = {k: np.full(n, -np.inf) for k in ("cross", "same")}
    out["neighbours"] = np.full((n, K_MAX), -1)
    out["neighbour_sim"] = np.full((n, K_MAX), -np.inf)
    for b, cols, combined, _, exact in _blocks(inp):
        s = np.where(exact, -np.inf, combined)
        other = labels[b][:, None] != labels[cols][None, :]
        out["cross"][b] = np.where(other, s, -np.inf).max(axis=1)
        out["same"][b] = np.where(other, -np.inf, s).max(axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :K_MAX]
        sim = np.take_along_axis(s, top, axis=1)
        found = np.isfinite(sim)
        out["neighbours"][b, : top.shape[1]] = np.where(found, cols[top], -1)
        out["neighbour_sim"][b, : top.shape[1]] = sim
    nb = out["neighbours"]
    out["neighbour_other"] = (nb >= 0) & (labels[np.maximum(nb, 0)] != labels[:, None])
    return out


def link_components(inp: Linkable, rule: LinkRule, nn: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """Group index int (N,) per image (connected components of rule links and exact copies, numbered by
    first appearance) and the fraction of images the rule links directly to an image of another class."""
    labels, n = inp.labels, len(inp.labels)
    ii, jj, crossed = [], [], 0
    for b, cols, combined, look, exact in _blocks(inp):
        cross = labels[b][:, None] != labels[cols][None, :]
        link = rule.links(combined, look, cross)
        crossed += int((link & ~exact & cross).any(axis=1).sum())
        r, c = np.nonzero(link | exact)
        ii.append(b[r])
        jj.append(cols[c])
    nb = nn["neighbours"][:, : rule.k]
    near = (nb >= 0) & ~nn["neighbour_other"][:, : rule.k] & (nn["neighbour_sim"][:, : rule.k] >= rule.floor)
    ii.append(np.nonzero(near)[0])
    jj.append(nb[near])
    i, j = np.concatenate(ii), np.concatenate(jj)
    _, comp = connected_components(coo_matrix((np.ones(i.size), (i, j)), shape=(n, n)), directed=False)
    order = {c: k for k, c in enumerate(dict.fromkeys(comp.tolist()))}  # number by first appearance
    return np.array([order[c] for c in comp.tolist()], dtype=np.int64), crossed / max(n, 1)


def _nearest(rows: list[ManifestRow], feats: Feats) -> dict[str, np.ndarray]:
    """:func:`nearest_neighbours` of manifest rows."""
    return nearest_neighbours(Linkable.of_rows(rows, feats))


def rank_cross_rates(nn: dict[str, np.ndarray]) -> list[float]:
    """Per neighbour rank (1st, 2nd, ...): the share of images whose neighbour of that rank is of another
    class, among images with a same-size image of another class (NaN where there is none)."""
    ref = np.isfinite(nn["cross"])
    out = []
    for r in range(nn["neighbours"].shape[1]):
        sel = ref & (nn["neighbours"][:, r] >= 0)
        out.append(float(nn["neighbour_other"][sel, r].mean()) if sel.any() else float("nan"))
    return out


def choose_rule(nn: dict[str, np.ndarray], error: float = ERROR_RATE) -> LinkRule:
    """Threshold and neighbour count from other-class similarities (the different-patient reference):
    the threshold is the (1 - error) quantile of each image's most similar other-class image; ``k``
    counts the leading neighbour ranks whose other-class share is at most ``error``."""
    ref = nn["cross"][np.isfinite(nn["cross"])]
    if ref.size < MIN_REFERENCE:
        return LinkRule(
            DEFAULT_THRESHOLD,
            0,
            f"similarity > default {DEFAULT_THRESHOLD} (only {ref.size} images have a same-size image of "
            f"another class; {MIN_REFERENCE} needed); different classes when appearance > {CONFLICT_MIN}",
        )
    q = 100 * (1 - error)
    raw = float(np.percentile(ref, q))
    threshold = float(np.clip(raw, *THRESHOLD_BOUNDS))
    rates = rank_cross_rates(nn)
    k = 0
    while k < len(rates) and rates[k] <= error:
        k += 1
    how = (
        f"same class: similarity > {threshold:.3f} (the {q:g}th percentile of each image's most similar "
        f"other-class image, n={ref.size}: {raw:.3f}"
        + (f", clipped to {list(THRESHOLD_BOUNDS)}" if threshold != raw else "")
        + f") or among the {k} nearest same-size neighbours (ranks where at most {error:.0%} of images "
        f"find another class; at most {K_MAX}); different classes: appearance > {CONFLICT_MIN} (near-copies)"
    )
    return LinkRule(threshold, k, how)


def _group(rows: list[ManifestRow], feats: Feats, rule: LinkRule, nn: dict[str, np.ndarray]) -> float:
    """Set ``group_id`` on every row (see :func:`link_components`). Returns the fraction of images the
    rule links directly to an image of another class."""
    comp, crossed = link_components(Linkable.of_rows(rows, feats), rule, nn)
    width = max(4, len(str(int(comp.max()) + 1)))
    for r, c in zip(rows, comp.tolist(), strict=True):
        r.group_id = f"g{c + 1:0{width}d}"
    return crossed


def file_number_check(rows: list[ManifestRow]) -> dict[str, Any]:
    """Independent check of the groups from file numbers ('case (12).jpg'), never used for grouping.

    Same-class files numbered n and n+1 in one folder are usually consecutive slices of one scan: a pair
    in different groups is a scan boundary or under-merging. A group is contiguous when, per folder, its
    numbered files form one run in file-number order; several runs mean one patient's separate series
    or over-merging."""
    seq: dict[tuple[int, str], list[tuple[int, str]]] = defaultdict(list)
    for r in rows:
        p = PurePosixPath(r.path)
        m = _NUMBER.search(p.stem)
        if m:
            seq[(r.label, str(p.parent))].append((int(m.group(1)), r.group_id))
    pairs = split = 0
    runs: Counter[str] = Counter()
    folders: dict[str, set[tuple[int, str]]] = defaultdict(set)
    for key, items in seq.items():
        items.sort()
        for k, (num, gid) in enumerate(items):
            folders[gid].add(key)
            prev = items[k - 1] if k else None
            runs[gid] += prev is None or prev[1] != gid
            if prev is not None and prev[0] == num - 1:
                pairs += 1
                split += prev[1] != gid
    contiguous = sum(runs[g] == len(f) for g, f in folders.items())
    return {
        "numbered_images": sum(len(v) for v in seq.values()),
        "adjacent_pairs": pairs,
        "adjacent_pairs_split": split,
        "adjacent_split_fraction": round(split / pairs, 4) if pairs else None,
        "groups_checked": len(folders),
        "contiguous_groups": contiguous,
        "contiguous_fraction": round(contiguous / len(folders), 4) if folders else None,
        "note": "file numbers are used for this check only, never for grouping",
    }


def _dup_report(rows: list[ManifestRow], sets: list[list[int]]) -> dict[str, Any]:
    out = [
        {
            "paths": [rows[i].path for i in s],
            "classes": sorted({rows[i].class_name for i in s}),
            "cross_class": len({rows[i].label for i in s}) > 1,
        }
        for s in sets
    ]
    return {
        "n_sets": len(sets),
        "n_pairs": sum(len(s) * (len(s) - 1) // 2 for s in sets),
        "n_redundant_files": sum(len(s) - 1 for s in sets),
        "n_cross_class_sets": sum(d["cross_class"] for d in out),
        "sets": out,
    }


def _pct(x: np.ndarray, qs: tuple[float, ...]) -> dict[str, float]:
    x = x[np.isfinite(x)]
    return {f"p{q:g}": round(float(np.percentile(x, q)), 4) for q in qs} if x.size else {}


def _group_report(
    rows: list[ManifestRow], content: np.ndarray, rule: LinkRule, nn: dict[str, np.ndarray], cross_rate: float
) -> dict[str, Any]:
    members: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        members[r.group_id].append(i)
    sizes = np.array([len(m) for m in members.values()])
    n = len(rows)
    bins = (("1", 1, 1), ("2-5", 2, 5), ("6-10", 6, 10), ("11-20", 11, 20), ("21-50", 21, 50), (">50", 51, n))
    return {
        "n_groups": len(members),
        "per_class": {c: len({r.group_id for r in rows if r.class_name == c}) for c in CLASSES},
        "threshold": round(rule.threshold, 4),
        "k_neighbours": rule.k,
        "conflict_appearance_threshold": rule.conflict,
        "threshold_method": rule.method,
        "feature": f"mean cosine of {', '.join(PARTS)} of the {FEATURE_SIZE}x{FEATURE_SIZE} box-resized "
        "image (each zero-mean, unit-norm); same size only",
        "images_linked_across_classes": round(cross_rate, 4),
        "size_distribution": {name: int(((sizes >= lo) & (sizes <= hi)).sum()) for name, lo, hi in bins},
        "n_singletons": int((sizes == 1).sum()),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "mean_images_per_group": round(float(sizes.mean()), 2),
        "images_with_near_duplicate": int((nn["same"] > rule.threshold).sum()),
        "cross_class_nn_percentiles": _pct(nn["cross"], (50, 90, 95, 99, 100)),
        "same_class_nn_percentiles": _pct(nn["same"], (10, 25, 50, 75)),
        "rank_cross_rates": [None if np.isnan(x) else round(x, 4) for x in rank_cross_rates(nn)],
        "file_number_check": file_number_check(rows),
        "label_conflicts": _conflicts(rows, members, content),
    }


def _conflicts(rows: list[ManifestRow], members: dict[str, list[int]], content: np.ndarray) -> list[dict]:
    out = []
    for gid, m in members.items():
        if len({rows[i].label for i in m}) < 2:
            continue
        lab = np.array([rows[i].label for i in m])
        size = np.array([(rows[i].width, rows[i].height) for i in m])
        same_size = (size[:, None, :] == size[None, :, :]).all(axis=2)
        cross = (content[m] @ content[m].T)[(lab[:, None] != lab[None, :]) & same_size]
        out.append(
            {
                "group_id": gid,
                "n_images": len(m),
                "classes": dict(Counter(rows[i].class_name for i in m)),
                "max_cross_label_similarity": round(float(cross.max()), 4) if cross.size else None,
                "paths": [rows[i].path for i in m],
            }
        )
    return out


def _stats(x: list[float], nd: int = 4) -> dict[str, float]:
    a = np.asarray(x, dtype=float)
    return {
        k: round(float(f(a)), nd)
        for k, f in (("min", np.min), ("median", np.median), ("mean", np.mean), ("max", np.max))
    }


def _class_report(rows: list[ManifestRow]) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    per: dict[str, Any] = {}
    for c in CLASSES:
        sel = [r for r in rows if r.class_name == c]
        if not sel:
            per[c] = {"n": 0}
            continue
        per[c] = {
            "n": len(sel),
            "share": round(len(sel) / len(rows), 4),
            "sizes": dict(Counter(f"{r.width}x{r.height}" for r in sel).most_common()),
            "non_square": sum(r.width != r.height for r in sel),
            "aspect": _stats([r.width / r.height for r in sel], 3),
            "bytes": _stats([r.bytes for r in sel], 0),
            "mean": _stats([r.mean for r in sel]),
            "std": _stats([r.std for r in sel]),
            "modes": dict(Counter(r.mode for r in sel)),
        }
    sizes = Counter(f"{r.width}x{r.height}" for r in rows)
    table = {
        s: {c: sum(1 for r in rows if f"{r.width}x{r.height}" == s and r.class_name == c) for c in CLASSES}
        for s, _ in sizes.most_common()
    }
    return per, table


def metadata_baseline(rows: list[ManifestRow], seed: int = 0, n_splits: int = 5) -> dict[str, Any]:
    """How well width, height, aspect, file bytes and intensity statistics alone predict the class,
    under StratifiedGroupKFold (groups = scan groups) with a random forest."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, recall_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    y = np.array([r.label for r in rows])
    groups = np.array([r.group_id for r in rows])
    present = sorted(set(y.tolist()))
    k = min([n_splits] + [len(set(groups[y == c])) for c in present])
    if len(present) < 2 or k < 2:
        return {"skipped": "needs at least two classes with at least two scan groups each"}
    w, h, b = (np.array([getattr(r, k) for r in rows], dtype=float) for k in ("width", "height", "bytes"))
    x = np.column_stack([w, h, w / h, b, b / (w * h), [r.mean for r in rows], [r.std for r in rows]])
    clf = RandomForestClassifier(
        n_estimators=60, min_samples_leaf=2, class_weight="balanced", random_state=seed, n_jobs=1
    )
    pred = cross_val_predict(
        clf, x, y, groups=groups, cv=StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    )
    rec = recall_score(y, pred, labels=present, average=None, zero_division=0)
    imp = clf.fit(x, y).feature_importances_
    return {
        "model": f"RandomForest(60 trees, balanced) on {', '.join(META_FEATURES)}",
        "cv": f"StratifiedGroupKFold(n_splits={k}) over scan groups",
        "n_splits": k,
        "accuracy": round(float(accuracy_score(y, pred)), 4),
        "balanced_accuracy": round(float(balanced_accuracy_score(y, pred)), 4),
        "recall": {CLASSES[c]: round(float(v), 4) for c, v in zip(present, rec, strict=True)},
        "majority_class_accuracy": round(float(np.bincount(y).max() / len(y)), 4),
        "chance_balanced_accuracy": round(1 / len(present), 4),
        "confusion_matrix": confusion_matrix(y, pred, labels=present).tolist(),
        "labels": [CLASSES[c] for c in present],
        "feature_importance": {f: round(float(v), 4) for f, v in zip(META_FEATURES, imp, strict=True)},
    }


def run_audit(
    root: Path, class_map: dict[str, str] | None = None, out_dir: Path | None = None, progress: bool = True
) -> AuditResult:
    """Audit the dataset under ``root``; write manifest.csv, audit.json, audit.md (+ PNGs) to ``out_dir``."""

    t0 = time.time()
    root = Path(root)
    rows, feats, skipped = _scan(root, class_map, progress)
    if not rows:
        raise DataError(f"none of the image files under {root} could be read ({len(skipped)} skipped)")
    _mark_duplicates(rows)
    with threadpool_limits(limits=1, user_api="blas"):  # small products; threads only contend on 2 cores
        nn = _nearest(rows, feats)
        rule = choose_rule(nn)
        cross_rate = _group(rows, feats, rule, nn)
    per_class, size_table = _class_report(rows)
    pixel_sets = [s for s in _duplicate_sets(rows, "pixel_sha256") if len({rows[i].sha256 for i in s}) > 1]
    summary: dict[str, Any] = {
        "lungct_version": __version__,
        "root": str(root),
        "n_images": len(rows),
        "n_skipped": len(skipped),
        "skipped": [{"path": p, "reason": why} for p, why in skipped],
        "classes": {c: per_class[c]["n"] for c in CLASSES},
        "duplicates": {
            "byte": _dup_report(rows, _duplicate_sets(rows, "sha256")),
            "pixel": _dup_report(rows, pixel_sets),
        },
        "groups": _group_report(rows, feats[0], rule, nn, cross_rate),
        "per_class": per_class,
        "size_by_class": size_table,
        "non_square_by_class": {c: per_class[c].get("non_square", 0) for c in CLASSES},
        "metadata_baseline": metadata_baseline(rows),
    }
    summary["warnings"] = audit_warnings(summary, size_table)
    summary["seconds"] = round(time.time() - t0, 2)
    log.info(
        "audit: %d images, %d groups (threshold %.3f, %d neighbours), %d skipped",
        len(rows),
        summary["groups"]["n_groups"],
        rule.threshold,
        rule.k,
        len(skipped),
    )
    result = AuditResult(root, rows, skipped, summary)
    if out_dir is not None:
        write_audit(result, Path(out_dir), nn)
    return result
