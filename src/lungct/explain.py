"""Explanations: class-activation heatmaps, overlays, and checks of how trustworthy they are.

Heatmaps come from ``pytorch_grad_cam`` (Grad-CAM, Grad-CAM++, EigenCAM) on the model spec's target
layer, are computed on the model input (S, S) and mapped back onto the ORIGINAL image geometry (undoing
body crop, square padding and resizing), so they line up with the slice the user supplied.

Checks (all on the calibrated probability of the explained class):

* faithfulness: deletion / insertion AUC against a random-map baseline;
* pointing game: does the heatmap's maximum fall on the lesion mask (phantoms) vs random maps;
* shortcut energy: share of heatmap energy outside the body (couch, labels, background).
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from torch import nn
from tqdm.auto import tqdm

from lungct import CLASSES
from lungct.data import resolve_data_dir
from lungct.errors import DataError, LungctError, ModelError
from lungct.imaging import read_image
from lungct.models import get_spec, resolve_layer
from lungct.network import cam_layer
from lungct.predictor import Prediction, Predictor
from lungct.runs import RunPaths, find_run, load_checkpoint, read_json, write_json
from lungct.transforms import Geometry, PreprocessConfig, preprocess, to_original

log = logging.getLogger("lungct")


class SignedEigenCAM(EigenCAM):
    """EigenCAM whose first principal component is sign-corrected (salient side positive).

    Plain SVD leaves the sign arbitrary, so the clipped map could show the complement of the salient
    region; the library's sign-corrected projection flips the map when ``|min| > |max|``.
    """

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        return get_2d_projection_with_sign_correction(activations)


METHODS: dict[str, type] = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": SignedEigenCAM}
"""Method name -> ``pytorch_grad_cam`` class. EigenCAM is gradient-free (class-agnostic)."""

CMAP = "jet"
POINTING_TOLERANCE = 15 / 224
"""Pointing-game tolerance as a fraction of the image's shorter side (15 px at 224 px)."""

# The library's hooks sit on shared modules, so two CAMs on one network must not overlap in time.
_CAM_LOCK = threading.Lock()


@dataclass
class Explanation:
    """One heatmap. ``heatmap``: float32 (H, W) in [0, 1] in the original image's geometry."""

    heatmap: np.ndarray
    method: str
    target_class: str
    prediction: Prediction
    input_heatmap: np.ndarray | None = field(default=None, repr=False)  # float32 (S, S), model input


def _method_class(method: str) -> type:
    try:
        return METHODS[method]
    except KeyError:
        raise LungctError(
            f"unknown explanation method {method!r}; choose one of: {', '.join(METHODS)}"
        ) from None


def _class_index(target: str | None) -> int | None:
    if target is None:
        return None
    if target not in CLASSES:
        raise LungctError(f"unknown class {target!r}; choose one of: {', '.join(CLASSES)}")
    return CLASSES.index(target)


def target_layer(predictor: Predictor, layer: str | None = None) -> nn.Module:
    """The CAM target layer: the spec's, or ``layer`` (dotted path inside the backbone; ModelError if absent)."""
    if layer is None:
        return cam_layer(predictor.net, get_spec(predictor.model_name))
    return resolve_layer(predictor.net.backbone, layer)


@contextmanager
def _cam_session(cam_cls: type, net: nn.Module, layer: nn.Module) -> Iterator[Any]:
    """The library's CAM object; its ``__exit__`` releases the hooks on every path.

    ``__exit__`` is called without exception info because, given an IndexError, it prints and
    suppresses it; this way hooks are released and every exception propagates unchanged.
    """
    cam = cam_cls(model=net, target_layers=[layer])
    try:
        yield cam
    finally:
        cam.__exit__(None, None, None)


