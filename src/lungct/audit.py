"""Data audit: manifest, exact duplicates, reconstructed scan groups, label conflicts, confounders.

The IQ-OTH/NCCD release has no patient ids, about ten near-identical consecutive slices per scan and
byte-identical duplicate files, so images are grouped by *content*:

* features: the image resized to 64x64 (box filter), its gradient magnitude (weight 2/3) and its
  intensities (weight 1/3), each made zero-mean and unit-norm; similarity is the cosine (dot product);
* only images of the same size are compared;
* a second, coarse feature is the body silhouette (foreground mask with holes filled, couch included),
  which stays similar across slices of one scan when the anatomy inside changes;
* thresholds come from the data: for every image, its most similar image of *another* class is taken
  as a "different patient" reference. Two images are linked when their content similarity exceeds the
  99th percentile of that reference (clipped to [0.5, 0.95]: above 0.95 is a near-copy, always linked),
  or when content exceeds the 95th and silhouette similarity the 95th percentile of theirs;
* images of *different* classes are linked only as near-copies (content > max(threshold, 0.9)): a
  percentile rule lets about 1 % of images through by construction, and shared couch and body shape
  make different patients look alike, so weaker evidence would report label conflicts that are not;
* linked pairs and exact duplicates (same bytes or same pixels) form groups (connected components).

A group that holds more than one label is a label conflict: the same scan filed under two classes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from lungct import CLASSES, __version__
from lungct.data import list_dataset
from lungct.errors import DataError, ImageReadError
from lungct.imaging import decode_bytes

log = logging.getLogger("lungct")

FEATURE_SIZE = 64
PERCENTILE = 99.0
JOINT_PERCENTILE = 95.0
THRESHOLD_BOUNDS = (0.5, 0.95)
DEFAULT_THRESHOLD = 0.9
CONFLICT_MIN = 0.9
"""Images of different classes are linked (a label conflict) only above this content similarity."""
MIN_REFERENCE = 20
BLOCK = 1024
META_FEATURES = ("width", "height", "aspect", "bytes", "bytes_per_pixel", "mean", "std")


@dataclass
class ManifestRow:
    """One readable image. ``path`` is relative to the dataset root (posix); mean/std in [0, 1] units."""

    path: str
    label: int
    class_name: str
    sha256: str
    pixel_sha256: str
    width: int
    height: int
    mode: str
    bytes: int
    mean: float
    std: float
    group_id: str = ""
    duplicate_of: str | None = None


CSV_HEADER = tuple("class" if f.name == "class_name" else f.name for f in fields(ManifestRow))
"""manifest.csv columns: the :class:`ManifestRow` fields, with ``class_name`` written as ``class``."""


@dataclass
class AuditResult:
    """Everything the audit found; ``summary`` is what audit.json holds."""

    root: Path
    rows: list[ManifestRow]
    skipped: list[tuple[str, str]]
    summary: dict[str, Any]


@dataclass(frozen=True)
class LinkRule:
    """Same-size images are linked when content > strict, or content > loose and silhouette > body."""

    strict: float
    loose: float
    body: float
    method: str

    @property
    def conflict(self) -> float:
        return max(self.strict, CONFLICT_MIN)

    def links(self, content: np.ndarray, body: np.ndarray, cross: np.ndarray) -> np.ndarray:
        """Bool links; ``cross`` marks pairs of different classes, which need content > ``conflict``."""
        same = (content > self.strict) | ((content > self.loose) & (body > self.body))
        return np.where(cross, content > self.conflict, same)


def _unit(x: np.ndarray, weight: float = 1.0) -> np.ndarray:
    v = x.ravel().astype(np.float32) - float(x.mean())
    n = float(np.linalg.norm(v))
    return v * np.float32(np.sqrt(weight) / n) if n > 1e-8 else np.zeros_like(v)


def _features(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 (H, W) image -> (content (2*64*64,), silhouette (64*64,)) float32 unit vectors.

    Content: gradient magnitude (weight 2/3) and intensities (1/3) of the 64x64 box-resized image.
    Silhouette: pixels above 8 % of the 1-99th percentile range, closed and hole-filled."""
    small = np.asarray(
        Image.fromarray(img.astype(np.float32)).resize((FEATURE_SIZE, FEATURE_SIZE), Image.Resampling.BOX),
        dtype=np.float32,
    )
    content = np.concatenate([_unit(np.hypot(*np.gradient(small)), 2 / 3), _unit(small, 1 / 3)])
    lo, hi = np.percentile(small, [1, 99])
    body = ndimage.binary_fill_holes(ndimage.binary_closing(small > lo + 0.08 * (hi - lo)))
    return content, _unit(body.astype(np.float32))


