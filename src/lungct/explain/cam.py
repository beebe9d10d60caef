"""Explanations: class-activation heatmaps and their rendering as overlays.

Heatmaps come from ``pytorch_grad_cam`` (Grad-CAM, Grad-CAM++, EigenCAM) on the model spec's target
layer, are computed on the model input (S, S) and mapped back onto the ORIGINAL image geometry (undoing
body crop, square padding and resizing), so they line up with the slice the user supplied.

How far the heatmaps can be trusted (faithfulness, pointing game, shortcut energy, phantom benchmark)
is measured in :mod:`lungct.explain_checks`; a run's explanation report (overlays, gallery, checks) is
:func:`lungct.explain_run.run_explain`. Both are also importable from this module.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction
from torch import nn

from lungct import CLASSES
from lungct.data.transforms import Geometry, to_original
from lungct.errors import LungctError, ModelError
from lungct.model.network import cam_layer
from lungct.model.predictor import Prediction, Predictor
from lungct.model.registry import get_spec, resolve_layer


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


def method_class(method: str) -> type:
    """The ``pytorch_grad_cam`` class of ``method`` (LungctError for an unknown name)."""
    try:
        return METHODS[method]
    except KeyError:
        raise LungctError(
            f"unknown explanation method {method!r}; choose one of: {', '.join(METHODS)}"
        ) from None


def class_index(target: str | None) -> int | None:
    """Index of class ``target`` in CLASSES (None stays None; LungctError for an unknown class)."""
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


def prepare_all(predictor: Predictor, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[Geometry]]:
    """Model inputs float32 (N, 1, S, S) and each image's geometry, for (H, W) [0, 1] images."""
    prepared = [predictor.prepare(np.asarray(im, dtype=np.float32)) for im in images]
    if not prepared:
        return torch.zeros(0, 1, predictor.pre.size, predictor.pre.size), []
    return torch.cat([p[0] for p in prepared]), [p[1] for p in prepared]


def explain_prepared(
    predictor: Predictor,
    x: torch.Tensor,
    geoms: Sequence[Geometry],
    method: str,
    targets: Sequence[int | None],
    layer: str | None = None,
    bs: int = 16,
) -> list[Explanation]:
    """Explain prepared inputs x (N, 1, S, S); a None target means the predicted class."""
    cam_cls, module = method_class(method), target_layer(predictor, layer)
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
            out.append(Explanation(heat, method, CLASSES[cls], Prediction(pr, predictor.rule, g), m))
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
    method_class(method)
    if target is None or isinstance(target, str):
        targets = [class_index(target)] * len(images)
    else:
        targets = [class_index(t) for t in target]
        if len(targets) != len(images):
            raise LungctError(f"got {len(targets)} targets for {len(images)} images")
    x, geoms = prepare_all(predictor, images)
    return explain_prepared(predictor, x, geoms, method, targets, layer, batch_size)


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


def check_pair(img: np.ndarray, heatmap: np.ndarray) -> None:
    """LungctError unless image and heatmap are (H, W) arrays of one shape."""
    if img.ndim != 2 or img.shape != heatmap.shape:
        raise LungctError(f"image {img.shape} and heatmap {heatmap.shape} must be the same (H, W) shape")


def overlay(img: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend the colour-mapped heatmap over the grey image: uint8 (H, W, 3)."""
    check_pair(img, heatmap)
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