def _run_cam(
    predictor: Predictor,
    cam_cls: type,
    layer: nn.Module,
    layer_name: str,
    x: torch.Tensor,
    targets: list[int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """CAM maps float32 (N, S, S) in [0, 1] and logits (N, C) for model inputs x (N, 1, S, S)."""
    x = x.contiguous(memory_format=torch.channels_last)
    cam_targets = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
    with _CAM_LOCK, _cam_session(cam_cls, predictor.net, layer) as cam:
        try:
            maps = cam(input_tensor=x, targets=cam_targets)
        except Exception as exc:
            acts = cam.activations_and_grads.activations
            if acts and acts[0].ndim != 4:
                raise ModelError(
                    f"layer {layer_name!r} outputs shape {tuple(acts[0].shape)}; class-activation "
                    "maps need a convolutional feature map (N, C, h, w)"
                ) from exc
            raise
        finally:
            predictor.net.zero_grad(set_to_none=True)
        logits = cam.outputs.detach().float().numpy()
    return np.asarray(maps, dtype=np.float32), logits


def _prepare_all(predictor: Predictor, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[Geometry]]:
    prepared = [predictor.prepare(np.asarray(im, dtype=np.float32)) for im in images]
    if not prepared:
        return torch.zeros(0, 1, predictor.pre.size, predictor.pre.size), []
    return torch.cat([p[0] for p in prepared]), [p[1] for p in prepared]


def _explain_prepared(
    predictor: Predictor,
    x: torch.Tensor,
    geoms: Sequence[Geometry],
    method: str,
    targets: Sequence[int | None],
    layer: str | None,
    batch_size: int,
) -> list[Explanation]:
    cam_cls = _method_class(method)
    module = target_layer(predictor, layer)
    layer_name = layer if layer is not None else get_spec(predictor.model_name).cam_layer
    out: list[Explanation] = []
    for i in range(0, len(x), batch_size):
        xb, tb = x[i : i + batch_size], list(targets[i : i + batch_size])
        if any(t is None for t in tb) and not all(t is None for t in tb):
            pred = predictor.calibrated_probs(xb).argmax(1)
            tb = [int(p) if t is None else t for t, p in zip(tb, pred, strict=True)]
        maps, logits = _run_cam(
            predictor,
            cam_cls,
            module,
            layer_name,
            xb,
            None if all(t is None for t in tb) else [int(t) for t in tb],
        )
        probs = torch.softmax(torch.from_numpy(logits) / predictor.temperature, dim=1).numpy()
        for m, pr, t, g in zip(maps, probs, tb, geoms[i : i + batch_size], strict=True):
            cls = int(np.argmax(pr)) if t is None else int(t)
            heat = np.clip(to_original(m, g), 0.0, 1.0).astype(np.float32)
            out.append(Explanation(heat, method, CLASSES[cls], Prediction(pr, predictor.threshold, g), m))
    return out


def explain_batch(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    method: str = "gradcam",
    target: str | Sequence[str | None] | None = None,
    *,
    layer: str | None = None,
    batch_size: int = 16,
) -> list[Explanation]:
    """Explain float32 (H, W) [0, 1] images. ``target``: None (predicted class), a class, or one per image."""
    _method_class(method)
    if target is None or isinstance(target, str):
        targets = [_class_index(target)] * len(images)
    else:
        targets = [_class_index(t) for t in target]
        if len(targets) != len(images):
            raise LungctError(f"got {len(targets)} targets for {len(images)} images")
    x, geoms = _prepare_all(predictor, images)
    return _explain_prepared(predictor, x, geoms, method, targets, layer, batch_size)


def explain_image(
    predictor: Predictor,
    img: np.ndarray,
    method: str = "gradcam",
    target: str | None = None,
    *,
    layer: str | None = None,
) -> Explanation:
    """Heatmap of ``method`` for class ``target`` (None: the arg-max class) on one (H, W) [0, 1] image."""
    return explain_batch(predictor, [img], method, target, layer=layer)[0]


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _check_pair(img: np.ndarray, heatmap: np.ndarray) -> None:
    if img.ndim != 2 or img.shape != heatmap.shape:
        raise LungctError(f"image {img.shape} and heatmap {heatmap.shape} must be the same (H, W) shape")


def overlay(img: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend the colour-mapped heatmap over the grey image: uint8 (H, W, 3)."""
    _check_pair(img, heatmap)
    grey = np.repeat(np.clip(img, 0, 1)[..., None], 3, axis=2)
    colour = colormaps[CMAP](np.clip(heatmap, 0, 1))[..., :3]
    return np.round(255 * ((1 - alpha) * grey + alpha * colour)).astype(np.uint8)


def overlay_png(
    img: np.ndarray,
    heatmap: np.ndarray,
    path: str | Path | None = None,
    alpha: float = 0.4,
    colorbar: bool = True,
    title: str | None = None,
) -> bytes:
    """PNG bytes of the overlay with a colour bar (0 = low, 1 = high relative importance); also saved to path."""
    rgb = overlay(img, heatmap, alpha)
    h, w = img.shape
    fig = Figure(
        figsize=(4.2 * w / max(h, w) + (0.9 if colorbar else 0.2), 4.2 * h / max(h, w) + 0.4),
        dpi=100,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        sm = ScalarMappable(norm=Normalize(0, 1), cmap=CMAP)
        fig.colorbar(sm, ax=ax, fraction=0.05, pad=0.02, label="relative importance")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def heatmap_png(heatmap: np.ndarray) -> bytes:
    """RGBA PNG of the colour-mapped heatmap alone, alpha = intensity (for an adjustable overlay)."""
    h = np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1)
    rgba = colormaps[CMAP](h)
    rgba[..., 3] = h
    buf = io.BytesIO()
    Image.fromarray(np.round(rgba * 255).astype(np.uint8), mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# Faithfulness
# ------------------------------------------------------------------------------------------------

FAITHFULNESS_DEFINITION = (
    "In model-input space, pixels are ranked by saliency and the top 0, 1/n, ..., n/n of them are "
    "replaced (deletion: image -> Gaussian-blurred image, sigma = S/16) or restored (insertion: blurred -> "
    "image); the calibrated probability of the explained class is averaged over the steps (trapezoid AUC). "
    "Deletion: lower is better; insertion: higher is better. 'random' ranks pixels by a smooth random map "
    "(uniform 7x7 noise, bilinearly upsampled)."
)


def _random_map(rng: np.random.Generator, size: int) -> np.ndarray:
    low = torch.from_numpy(rng.uniform(size=(1, 1, 7, 7)).astype(np.float32))
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _curve_inputs(x: np.ndarray, base: np.ndarray, order: np.ndarray, n_steps: int) -> np.ndarray:
    """Deletion then insertion inputs for one ranking: float32 (2 (n_steps + 1), S, S)."""
    ks = np.round(np.linspace(0, x.size, n_steps + 1)).astype(int)
    fx, fb = x.ravel(), base.ravel()
    dele, ins = [], []
    for k in ks:
        d, i = fx.copy(), fb.copy()
        d[order[:k]], i[order[:k]] = fb[order[:k]], fx[order[:k]]
        dele.append(d)
        ins.append(i)
    return np.stack(dele + ins).reshape(-1, *x.shape)


def _faithfulness_prepared(
    predictor: Predictor,
    x: torch.Tensor,
    saliency: dict[str, list[np.ndarray]],
    targets: Sequence[int],
    n_steps: int,
    seed: int,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    names = [*saliency, "random"]
    scores: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for i, t in enumerate(targets):
        xi = x[i, 0].numpy()
        base = ndimage.gaussian_filter(xi, sigma=xi.shape[0] / 16)
        maps = [saliency[n][i] for n in saliency] + [_random_map(rng, xi.shape[0])]
        ties = rng.uniform(0, 1e-6, size=xi.size)  # random order among equal saliency (e.g. zeros)
        batch = np.concatenate(
            [_curve_inputs(xi, base, np.argsort(-(m.ravel() + ties), kind="stable"), n_steps) for m in maps]
        )
        p = predictor.calibrated_probs(torch.from_numpy(batch)[:, None])[:, t].reshape(
            len(maps), 2, n_steps + 1
        )
        for n, curves in zip(names, p, strict=True):
            scores[n].append(
                (
                    float(np.trapezoid(curves[0], dx=1 / n_steps)),
                    float(np.trapezoid(curves[1], dx=1 / n_steps)),
                )
            )
    out: dict[str, Any] = {
        "definition": FAITHFULNESS_DEFINITION,
        "n_images": len(targets),
        "n_steps": n_steps,
    }
    for n in names:
        arr = np.array(scores[n]) if scores[n] else np.full((1, 2), np.nan)
        out[n] = {"deletion_auc": _num(arr[:, 0].mean()), "insertion_auc": _num(arr[:, 1].mean())}
    return out


def faithfulness(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    method: str | Sequence[str] = "gradcam",
    n_steps: int = 10,
    seed: int = 0,
    *,
    layer: str | None = None,
) -> dict[str, Any]:
    """Deletion / insertion AUC for ``method`` (one or several) and a seeded random-map baseline.

    The explained class is each image's predicted class. See :data:`FAITHFULNESS_DEFINITION`.
    """
    methods = [method] if isinstance(method, str) else list(method)
    for m in methods:
        _method_class(m)
    if n_steps < 1:
        raise LungctError(f"n_steps must be >= 1, got {n_steps}")
    x, geoms = _prepare_all(predictor, images)
    targets: list[int] = []
    saliency: dict[str, list[np.ndarray]] = {}
    for m in methods:
        ex = _explain_prepared(predictor, x, geoms, m, [None] * len(images), layer, 16)
        saliency[m] = [e.input_heatmap for e in ex]
        targets = [CLASSES.index(e.target_class) for e in ex]
    return _faithfulness_prepared(predictor, x, saliency, targets, n_steps, seed)


def _num(x: Any) -> float | None:
    """A finite float rounded for JSON, or None."""
    v = float(x)
    return round(v, 6) if np.isfinite(v) else None


# ------------------------------------------------------------------------------------------------
# Pointing game and shortcut energy
# ------------------------------------------------------------------------------------------------


def _pointing_scores(
    heatmaps: Sequence[np.ndarray], masks: Sequence[np.ndarray], tolerance: float, n_random: int, seed: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    hits, rand, area = [], [], []
    for h, m in zip(heatmaps, masks, strict=True):
        m = np.asarray(m, dtype=bool)
        if m.shape != h.shape:
            raise LungctError(f"lesion mask {m.shape} and heatmap {h.shape} differ in shape")
        near = ndimage.distance_transform_edt(~m) <= tolerance * min(m.shape)
        hits.append(bool(near.flat[int(np.argmax(h))]))
        # The arg-max of an i.i.d. uniform random map is a uniformly drawn pixel.
        rand.append(float(near.flat[rng.integers(near.size, size=n_random)].mean()))
        area.append(float(near.mean()))
    return {
        "n_images": len(hits),
        "tolerance": round(tolerance, 4),
        "hit_rate": _num(np.mean(hits)),
        "random_hit_rate": _num(np.mean(rand)),
        "expected_random_hit_rate": _num(np.mean(area)),
    }


def pointing_game(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    method: str = "gradcam",
    *,
    targets: Sequence[str | None] | None = None,
    tolerance: float = POINTING_TOLERANCE,
    n_random: int = 200,
    seed: int = 0,
    layer: str | None = None,
) -> dict[str, Any]:
    """Share of lesion images whose heatmap maximum lies within ``tolerance`` of the lesion mask.

    ``masks``: bool (H, W) per image (images with an empty mask are skipped); ``tolerance``: fraction of
    the shorter image side (default 15 px at 224 px). ``targets``: class per image (default: predicted).
    The baseline scores ``n_random`` seeded uniform random maps per image; its expectation is the
    share of pixels within tolerance of the lesion (``expected_random_hit_rate``).
    """
    if len(masks) != len(images) or (targets is not None and len(targets) != len(images)):
        raise LungctError(
            f"need one mask (and target) per image; got {len(images)} images, {len(masks)} masks"
        )
    keep = [i for i, m in enumerate(masks) if np.asarray(m).any()]
    if not keep:
        raise LungctError("the pointing game needs at least one image with a non-empty lesion mask")
    ex = explain_batch(
        predictor,
        [images[i] for i in keep],
        method,
        None if targets is None else [targets[i] for i in keep],
        layer=layer,
    )
    out = _pointing_scores([e.heatmap for e in ex], [masks[i] for i in keep], tolerance, n_random, seed)
    return {"method": method, **out}


def _otsu(x: np.ndarray) -> float:
    hist, edges = np.histogram(x, bins=64, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    omega, mu = np.cumsum(p), np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[int(np.argmax(between)) + 1])


def body_mask(img: np.ndarray) -> np.ndarray | None:
    """bool (H, W): convex hull of the largest bright component (the body, lungs included); None if none."""
    smooth = ndimage.gaussian_filter(np.asarray(img, dtype=np.float32), sigma=max(1.0, min(img.shape) / 256))
    labels, n = ndimage.label(smooth > max(0.04, 0.5 * _otsu(smooth)))
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    ys, xs = np.nonzero(labels == int(np.argmax(sizes)) + 1)
    if len(ys) < 0.02 * img.size:
        return None
    try:
        hull = ConvexHull(np.column_stack([xs, ys]))
    except QhullError:
        return None
    canvas = Image.new("1", (img.shape[1], img.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([(float(xs[v]), float(ys[v])) for v in hull.vertices], fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def shortcut_energy(
    heatmaps: Sequence[np.ndarray], images: Sequence[np.ndarray], classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Share of heatmap energy (sum of values) outside the body, mean over images, overall and per class.

    The body is :func:`body_mask` (couch, text and background are outside). Images without a
    detectable body or with an all-zero heatmap are left out (counted in ``n_skipped``).
    """
    shares: list[float] = []
    for h, im in zip(heatmaps, images, strict=True):
        _check_pair(np.asarray(im), np.asarray(h))
        mask, total = body_mask(im), float(np.sum(h))
        shares.append(float(np.sum(h[~mask])) / total if mask is not None and total > 0 else np.nan)
    arr = np.array(shares, dtype=np.float64)
    out: dict[str, Any] = {
        "mean": _num(np.nanmean(arr)) if np.isfinite(arr).any() else None,
        "n_images": int(np.isfinite(arr).sum()),
        "n_skipped": int((~np.isfinite(arr)).sum()),
    }
    if classes is not None:
        cls = np.asarray(list(classes))
        out["per_class"] = {
            c: _num(np.nanmean(arr[cls == c])) if np.isfinite(arr[cls == c]).any() else None
            for c in CLASSES
            if (cls == c).any()
        }
    return out


# ------------------------------------------------------------------------------------------------
# A run's explanation report: overlays, gallery, metrics
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    path: Path
    name: str
    label: int | None = None
    mask: Path | None = None


def _test_items(paths: RunPaths, data: Path | None) -> list[_Item]:
    """The run's test split (split.csv) found under ``data`` or the data folder in config.yaml."""
    from lungct.config import load_config
    from lungct.phantoms import MASK_FOLDER
    from lungct.splits import read_split

    root = resolve_data_dir(data if data is not None else load_config(paths.config).data)
    assignment = read_split(paths.split)
    with paths.split.open(newline="", encoding="utf-8") as fh:
        classes = {row["path"]: row.get("class") for row in csv.DictReader(fh)}
    items = []
    for rel, split in assignment.items():
        if split == "test" and (root / rel).is_file():
            mask = (root / MASK_FOLDER / rel).with_suffix(".png")
            cls = classes.get(rel)
            items.append(
                _Item(
                    root / rel,
                    rel,
                    CLASSES.index(cls) if cls in CLASSES else None,
                    mask if mask.is_file() else None,
                )
            )
    if not items:
        raise DataError(
            f"none of the test-split images in {paths.split} exist under {root}; "
            "pass --data with the folder this run was trained on"
        )
    return items


def _select(items: list[_Item], preds: list[Prediction], max_images: int, seed: int) -> list[int]:
    """Up to ``max_images`` indices: wrong predictions (most confident first, at most half), then
    correct or unlabelled ones drawn class by class in seeded random order."""
    if max_images < 1:
        raise LungctError(f"max_images must be >= 1, got {max_images}")
    conf = [float(p.probs.max()) for p in preds]
    wrong = sorted(
        (
            i
            for i, (it, p) in enumerate(zip(items, preds, strict=True))
            if it.label is not None and it.label != p.label
        ),
        key=lambda i: -conf[i],
    )
    rest = [i for i in range(len(items)) if i not in set(wrong)]
    rng = np.random.default_rng(seed)
    pools = [
        list(rng.permutation([i for i in rest if items[i].label == c])) for c in [*range(len(CLASSES)), None]
    ]
    fill = [int(p[k]) for k in range(max((len(p) for p in pools), default=0)) for p in pools if k < len(p)]
    n_wrong = min(len(wrong), max(max_images // 2, max_images - len(fill)))
    return sorted(wrong[:n_wrong] + fill[: max_images - n_wrong])


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "image"


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _card(item: _Item, pred: Prediction, overlays: dict[str, str]) -> str:
    probs = ", ".join(f"{c} {p:.3f}" for c, p in zip(CLASSES, pred.probs, strict=True))
    truth = CLASSES[item.label] if item.label is not None else "unknown"
    figs = "".join(
        f'<figure><img src="{_esc(src)}" alt="{_esc(m)} heatmap" loading="lazy">'
        f"<figcaption>{_esc(m)}</figcaption></figure>"
        for m, src in overlays.items()
    )
    return (
        f'<div class="card"><h3>{_esc(item.name)}</h3><p>true: <b>{_esc(truth)}</b> · predicted: '
        f"<b>{_esc(pred.class_name)}</b> ({pred.probs.max():.3f}) · decision: {_esc(pred.decision)}"
        f"<br><small>{_esc(probs)}</small></p>{figs}</div>"
    )


def _gallery(
    out: Path, cards: list[tuple[_Item, Prediction, dict[str, str]]], result: dict[str, Any]
) -> Path:
    """gallery.html: wrong then correct predictions, most confident first; overlays linked relatively."""
    groups: dict[str, list] = {"Wrong predictions": [], "Correct predictions": [], "Unlabelled images": []}
    for item, pred, ov in sorted(cards, key=lambda c: -float(c[1].probs.max())):
        key = (
            "Unlabelled images"
            if item.label is None
            else ("Correct predictions" if item.label == pred.label else "Wrong predictions")
        )
        groups[key].append(_card(item, pred, ov))
    body = "".join(
        f"<h2>{_esc(k)} ({len(v)})</h2><div class='grid'>{''.join(v)}</div>" for k, v in groups.items() if v
    )
    summary = _esc(
        json.dumps(
            {k: result[k] for k in ("faithfulness", "pointing_game", "shortcut_energy") if k in result},
            indent=1,
        )
    )
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>lungct explanations</title><style>"
        "body{font-family:sans-serif;margin:1.5em;color:#222}.grid{display:flex;flex-wrap:wrap;gap:1em}"
        ".card{border:1px solid #ccc;border-radius:6px;padding:.5em;max-width:100%}.card h3{font-size:1em;margin:.2em 0}"
        "figure{display:inline-block;margin:.2em}figure img{width:300px;height:auto}pre{background:#f4f4f4;"
        "padding:.5em;overflow:auto;font-size:.8em}</style></head><body><h1>Explanations</h1>"
        f"<p>Methods: {_esc(', '.join(result['methods']))}; explained class: {_esc(result['target'])}; "
        f"{result['n_images']} images ({_esc(result['source'])}).</p>"
        "<p><b>Heat maps show where the network looked, not where disease is; they are a plausibility check, "
        "not a localisation.</b></p>"
        f"{body}<h2>Checks</h2><pre>{summary}</pre></body></html>"
    )
    path = out / "gallery.html"
    path.write_text(page, encoding="utf-8")
    return path


def _merge_metrics(path: Path, result: dict[str, Any]) -> None:
    metrics = read_json(path) if path.is_file() else {}
    metrics["explain"] = result
    write_json(path, metrics)


def run_explain(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    images: Sequence[Path] | None = None,
    data: Path | None = None,
    methods: Sequence[str] = ("gradcam", "gradcam++", "eigencam"),
    target: str | None = None,
    max_images: int = 48,
    progress: bool = True,
    seed: int = 0,
    n_steps: int = 10,
) -> dict[str, Any]:
    """Explain a run's test split (or ``images``): overlays, gallery.html, faithfulness, shortcut energy,
    pointing game (when lesion masks exist). Test-split results also go under "explain" in
    RUN/eval/test/metrics.json and the run report is refreshed. Returns the results."""
    t0 = time.time()
    paths = find_run(run_dir)
    methods = list(dict.fromkeys(methods))
    for m in methods:
        _method_class(m)
    tgt = _class_index(target)
    predictor = Predictor.from_run(paths.root)
    out = Path(out_dir) if out_dir is not None else paths.eval_dir("test") / "explain"
    items = [_Item(Path(p), Path(p).name) for p in images] if images is not None else _test_items(paths, data)
    preds = predictor.predict_paths([it.path for it in items], progress=progress)
    sel = _select(items, preds, max_images, seed)
    items, preds = [items[i] for i in sel], [preds[i] for i in sel]
    imgs = [read_image(it.path)[0] for it in items]
    x, geoms = _prepare_all(predictor, imgs)
    expl = {
        m: _explain_prepared(predictor, x, geoms, m, [tgt] * len(imgs), None, 16)
        for m in tqdm(methods, desc="explain", unit="method", disable=not progress)
    }
    overlays: list[dict[str, str]] = [{} for _ in items]
    for k, (item, img) in enumerate(zip(items, imgs, strict=True)):
        for m in methods:
            e = expl[m][k]
            rel = f"overlays/{k:03d}_{_safe(Path(item.name).stem)}_{_safe(m.replace('+', 'p'))}.png"
            overlay_png(
                img,
                e.heatmap,
                out / rel,
                title=f"{m}: {e.target_class} (p={e.prediction.probs[CLASSES.index(e.target_class)]:.2f})",
            )
            overlays[k][m] = rel
    targets = [CLASSES.index(e.target_class) for e in expl[methods[0]]]
    classes = [
        CLASSES[it.label] if it.label is not None else p.class_name
        for it, p in zip(items, preds, strict=True)
    ]
    result: dict[str, Any] = {
        "methods": methods,
        "target": target or "predicted class",
        "n_images": len(items),
        "source": "test split" if images is None else "given images",
        "layer": get_spec(predictor.model_name).cam_layer,
        "faithfulness": _faithfulness_prepared(
            predictor, x, {m: [e.input_heatmap for e in expl[m]] for m in methods}, targets, n_steps, seed
        ),
        "shortcut_energy": {m: shortcut_energy([e.heatmap for e in expl[m]], imgs, classes) for m in methods},
    }
    lesion = [k for k, it in enumerate(items) if it.mask is not None]
    masks = {k: np.array(Image.open(items[k].mask).convert("L")) > 127 for k in lesion}
    lesion = [k for k in lesion if masks[k].any() and masks[k].shape == imgs[k].shape]
    if lesion:
        result["pointing_game"] = {
            m: _pointing_scores(
                [expl[m][k].heatmap for k in lesion],
                [masks[k] for k in lesion],
                POINTING_TOLERANCE,
                200,
                seed,
            )
            for m in methods
        }
    out.mkdir(parents=True, exist_ok=True)
    result["gallery"] = _gallery(out, list(zip(items, preds, overlays, strict=True)), result).name
    result["seconds"] = round(time.time() - t0, 1)
    write_json(out / "explain.json", result)
    if images is None:
        _merge_metrics(paths.eval_dir("test") / "metrics.json", result)
        _refresh_report(paths.root)
    return result


def _refresh_report(root: Path) -> None:
    try:
        from lungct.report import write_report
    except ModuleNotFoundError as exc:
        if exc.name != "lungct.report":
            raise
        log.info("report module not available; report.html not refreshed")
        return
    write_report(root)


# ------------------------------------------------------------------------------------------------
# Pointing-game benchmark on phantoms
# ------------------------------------------------------------------------------------------------


def _phantom_set(
    n_per_class: int, pre: PreprocessConfig, size: int, seed: int
) -> tuple[list, np.ndarray, list]:
    """(float32 images, labels, lesion masks) for n_per_class phantoms of every class."""
    from lungct.phantoms import make_phantom

    rng = np.random.default_rng(seed)
    imgs, labels, masks = [], [], []
    for _ in range(n_per_class):
        for c, kind in enumerate(CLASSES):
            img, mask = make_phantom(kind, size, rng)
            imgs.append(img.astype(np.float32) / 255.0)
            labels.append(c)
            masks.append(mask)
    return imgs, np.array(labels), masks


def run_pointing_game_benchmark(
    *,
    size: int = 128,
    n_train: int = 40,
    n_val: int = 10,
    n_test: int = 20,
    epochs: int = 10,
    seed: int = 0,
    method: str = "gradcam",
    progress: bool = False,
) -> dict[str, Any]:
    """Train small_cnn on seeded phantoms and play the pointing game on new ones (true class explained).

    Phantom classes differ only by their lesion (none / small nodule / large spiculated mass) while the
    anatomy is random per image, so a model that learned the task must look at the lesion.
    Returns hit rate vs random maps, test accuracy and timing. Sizes in px, counts per class.
    """
    from lungct.config import make_config
    from lungct.network import build_network
    from lungct.train import fit, predict_logits, set_determinism

    t0 = time.time()
    set_determinism(seed)
    pre = PreprocessConfig(size=size)
    sets = {
        name: _phantom_set(n, pre, size, seed + k)
        for k, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test)))
    }

    def cache(imgs: list) -> np.ndarray:
        return np.stack([np.round(preprocess(im, pre)[0] * 255).astype(np.uint8) for im in imgs])

    train, val = ((cache(sets[s][0]), sets[s][1]) for s in ("train", "val"))
    net, _, _ = build_network("small_cnn", pretrained="none")
    cfg = make_config(
        {
            "model": "small_cnn",
            "pretrained": "none",
            "image_size": size,
            "epochs": epochs,
            "batch_size": 16,
            "lr": 5e-3,
            "augment": False,
            "patience": epochs,
            "warmup_epochs": 1,
            "seed": seed,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        state = fit(net, cfg, train, val, d / "best.pt", d / "last.pt", d / "history.csv", progress=progress)
        net.load_state_dict(load_checkpoint(d / "best.pt")["state_dict"])
    predictor = Predictor(net, "small_cnn", pre)
    imgs, labels, masks = sets["test"]
    acc = float((predict_logits(net, cache(imgs)).argmax(1) == labels).mean())
    pg = pointing_game(predictor, imgs, masks, method, targets=[CLASSES[y] for y in labels], seed=seed)
    return {
        "model": "small_cnn",
        "size": size,
        "epochs_run": state.epoch,
        "test_accuracy": round(acc, 4),
        **pg,
        "seconds": round(time.time() - t0, 1),
    }