def _pixel_digest(img: np.ndarray) -> str:
    return hashlib.sha256(f"{img.shape}".encode() + np.ascontiguousarray(img).tobytes()).hexdigest()


def _scan(root: Path, class_map: dict[str, str] | None, progress: bool):
    """Read every listed file once: rows, feature matrix (N, D) and skipped (path, reason)."""
    listing = list_dataset(root, class_map)
    skipped = [(p.relative_to(root).as_posix(), why) for p, why in listing.skipped]
    rows, content, body = [], [], []
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
        c, b = _features(img)
        content.append(c)
        body.append(b)
    for rel, why in skipped:
        log.warning("skipped %s: %s", rel, why)
    feats = (np.stack(content), np.stack(body)) if rows else (np.zeros((0, 1)), np.zeros((0, 1)))
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


def _blocks(rows: list[ManifestRow], feats: tuple[np.ndarray, np.ndarray]):
    """Yield (row indices, column indices, content and silhouette similarity blocks, exact-copy mask)."""
    sha, pix = _codes([r.sha256 for r in rows]), _codes([r.pixel_sha256 for r in rows])
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        buckets[(r.height, r.width)].append(i)
    for idx in buckets.values():
        cols = np.array(idx)
        for start in range(0, len(cols), BLOCK):
            b = cols[start : start + BLOCK]
            sims = [f[b] @ f[cols].T for f in feats]
            exact = (sha[b][:, None] == sha[cols][None, :]) | (pix[b][:, None] == pix[cols][None, :])
            yield b, cols, sims[0], sims[1], exact


