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

MODEL_LOCK = threading.Lock()
"""Held while a CAM runs. Its hooks sit on the shared network, so any other forward pass on that
network at the same time (another thread predicting) would be recorded too; serialise with this lock."""


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
    """The CAM target layer: the spec's, or ``layer`` (dotted path in the backbone; ModelError if absent)."""
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


@contextmanager
def _grad_from(net: nn.Module, layer: nn.Module) -> Iterator[None]:
    """Track gradients only from ``layer``'s output on: parameters are frozen for the call and the
    output becomes an autograd leaf, so the backward pass skips every layer before the target (and
    all weight gradients). Grad-CAM needs only d(class score)/d(target activations)."""
    frozen = [(p, p.requires_grad) for p in net.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)

    def leaf(_m: nn.Module, _i: Any, out: Any) -> Any:
        # clone: later in-place ops (e.g. DenseNet's final ReLU) may not act on a leaf
        return out.detach().requires_grad_(True).clone() if isinstance(out, torch.Tensor) else None

    handle = layer.register_forward_hook(leaf)
    try:
        yield
    finally:
        handle.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)


def _run_cam(
    predictor: Predictor,
    cam_cls: type,
    layer: nn.Module,
    name: str,
    x: torch.Tensor,
    targets: list[int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """CAM maps float32 (N, S, S) in [0, 1] and logits (N, C) for model inputs x (N, 1, S, S)."""
    x = x.contiguous(memory_format=torch.channels_last)
    cam_targets = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
    with MODEL_LOCK, _grad_from(predictor.net, layer), _cam_session(cam_cls, predictor.net, layer) as cam:
        try:
            maps = cam(input_tensor=x, targets=cam_targets)
        except Exception as exc:
            acts = cam.activations_and_grads.activations
            if acts and acts[0].ndim != 4:
                raise ModelError(
                    f"layer {name!r} outputs shape {tuple(acts[0].shape)}; class-activation "
                    "maps need a convolutional feature map (N, C, h, w)"
                ) from exc
            raise
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
    layer: str | None = None,
    bs: int = 16,
) -> list[Explanation]:
    """Explain prepared inputs x (N, 1, S, S); a None target means the predicted class."""
    cam_cls, module = _method_class(method), target_layer(predictor, layer)
    name = layer if layer is not None else get_spec(predictor.model_name).cam_layer
    out: list[Explanation] = []
    for i in range(0, len(x), bs):
        xb, tb = x[i : i + bs], list(targets[i : i + bs])
        if None in tb and any(t is not None for t in tb):
            tb = [
                int(p) if t is None else t
                for t, p in zip(tb, predictor.calibrated_probs(xb).argmax(1), strict=True)
            ]
        maps, logits = _run_cam(predictor, cam_cls, module, name, xb, None if None in tb else tb)
        probs = torch.softmax(torch.from_numpy(logits) / predictor.temperature, dim=1).numpy()
        for m, pr, t, g in zip(maps, probs, tb, geoms[i : i + bs], strict=True):
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
    """PNG of the overlay with a colour bar (0 low .. 1 high relative importance); also written to path."""
    rgb = overlay(img, heatmap, alpha)
    h, w = img.shape
    size = (4.2 * w / max(h, w) + (0.9 if colorbar else 0.2), 4.2 * h / max(h, w) + 0.4)
    fig = Figure(figsize=size, dpi=100, layout="constrained")
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
    scores: dict[str, list[np.ndarray]] = {n: [] for n in names}  # per image: (deletion, insertion)
    for i, t in enumerate(targets):
        xi = x[i, 0].numpy()
        base = ndimage.gaussian_filter(xi, sigma=xi.shape[0] / 16)
        maps = [saliency[n][i] for n in saliency] + [_random_map(rng, xi.shape[0])]
        ties = rng.uniform(0, 1e-6, size=xi.size)  # random order among equal saliency (e.g. zeros)
        orders = [np.argsort(-(m.ravel() + ties), kind="stable") for m in maps]
        batch = torch.from_numpy(np.concatenate([_curve_inputs(xi, base, o, n_steps) for o in orders]))
        probs = np.concatenate(
            [predictor.calibrated_probs(batch[j : j + 32, None]) for j in range(0, len(batch), 32)]
        )
        p = probs[:, t].reshape(len(maps), 2, n_steps + 1)
        for n, curves in zip(names, p, strict=True):
            scores[n].append(np.trapezoid(curves, dx=1 / n_steps, axis=1))
    out: dict[str, Any] = {
        "definition": FAITHFULNESS_DEFINITION,
        "n_images": len(targets),
        "n_steps": n_steps,
    }
    for n in names:
        auc = np.mean(scores[n], axis=0) if scores[n] else [np.nan, np.nan]
        out[n] = {"deletion_auc": _num(auc[0]), "insertion_auc": _num(auc[1])}
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
        ex = _explain_prepared(predictor, x, geoms, m, [None] * len(images), layer)
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
    heatmaps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    tolerance: float,
    n_random: int = 200,
    seed: int = 0,
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
    chosen = None if targets is None else [targets[i] for i in keep]
    ex = explain_batch(predictor, [images[i] for i in keep], method, chosen, layer=layer)
    out = _pointing_scores([e.heatmap for e in ex], [masks[i] for i in keep], tolerance, n_random, seed)
    return {"method": method, **out}


def _otsu(x: np.ndarray) -> float:
    hist, edges = np.histogram(x, bins=64, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    omega, mu = np.cumsum(p), np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[int(np.argmax(between)) + 1])


def body_mask(img: np.ndarray, min_fraction: float = 0.15) -> np.ndarray | None:
    """bool (H, W): convex hull of the largest filled bright region (the body, lungs included).

    Works at about 128 px (max-pooled, so thin skin lines survive). Returns None when the hull covers
    less than ``min_fraction`` of the image, e.g. bone-window slices whose soft tissue is black.
    """
    h, w = img.shape
    f = max(1, min(h, w) // 128)
    small = ndimage.maximum_filter(np.asarray(img, dtype=np.float32), size=f)[::f, ::f]
    mask = small > max(0.1, 0.25 * _otsu(small))
    if f > 1:  # bridge one-pixel gaps in the skin line (small images: keep the couch separate)
        mask = ndimage.binary_closing(mask, structure=np.ones((3, 3), bool))
    labels, n = ndimage.label(ndimage.binary_fill_holes(mask))
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    if n == 0 or sizes.max() < 0.05 * labels.size:
        return None
    ys, xs = np.nonzero(labels == int(np.argmax(sizes)) + 1)
    try:
        hull = ConvexHull(np.column_stack([xs, ys]).astype(np.float64))
    except QhullError:
        return None
    canvas = Image.new("1", (w, h), 0)
    corners = [((xs[v] + 0.5) * f, (ys[v] + 0.5) * f) for v in hull.vertices]
    ImageDraw.Draw(canvas).polygon(corners, fill=1, outline=1)
    out = np.array(canvas, dtype=bool)
    return out if out.mean() >= min_fraction else None


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
    ok = np.isfinite(arr)
    out: dict[str, Any] = {"mean": _mean(arr), "n_images": int(ok.sum()), "n_skipped": int((~ok).sum())}
    if classes is not None:
        cls = np.asarray(list(classes))
        out["per_class"] = {c: _mean(arr[cls == c]) for c in CLASSES if (cls == c).any()}
    return out


def _mean(arr: np.ndarray) -> float | None:
    """Mean of the finite values (None when there are none)."""
    return _num(np.mean(arr[np.isfinite(arr)])) if np.isfinite(arr).any() else None


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
        labels = {
            r["path"]: CLASSES.index(r["class"]) for r in csv.DictReader(fh) if r.get("class") in CLASSES
        }
    items = []
    for rel in (r for r, split in assignment.items() if split == "test" and (root / r).is_file()):
        mask = (root / MASK_FOLDER / rel).with_suffix(".png")
        items.append(_Item(root / rel, rel, labels.get(rel), mask if mask.is_file() else None))
    if not items:
        raise DataError(
            f"none of the test-split images in {paths.split} exist under {root}; "
            "pass --data with the folder this run was trained on"
        )
    return items


def _select(items: list[_Item], preds: list[Prediction], max_images: int, seed: int) -> list[int]:
    """Up to ``max_images`` indices in gallery order: wrong predictions (at most half unless others run
    out), then correct and unlabelled ones drawn class by class in seeded random order; each group
    most confident first."""
    if max_images < 1:
        raise LungctError(f"max_images must be >= 1, got {max_images}")
    is_wrong = [it.label is not None and it.label != p.label for it, p in zip(items, preds, strict=True)]
    wrong = sorted(np.flatnonzero(is_wrong), key=lambda i: -float(preds[i].probs.max()))
    rng = np.random.default_rng(seed)
    pools = [
        rng.permutation([i for i, it in enumerate(items) if it.label == c and not is_wrong[i]])
        for c in [*range(len(CLASSES)), None]
    ]
    fill = [int(p[k]) for k in range(max(len(p) for p in pools)) for p in pools if k < len(p)]
    n_wrong = min(len(wrong), max(max_images // 2, max_images - len(fill)))
    rest = sorted(fill[: max_images - n_wrong], key=lambda i: (items[i].label is None, -preds[i].probs.max()))
    return [int(i) for i in wrong[:n_wrong]] + rest


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lungct explanations</title>
<style>body{{font-family:sans-serif;margin:1.5em;color:#222}} .grid{{display:flex;flex-wrap:wrap;gap:1em}}
.card{{border:1px solid #ccc;border-radius:6px;padding:.5em}} .card h3{{font-size:1em;margin:.2em 0}}
figure{{display:inline-block;margin:.2em}} figure img{{width:300px;height:auto}}
pre{{background:#f4f4f4;padding:.5em;overflow:auto;font-size:.8em}}</style></head><body>
<h1>Explanations</h1><p>{intro}</p><p><b>Heat maps show where the network looked, not where disease is;
they are a plausibility check, not a localisation.</b></p>{body}
<h2>Checks</h2><pre>{checks}</pre></body></html>
"""


def _card(item: _Item, pred: Prediction, overlays: dict[str, str]) -> str:
    probs = ", ".join(f"{c} {p:.3f}" for c, p in zip(CLASSES, pred.probs, strict=True))
    truth = CLASSES[item.label] if item.label is not None else "unknown"
    figs = "".join(
        f'<figure><img src="{_esc(src)}" alt="{_esc(m)} heatmap"><figcaption>{_esc(m)}</figcaption></figure>'
        for m, src in overlays.items()
    )
    return (
        f'<div class="card"><h3>{_esc(item.name)}</h3><p>true: <b>{_esc(truth)}</b> · predicted: '
        f"<b>{_esc(pred.class_name)}</b> ({pred.probs.max():.3f}) · decision: {_esc(pred.decision)}"
        f"<br><small>{_esc(probs)}</small></p>{figs}</div>"
    )


def _gallery(out: Path, cards: list[tuple[_Item, Prediction, dict[str, str]]], result: dict[str, Any]) -> str:
    """Write gallery.html (wrong, then correct predictions, most confident first); returns its name."""
    groups: dict[str, list[str]] = {
        "Wrong predictions": [],
        "Correct predictions": [],
        "Unlabelled images": [],
    }
    for item, pred, ov in sorted(cards, key=lambda c: -float(c[1].probs.max())):
        ok = item.label == pred.label
        key = (
            "Unlabelled images"
            if item.label is None
            else "Correct predictions"
            if ok
            else "Wrong predictions"
        )
        groups[key].append(_card(item, pred, ov))
    body = "".join(
        f"<h2>{k} ({len(v)})</h2><div class='grid'>{''.join(v)}</div>" for k, v in groups.items() if v
    )
    checks = {k: result[k] for k in ("faithfulness", "pointing_game", "shortcut_energy") if k in result}
    intro = (
        f"Methods: {', '.join(result['methods'])}; explained class: {result['target']}; "
        f"{result['n_images']} images ({result['source']}); 'wrong' means the arg-max class is not the "
        "true class (the thresholded decision is shown beside it)."
    )
    page = _PAGE.format(intro=_esc(intro), body=body, checks=_esc(json.dumps(checks, indent=1)))
    (out / "gallery.html").write_text(page, encoding="utf-8")
    return "gallery.html"


def _write_overlays(
    out: Path, items: list[_Item], imgs: list[np.ndarray], expl: dict[str, list[Explanation]]
) -> list[dict[str, str]]:
    """overlays/NNN_<stem>_<method>.png for every image and method (older ones are removed first);
    returns the relative paths."""
    for old in (out / "overlays").glob("[0-9][0-9][0-9]_*.png"):
        old.unlink()
    links: list[dict[str, str]] = []
    for k, (item, img) in enumerate(zip(items, imgs, strict=True)):
        links.append({})
        for m, ex in expl.items():
            e = ex[k]
            stem = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{k:03d}_{Path(item.name).stem}_{m.replace('+', 'p')}")
            p = e.prediction.probs[CLASSES.index(e.target_class)]
            overlay_png(
                img, e.heatmap, out / "overlays" / f"{stem}.png", title=f"{m}: {e.target_class} (p={p:.2f})"
            )
            links[k][m] = f"overlays/{stem}.png"
    return links


def _checks(
    predictor: Predictor,
    x: torch.Tensor,
    items: list[_Item],
    imgs: list[np.ndarray],
    expl: dict[str, list[Explanation]],
    classes: list[str],
    n_steps: int,
    seed: int,
) -> dict[str, Any]:
    """Faithfulness, shortcut energy and (with lesion masks) the pointing game for every method."""
    targets = [CLASSES.index(e.target_class) for e in next(iter(expl.values()))]
    saliency = {m: [e.input_heatmap for e in ex] for m, ex in expl.items()}
    res: dict[str, Any] = {
        "faithfulness": _faithfulness_prepared(predictor, x, saliency, targets, n_steps, seed),
        "shortcut_energy": {
            m: shortcut_energy([e.heatmap for e in ex], imgs, classes) for m, ex in expl.items()
        },
    }
    masks = {k: np.array(Image.open(it.mask).convert("L")) > 127 for k, it in enumerate(items) if it.mask}
    lesion = [k for k, m in masks.items() if m.any() and m.shape == imgs[k].shape]
    if lesion:
        res["pointing_game"] = {
            m: _pointing_scores(
                [ex[k].heatmap for k in lesion], [masks[k] for k in lesion], POINTING_TOLERANCE, seed=seed
            )
            for m, ex in expl.items()
        }
    return res


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
    """Explain a run's test split (or ``images``): overlays, gallery.html, faithfulness, shortcut energy
    and, where lesion masks exist, the pointing game. Results are written to OUT/explain.json; for the
    test split also under "explain" in RUN/eval/test/metrics.json (merged), and the report is refreshed.
    ``out_dir`` defaults to RUN/eval/test/explain. Returns the results."""
    t0 = time.time()
    paths = find_run(run_dir)
    methods = list(dict.fromkeys(methods))
    for m in methods:
        _method_class(m)
    tgt = _class_index(target)
    predictor = Predictor.from_run(paths.root)
    out = Path(out_dir) if out_dir is not None else paths.eval_dir("test") / "explain"
    items = [_Item(Path(p), Path(p).name) for p in images] if images is not None else _test_items(paths, data)
    if not items:
        raise DataError("no images to explain")
    preds = predictor.predict_paths([it.path for it in items], progress=progress)
    sel = _select(items, preds, max_images, seed)
    items, preds = [items[i] for i in sel], [preds[i] for i in sel]
    imgs = [read_image(it.path)[0] for it in items]
    x, geoms = _prepare_all(predictor, imgs)
    bar = tqdm(methods, desc="explain", unit="method", disable=not progress)
    expl = {m: _explain_prepared(predictor, x, geoms, m, [tgt] * len(imgs)) for m in bar}
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
        **_checks(predictor, x, items, imgs, expl, classes, n_steps, seed),
    }
    links = _write_overlays(out, items, imgs, expl)
    result["gallery"] = _gallery(out, list(zip(items, preds, links, strict=True)), result)
    result["seconds"] = round(time.time() - t0, 1)
    write_json(out / "explain.json", result)
    if images is None:
        metrics_path = paths.eval_dir("test") / "metrics.json"
        metrics = read_json(metrics_path) if metrics_path.is_file() else {}
        write_json(metrics_path, {**metrics, "explain": result})
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


def phantom_set(
    n_per_class: int, size: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Seeded phantoms: (float32 (size, size) [0, 1] images, int labels (N,), bool lesion masks)."""
    from lungct.phantoms import make_phantom

    rng = np.random.default_rng(seed)
    drawn = [
        (c, *make_phantom(kind, size, rng)) for _ in range(n_per_class) for c, kind in enumerate(CLASSES)
    ]
    return (
        [im.astype(np.float32) / 255.0 for _, im, _ in drawn],
        np.array([c for c, *_ in drawn]),
        [m for *_, m in drawn],
    )


def train_phantom_model(
    *,
    size: int = 128,
    n_train: int = 40,
    n_val: int = 10,
    epochs: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> Predictor:
    """small_cnn trained from scratch on seeded phantoms (counts per class, size in px).

    Phantom classes differ only by their lesion (none / small nodule / large spiculated mass) while
    the anatomy is random per image, so a model that learned the task has to look at the lesion.
    """
    from lungct.config import make_config
    from lungct.network import build_network
    from lungct.train import fit, set_determinism

    set_determinism(seed)
    pre = PreprocessConfig(size=size)

    def cache(n: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        imgs, labels, _ = phantom_set(n, size, s)
        return np.stack([np.round(preprocess(im, pre)[0] * 255).astype(np.uint8) for im in imgs]), labels

    net, _, _ = build_network("small_cnn", pretrained="none")
    cfg = make_config({"model": "small_cnn", "pretrained": "none", "image_size": size, "seed": seed})
    cfg = make_config(
        {"epochs": epochs, "patience": epochs, "batch_size": 16, "lr": 5e-3, "augment": False}, cfg
    )
    with tempfile.TemporaryDirectory() as tmp:
        best, last, hist = (Path(tmp) / n for n in ("best.pt", "last.pt", "history.csv"))
        fit(net, cfg, cache(n_train, seed), cache(n_val, seed + 1), best, last, hist, progress=progress)
        net.load_state_dict(load_checkpoint(best)["state_dict"])
    return Predictor(net, "small_cnn", pre)


def run_pointing_game_benchmark(
    *, n_test: int = 20, method: str = "gradcam", seed: int = 0, **train: Any
) -> dict[str, Any]:
    """Train small_cnn on phantoms (``train``: options of :func:`train_phantom_model`), then play the
    pointing game, explaining the true class, on ``n_test`` new phantoms per class.

    Returns hit rate vs seeded random maps, test accuracy and the time taken (s).
    """
    t0 = time.time()
    predictor = train_phantom_model(seed=seed, **train)
    imgs, labels, masks = phantom_set(n_test, predictor.pre.size, seed + 2)
    acc = float(np.mean([p.label for p in predictor.predict_images(imgs)] == labels))
    pg = pointing_game(predictor, imgs, masks, method, targets=[CLASSES[y] for y in labels], seed=seed)
    return {
        "model": "small_cnn",
        "size": predictor.pre.size,
        "test_accuracy": round(acc, 4),
        **pg,
        "seconds": round(time.time() - t0, 1),
    }
