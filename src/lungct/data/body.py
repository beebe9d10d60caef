"""The body on a CT slice, defined once: the crop the model sees, the OOD guard and the shortcut check use it.

On a grey copy resized to :data:`WORK_SIDE` px (longer side, area-averaged), contrast-stretched
(1st..99th percentile) and lightly smoothed, "bright" pixels are those above :data:`BODY_LEVEL` of
Otsu's threshold (so that the dark fat of a soft-tissue window still counts as body). Bright parts
smaller than :data:`MIN_PART` of the image (text marks, specks) are dropped; the **body** is the
filled convex hull of the remaining parts (the patient, and the couch where it is visible).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

WORK_SIDE = 128
"""Body statistics are computed on a copy resized to this many px on the longer side."""

BODY_LEVEL = 0.5
"""Bright = above this fraction of Otsu's threshold (CT fat can be dark in a soft-tissue window)."""

MIN_PART = 0.002
"""Bright parts smaller than this share of the image (specks, text marks) do not shape the body."""

MIN_BODY = 0.05
"""A hull covering less than this share of the image is no body (crop: keep the whole image)."""

MIN_CONTRAST = 1e-4
"""Below this 1st..99th percentile spread (in [0, 1] units) an image is blank: no body."""


def otsu_threshold(x: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of values in [0, 1] (the upper edge of the best-separating histogram bin)."""
    hist, edges = np.histogram(x, bins=bins, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    omega, mu = np.cumsum(p), np.cumsum(p * centres)
    sigma_b = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[int(np.argmax(sigma_b[:-1])) + 1])


def to_work_size(img: np.ndarray) -> np.ndarray:
    """Grey float (H, W) -> float32 copy with its longer side exactly :data:`WORK_SIDE` px."""
    h, w = img.shape
    scale = WORK_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    im = Image.fromarray(np.asarray(img, np.float32), mode="F")
    return np.asarray(im.resize(size, Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR))


def hull_mask(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of the True pixels of a bool (H, W) mask (all False when degenerate)."""
    pts = np.argwhere(mask).astype(np.float64)
    try:
        eq = ConvexHull(pts).equations  # inside: normal . p + offset <= 0 for every facet
    except (QhullError, ValueError, IndexError):
        return np.zeros_like(mask)
    yy, xx = np.indices(mask.shape, dtype=np.float64)
    inside = np.ones(mask.shape, bool)
    for ny, nx, off in eq:
        inside &= ny * yy + nx * xx + off <= 1e-9
    return inside


@dataclass(frozen=True)
class Body:
    """The body found on a work-size copy (all arrays (h, w) at :data:`WORK_SIDE` on the longer side).

    ``norm``: the stretched, smoothed image in [0, 1]; ``bright``: bright pixels; ``hull``: the body.
    """

    norm: np.ndarray
    bright: np.ndarray
    hull: np.ndarray


def find_body(small: np.ndarray) -> Body | None:
    """Body of a work-size image (see :func:`to_work_size`); None when the image has no contrast."""
    lo, hi = np.percentile(small, [1, 99])
    if hi - lo < MIN_CONTRAST:
        return None
    x = ndimage.gaussian_filter(np.clip((small - lo) / (hi - lo), 0, 1), 1.0)
    bright = x > max(BODY_LEVEL * otsu_threshold(x), 0.04)
    labels, n = ndimage.label(bright)
    sizes = ndimage.sum_labels(bright, labels, index=np.arange(1, n + 1))
    parts = np.isin(labels, np.flatnonzero(sizes >= MIN_PART * x.size) + 1)
    return Body(x, bright, hull_mask(parts))


def body_mask(img: np.ndarray) -> np.ndarray | None:
    """bool (H, W) body mask of a grey float (H, W) image at full resolution; None when no body is found
    (blank image, or a hull under :data:`MIN_BODY` of the image)."""
    body = find_body(to_work_size(img))
    if body is None or body.hull.mean() < MIN_BODY:
        return None
    h, w = img.shape
    up = Image.fromarray(body.hull.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(up) > 127


def body_bbox(img: np.ndarray, margin: float = 0.02) -> tuple[int, int, int, int]:
    """Bounding box (y0, y1, x0, x1) of :func:`body_mask`, widened by ``margin`` of the longer side;
    the whole image when no body is found."""
    h, w = img.shape
    mask = body_mask(img)
    if mask is None:
        return 0, h, 0, w
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    m = round(margin * max(h, w))
    return (
        max(0, int(ys[0]) - m),
        min(h, int(ys[-1]) + 1 + m),
        max(0, int(xs[0]) - m),
        min(w, int(xs[-1]) + 1 + m),
    )