def _nearest(rows: list[ManifestRow], feats: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """Per image, the highest content similarity to an image of another class ("cross") and of its own
    class ("same"), and the highest silhouette similarity to another class ("cross_body"); exact copies
    and the image itself are excluded; -inf where there is no candidate."""
    labels = np.array([r.label for r in rows])
    out = {k: np.full(len(rows), -np.inf) for k in ("cross", "same", "cross_body")}
    for b, cols, content, body, exact in _blocks(rows, feats):
        other = labels[b][:, None] != labels[cols][None, :]
        out["cross"][b] = np.where(other & ~exact, content, -np.inf).max(axis=1)
        out["same"][b] = np.where(~other & ~exact, content, -np.inf).max(axis=1)
        out["cross_body"][b] = np.where(other & ~exact, body, -np.inf).max(axis=1)
    return out


def choose_rule(
    nn: dict[str, np.ndarray], percentile: float = PERCENTILE, joint: float = JOINT_PERCENTILE
) -> LinkRule:
    """Link thresholds from nearest other-class similarities (the different-patient reference)."""
    ref, ref_body = nn["cross"][np.isfinite(nn["cross"])], nn["cross_body"][np.isfinite(nn["cross_body"])]
    if ref.size < MIN_REFERENCE:
        return LinkRule(
            DEFAULT_THRESHOLD,
            np.inf,
            np.inf,
            f"default content similarity {DEFAULT_THRESHOLD} "
            f"(only {ref.size} images have a same-size image of another class; {MIN_REFERENCE} needed)",
        )
    raw = float(np.percentile(ref, percentile))
    strict = float(np.clip(raw, *THRESHOLD_BOUNDS))
    loose = float(np.clip(np.percentile(ref, joint), THRESHOLD_BOUNDS[0], strict))
    body = float(np.percentile(ref_body, joint))
    how = (
        f"content > {strict:.3f} (the {percentile:g}th percentile of each image's most similar other-class "
        f"image, n={ref.size}: {raw:.3f}"
        + (f", clipped to {list(THRESHOLD_BOUNDS)}" if strict != raw else "")
        + f"), or content > {loose:.3f} and silhouette > {body:.3f} (both {joint:g}th percentiles); "
        f"images of different classes only when content > {max(strict, CONFLICT_MIN):.3f} (near-copies)"
    )
    return LinkRule(strict, loose, body, how)


def _group(rows: list[ManifestRow], feats: tuple[np.ndarray, np.ndarray], rule: LinkRule) -> float:
    """Set ``group_id`` on every row (connected components of rule links and exact copies). Returns the
    fraction of images the rule links directly to an image of another class."""
    labels = np.array([r.label for r in rows])
    ii, jj, crossed = [], [], 0
    for b, cols, content, body, exact in _blocks(rows, feats):
        cross = labels[b][:, None] != labels[cols][None, :]
        link = rule.links(content, body, cross)
        crossed += int((link & ~exact & cross).any(axis=1).sum())
        r, c = np.nonzero(link | exact)
        ii.append(b[r])
        jj.append(cols[c])
    n = len(rows)
    i, j = np.concatenate(ii), np.concatenate(jj)
    _, comp = connected_components(coo_matrix((np.ones(i.size), (i, j)), shape=(n, n)), directed=False)
    order = {c: k for k, c in enumerate(dict.fromkeys(comp.tolist()))}  # number by first appearance
    width = max(4, len(str(len(order))))
    for r, c in zip(rows, comp, strict=True):
        r.group_id = f"g{order[c] + 1:0{width}d}"
    return crossed / n


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
    rows, content: np.ndarray, rule: LinkRule, nn: dict[str, np.ndarray], cross_rate: float
) -> dict[str, Any]:
    members: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        members[r.group_id].append(i)
    sizes = np.array([len(m) for m in members.values()])
    n = len(rows)
    per_class = {c: len({r.group_id for r in rows if r.class_name == c}) for c in CLASSES}
    conflicts = []
    for gid, m in members.items():
        labels = {rows[i].label for i in m}
        if len(labels) < 2:
            continue
        lab = np.array([rows[i].label for i in m])
        sim = content[m] @ content[m].T
        same_size = np.array(
            [[rows[a].width == rows[b].width and rows[a].height == rows[b].height for b in m] for a in m]
        )
        cross = sim[(lab[:, None] != lab[None, :]) & same_size]
        conflicts.append(
            {
                "group_id": gid,
                "n_images": len(m),
                "classes": dict(Counter(rows[i].class_name for i in m)),
                "max_cross_label_similarity": round(float(cross.max()), 4) if cross.size else None,
                "paths": [rows[i].path for i in m],
            }
        )
    bins = (("1", 1, 1), ("2-5", 2, 5), ("6-10", 6, 10), ("11-20", 11, 20), ("21-50", 21, 50), (">50", 51, n))
    hist = {name: int(((sizes >= lo) & (sizes <= hi)).sum()) for name, lo, hi in bins}
    return {
        "n_groups": len(members),
        "per_class": per_class,
        "threshold": round(rule.strict, 4),
        "joint_content_threshold": round(rule.loose, 4) if np.isfinite(rule.loose) else None,
        "joint_silhouette_threshold": round(rule.body, 4) if np.isfinite(rule.body) else None,
        "threshold_method": rule.method,
        "feature": f"content: {FEATURE_SIZE}x{FEATURE_SIZE} gradient magnitude (2/3) + intensity (1/3); "
        "silhouette: filled foreground mask; zero-mean unit-norm, cosine; same size only",
        "images_linked_across_classes": round(cross_rate, 4),
        "size_distribution": hist,
        "n_singletons": int((sizes == 1).sum()),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "mean_images_per_group": round(float(sizes.mean()), 2),
        "images_with_near_duplicate": int((nn["same"] > rule.strict).sum()),
        "cross_class_nn_percentiles": _pct(nn["cross"], (50, 90, 95, 99, 100)),
        "same_class_nn_percentiles": _pct(nn["same"], (10, 25, 50, 75)),
        "cross_class_silhouette_nn_percentiles": _pct(nn["cross_body"], (50, 95, 99)),
        "label_conflicts": conflicts,
    }


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


def _warnings(s: dict[str, Any], size_table: dict[str, dict[str, int]]) -> list[str]:
    out = []
    if s["n_skipped"]:
        out.append(f"{s['n_skipped']} file(s) skipped as unreadable or not images (listed below).")
    b, p = s["duplicates"]["byte"], s["duplicates"]["pixel"]
    if b["n_sets"]:
        out.append(
            f"{b['n_sets']} sets of byte-identical files ({b['n_redundant_files']} redundant copies, "
            f"{b['n_cross_class_sets']} across classes)."
        )
    if p["n_sets"]:
        out.append(f"{p['n_sets']} sets of pixel-identical files with different bytes.")
    if s["groups"]["label_conflicts"]:
        out.append(
            f"{len(s['groups']['label_conflicts'])} scan group(s) hold more than one class "
            "(label conflicts, listed below)."
        )
    if len(size_table) > 1:
        main = next(iter(size_table))
        for size, counts in list(size_table.items())[1:]:
            owners = [c for c, n in counts.items() if n]
            if len(owners) == 1:
                out.append(
                    f"all {counts[owners[0]]} images of size {size} are {owners[0]} "
                    "(image size reveals the class)."
                )
        out.append(
            f"{sum(sum(v.values()) for k, v in size_table.items() if k != main)} image(s) are not {main}."
        )
    m = s["metadata_baseline"]
    if "balanced_accuracy" in m and m["balanced_accuracy"] > m["chance_balanced_accuracy"] + 0.1:
        out.append(
            f"metadata alone (size, file bytes, intensity statistics) predicts the class with balanced "
            f"accuracy {m['balanced_accuracy']:.2f} (chance {m['chance_balanced_accuracy']:.2f}) "
            "under group-wise CV: a CNN can use these shortcuts."
        )
    return out


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
        cross_rate = _group(rows, feats, rule)
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
    summary["warnings"] = _warnings(summary, size_table)
    summary["seconds"] = round(time.time() - t0, 2)
    log.info(
        "audit: %d images, %d groups (threshold %.3f), %d skipped",
        len(rows),
        summary["groups"]["n_groups"],
        rule.strict,
        len(skipped),
    )
    result = AuditResult(root, rows, skipped, summary)
    if out_dir is not None:
        write_audit(result, Path(out_dir), nn)
    return result


def write_manifest(rows: list[ManifestRow], path: Path) -> Path:
    """Write rows as CSV (header :data:`CSV_HEADER`; ``class`` holds ``class_name``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        for r in rows:
            d = asdict(r)
            d["class"], d["mean"], d["std"] = d.pop("class_name"), f"{r.mean:.6f}", f"{r.std:.6f}"
            d["duplicate_of"] = r.duplicate_of or ""
            w.writerow([d[k] for k in CSV_HEADER])
    return path


def read_manifest(path: Path) -> list[ManifestRow]:
    """Read a manifest.csv written by :func:`write_manifest`. Raises DataError when malformed."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = set(CSV_HEADER) - set(reader.fieldnames or ())
            if missing:
                raise DataError(
                    f"{path}: not a lungct manifest (missing columns: {', '.join(sorted(missing))})"
                )
            types = {fl.name: fl.type for fl in fields(ManifestRow)}
            out = []
            for n, d in enumerate(reader, start=2):
                d["class_name"] = d.pop("class")
                d["duplicate_of"] = d["duplicate_of"] or None
                kw = {
                    k: (int(v) if types[k] == "int" else float(v) if types[k] == "float" else v)
                    for k, v in d.items()
                    if k in types
                }
                if not 0 <= kw["label"] < len(CLASSES):
                    raise DataError(f"{path}:{n}: label {kw['label']} out of range")
                out.append(ManifestRow(**kw))
    except OSError as exc:
        raise DataError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: malformed manifest row ({exc})") from exc
    return out


def write_audit(result: AuditResult, out_dir: Path, nn: dict[str, np.ndarray] | None = None) -> None:
    """Write manifest.csv, audit.json, audit.md and two PNG figures (size by class, similarity)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(result.rows, out_dir / "manifest.csv")
    s = result.summary
    s["figures"] = _figures(s, out_dir, nn)
    (out_dir / "audit.json").write_text(json.dumps(s, indent=2, allow_nan=False), encoding="utf-8")
    (out_dir / "audit.md").write_text(render_markdown(s), encoding="utf-8")


def _figures(s: dict[str, Any], out_dir: Path, nn: dict[str, np.ndarray] | None) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sizes = list(s["size_by_class"])
    x = np.arange(len(sizes))
    for k, c in enumerate(CLASSES):
        bars = ax.bar(x + (k - 1) * 0.27, [s["size_by_class"][z][c] for z in sizes], 0.27, label=c)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, sizes)
    ax.set(xlabel="image size (W x H)", ylabel="images", title="Image size by class")
    ax.legend()
    fig.savefig(out_dir / "sizes_by_class.png")
    names = ["sizes_by_class.png"]
    if nn is not None:
        fig = Figure(figsize=(7, 3.5), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        vals = [
            (v[np.isfinite(v)], lab)
            for v, lab in (
                (nn["same"], "nearest same-class image"),
                (nn["cross"], "nearest other-class image"),
            )
        ]
        lo = min([float(v.min()) for v, _ in vals if v.size] + [0.9])
        bins = np.linspace(np.floor(lo * 10) / 10, 1.0, 61)
        for v, lab in vals:
            ax.hist(v, bins=bins, alpha=0.6, label=lab)
        ax.axvline(
            s["groups"]["threshold"], color="k", ls="--", label=f"threshold {s['groups']['threshold']:.3f}"
        )
        ax.set(xlabel="content similarity", ylabel="images", title="Nearest-neighbour similarity")
        ax.legend(loc="upper left")
        fig.savefig(out_dir / "similarity.png")
        names.append("similarity.png")
    return names


def _table(header: str, body: list[list[Any]]) -> str:
    """Markdown table; ``header`` is '|'-separated; an empty body gives 'none'."""
    lines = [f"| {header.replace('|', ' | ')} |", "|" + "---|" * (header.count("|") + 1)]
    return (
        "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in body]) if body else "none"
    )


REPORT = """# Data audit: {root}

lungct {lungct_version}; {seconds} s.

## Headline

| what | value |
|---|---|
| readable images | {n_images} |
| classes | {classes_text} |
| skipped files | {n_skipped} |
| byte-identical duplicates | {byte[n_sets]} sets, {byte[n_pairs]} pairs, {byte[n_redundant_files]} \
redundant files; {byte[n_cross_class_sets]} sets across classes |
| pixel-identical, different bytes | {pixel[n_sets]} sets; {pixel[n_cross_class_sets]} across classes |
| reconstructed scan groups | {g[n_groups]} ({groups_text}) |
| group link rule | {g[threshold_method]} |
| label conflicts (groups with >1 class) | {n_conflicts} |
| non-square images by class | {non_square_text} |
| metadata-only baseline (group-wise CV) | {meta} |

## Warnings

{warnings_text}

## Image size by class

{size_table}

## Per-class statistics

Intensities are in [0, 1] after decoding.

{class_table}

## Byte-identical duplicate files ({byte[n_sets]} sets)

{byte_table}

## Pixel-identical files with different bytes ({pixel[n_sets]} sets)

{pixel_table}

## Reconstructed scan groups

The release has no patient ids; images are grouped by content ({g[feature]}). Same-size images are
linked when {g[threshold_method]}; exact duplicates always are; groups are the connected components.
Slices of one patient far apart in the body can still fall into different groups, so treat the group
count as an upper bound on the number of scans.

- groups: {g[n_groups]}; images per group: min {g[size_min]}, median {g[size_median]}, mean \
{g[mean_images_per_group]}, max {g[size_max]}; singletons: {g[n_singletons]}
- group size distribution: {g[size_distribution]}
- images linked directly to an image of another class: {g[images_linked_across_classes]:.1%}
- images with a same-class image above the content threshold: {g[images_with_near_duplicate]}
- nearest other-class similarity percentiles: {g[cross_class_nn_percentiles]}
- nearest same-class similarity percentiles: {g[same_class_nn_percentiles]}

## Label conflicts ({n_conflicts})

{conflict_table}

## Metadata-only baseline

{meta_text}

## Skipped files ({n_skipped})

{skipped_table}
{figures_text}"""


def _dup_table(d: dict[str, Any]) -> str:
    body = [
        [
            k + 1,
            ", ".join(x["classes"]) + (" (CROSS-CLASS)" if x["cross_class"] else ""),
            "<br>".join(x["paths"]),
        ]
        for k, x in enumerate(d["sets"])
    ]
    return _table("#|classes|files", body)


def _meta_text(m: dict[str, Any]) -> tuple[str, str]:
    if "accuracy" not in m:
        return m.get("skipped", "n/a"), m.get("skipped", "n/a")
    short = (
        f"accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f} (chance "
        f"{m['chance_balanced_accuracy']:.3f}; majority class {m['majority_class_accuracy']:.3f})"
    )
    recall = ", ".join(f"{c} {v:.3f}" for c, v in m["recall"].items())
    return short, (
        f"{m['model']}; {m['cv']}.\n\n- {short}\n- recall per class: {recall}\n- confusion matrix "
        f"(rows true, columns predicted; {', '.join(m['labels'])}): {m['confusion_matrix']}\n"
        f"- feature importance: {m['feature_importance']}"
    )


def _kib(d: dict[str, float]) -> str:
    return f"{d['median'] / 1024:.1f} ({d['min'] / 1024:.1f}-{d['max'] / 1024:.1f})"


def render_markdown(s: dict[str, Any]) -> str:
    """The human-readable audit.md: headline numbers and warnings first, then details."""
    g, n = s["groups"], s["n_images"]
    meta, meta_text = _meta_text(s["metadata_baseline"])
    stats = [
        [
            c,
            d["n"],
            f"{d['share']:.1%}",
            d["non_square"],
            f"{d['aspect']['min']}-{d['aspect']['max']}",
            _kib(d["bytes"]),
            f"{d['mean']['mean']:.3f}",
            f"{d['std']['mean']:.3f}",
            d["modes"],
        ]
        for c, d in s["per_class"].items()
        if d["n"]
    ]
    conflicts = [
        [x["group_id"], x["n_images"], x["classes"], x["max_cross_label_similarity"], "<br>".join(x["paths"])]
        for x in g["label_conflicts"]
    ]
    return REPORT.format(
        **s,
        g=g,
        byte=s["duplicates"]["byte"],
        pixel=s["duplicates"]["pixel"],
        meta=meta,
        meta_text=meta_text,
        classes_text=", ".join(f"{c} {k} ({k / n:.1%})" for c, k in s["classes"].items()),
        groups_text=", ".join(f"{c} {k}" for c, k in g["per_class"].items()),
        non_square_text=", ".join(f"{c} {k}" for c, k in s["non_square_by_class"].items()),
        n_conflicts=len(conflicts),
        warnings_text="\n".join(f"- {w}" for w in s["warnings"] or ["none"]),
        size_table=_table(
            "size (WxH)|" + "|".join(CLASSES), [[z, *v.values()] for z, v in s["size_by_class"].items()]
        ),
        class_table=_table(
            "class|images|share|non-square|aspect min-max|file KiB median (min-max)|mean intensity"
            "|intensity std|modes",
            stats,
        ),
        byte_table=_dup_table(s["duplicates"]["byte"]),
        pixel_table=_dup_table(s["duplicates"]["pixel"]),
        conflict_table=_table("group|images|classes|max cross-label similarity|files", conflicts),
        skipped_table=_table("file|reason", [[x["path"], x["reason"]] for x in s["skipped"]]),
        figures_text="".join(f"\n![{f}]({f})\n" for f in s.get("figures", [])),
    )
