"""The workstation's core, free of HTTP: decode + guard uploads, predict, explain, aggregate studies.

One :class:`Workstation` wraps one loaded :class:`~lungct.predictor.Predictor`. Decoding, the
out-of-distribution guard and PNG encoding run concurrently; model inference and Grad-CAM (whose
hooks live on the shared network) run one request at a time under a lock.
"""

from __future__ import annotations

import base64
import functools
import io
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image
from scipy import ndimage

from lungct import CLASSES
from lungct.data import ood
from lungct.data.slices import Slice
from lungct.errors import LungctError
from lungct.explain.cam import CMAP, explain_batch, target_layer
from lungct.model.decision import MALIGNANT, DecisionRule, benign_share
from lungct.model.predictor import Prediction, Predictor
from lungct.serve.uploads import TooLarge


class Busy(LungctError):
    """The server holds its maximum of decoded pixels for other requests (HTTP 503, retry later)."""


class NotFound(LungctError):
    """An unknown or expired study, or a slice number outside it (HTTP 404)."""


class Cancelled(LungctError):
    """The client cancelled the analysis (HTTP 409)."""


class PixelBudget:
    """Bounds decoded pixels: per request (413 beyond it) and held by all requests at once (503).

    A request takes pixels as it decodes slices and gives them all back when it ends, so memory for
    decoded images stays below ``in_flight`` pixels x 4 bytes (float32) plus one image being decoded.
    """

    def __init__(self, per_request: int, in_flight: int) -> None:
        self.per_request, self.in_flight = int(per_request), int(in_flight)
        self.used = 0
        self._lock = threading.Lock()

    @contextmanager
    def request(self) -> Iterator[Callable[[int], None]]:
        """Context for one request; yields ``take(n_pixels)`` (raises TooLarge or Busy)."""
        held = 0

        def take(n: int) -> None:
            nonlocal held
            if held + n > self.per_request:
                raise TooLarge(
                    f"decoded images exceed the {self.per_request / 1e6:.0f} megapixel limit of one request"
                )
            with self._lock:
                if self.used + n > self.in_flight:
                    raise Busy("the server is busy with other large requests; retry in a moment")
                self.used += n
            held += n

        try:
            yield take
        finally:
            with self._lock:
                self.used -= held


DISPLAY_MAX_SIDE = 1024
"""Images returned for display are downsampled to at most this many px on the longer side."""

OVERLAY_ALPHA = 0.4


@dataclass
class SliceOutcome:
    """A slice after inference: prediction (None when flagged) and optional explanation images."""

    slice: Slice
    prediction: Prediction | None
    explanation: dict[str, str] | None = None


def png_b64(arr: np.ndarray, mode: str | None = None) -> str:
    """uint8 array -> base64 PNG text (fast compression: these are transient display images)."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@functools.cache
def _colour_table() -> np.ndarray:
    """uint8 (256, 3): the explanation colormap, entry k for heat in [k/256, (k+1)/256)."""
    return np.round(colormaps[CMAP](np.arange(256) / 255.0)[:, :3] * 255).astype(np.uint8)


def _display_size(img: np.ndarray) -> tuple[int, int] | None:
    h, w = img.shape
    if max(h, w) <= DISPLAY_MAX_SIDE:
        return None
    s = DISPLAY_MAX_SIDE / max(h, w)
    return max(1, round(w * s)), max(1, round(h * s))


def explanation_images(img: np.ndarray, heat: np.ndarray) -> dict[str, str]:
    """Base64 PNGs of the grey slice, the RGBA heatmap and the blend, all the same size.

    Same pictures as :func:`lungct.explain.heatmap_png` (colour-mapped heat, alpha = heat) and
    :func:`lungct.explain.overlay` (``OVERLAY_ALPHA`` blend), computed with a uint8 colour table
    because they are made on every request.
    """
    size = _display_size(img)
    if size is not None:
        img = np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX))
        heat = np.asarray(
            Image.fromarray(heat.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX)
        )
    grey = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    h = feather(np.clip(heat, 0, 1))
    colour = _colour_table()[np.minimum((h * 256).astype(np.intp), 255)]
    rgba = np.dstack([colour, np.round(h * 255).astype(np.uint8)])
    blend = (1 - OVERLAY_ALPHA) * grey[..., None] + OVERLAY_ALPHA * colour.astype(np.float32)
    return {
        "image_png": png_b64(grey, "L"),
        "heatmap_png": png_b64(rgba, "RGBA"),
        "overlay_png": png_b64(np.round(blend).astype(np.uint8), "RGB"),
    }


FEATHER = 0.012
"""Gaussian sigma, as a share of the longer image side, that softens the heat map's edges (the CAM
is computed on the body crop, so it stops at the crop's border)."""


def feather(heat: np.ndarray) -> np.ndarray:
    """float32 (H, W) heat in [0, 1] with smooth edges (Gaussian blur of ``FEATHER`` x the longer side)."""
    sigma = FEATHER * max(heat.shape)
    if sigma < 0.5:
        return heat
    return np.clip(ndimage.gaussian_filter(heat.astype(np.float32), sigma, mode="constant"), 0, 1)


def limit_backward(predictor: Predictor) -> bool:
    """Freeze every parameter outside the CAM target layer; True when applied.

    Grad-CAM needs gradients from the output back to the target layer's activations only. With
    the earlier parameters frozen, the backward pass stops at the target layer instead of running
    through the whole network (about 3x less work for efficientnet_lite0); the heatmaps are
    identical. Only for a predictor that serves, never one that trains. Layers without parameters
    (e.g. a bare activation) are left unchanged, since their output would then carry no gradient.
    """
    own = list(target_layer(predictor).parameters())
    if not own:
        return False
    for p in predictor.net.parameters():
        p.requires_grad_(False)
    for p in own:
        p.requires_grad_(True)
    return True


class Workstation:
    """A loaded predictor plus the lock that serialises inference and explanation.

    Construction calls :func:`limit_backward` on the predictor (serving only).
    """

    def __init__(self, predictor: Predictor, explain_method: str = "gradcam") -> None:
        self.predictor = predictor
        self.explain_method = explain_method
        self._lock = threading.Lock()
        limit_backward(predictor)

    def _explain(self, images: Sequence[np.ndarray], targets: Sequence[str | None]) -> list[Any]:
        """Explanations for images (caller holds the lock); target None = the decided class."""
        ex = explain_batch(self.predictor, images, self.explain_method, list(targets))
        redo = [i for i, e in enumerate(ex) if targets[i] is None and e.prediction.decision != e.target_class]
        if redo:  # explain the decision (e.g. 'malignant' above threshold but not the arg-max)
            again = explain_batch(
                self.predictor,
                [images[i] for i in redo],
                self.explain_method,
                [ex[i].prediction.decision for i in redo],
            )
            for i, e in zip(redo, again, strict=True):
                ex[i] = e
        return ex

    def predict(self, s: Slice, explain: bool = True) -> SliceOutcome:
        """Predict (and explain) one slice; flagged slices are not run through the model."""
        if s.guard.flagged:
            return SliceOutcome(s, None)
        with self._lock:
            if not explain:
                return SliceOutcome(s, self.predictor.predict_images([s.image])[0])
            ex = self._explain([s.image], [None])[0]
        images = explanation_images(s.image, ex.heatmap)
        return SliceOutcome(
            s,
            ex.prediction,
            {"method": ex.method, "target_class": ex.target_class, "colormap": CMAP, **images},
        )

    def explain_one(self, image: np.ndarray, target: str | None) -> dict[str, str]:
        """Explanation images for one float32 (H, W) [0, 1] slice and class ``target`` (None: decided)."""
        with self._lock:
            ex = self._explain([image], [target])[0]
        return {
            "method": ex.method,
            "target_class": ex.target_class,
            "colormap": CMAP,
            **explanation_images(image, ex.heatmap),
        }

    def predict_many(
        self,
        slices: Sequence[Slice],
        explain_top: int = 3,
        progress: Callable[[int, int], None] | None = None,
        batch: int = 16,
    ) -> list[SliceOutcome]:
        """Predict every unflagged slice; explain the ``explain_top`` with the highest p(malignant).

        ``progress(done, total)`` is called after each batch of ``batch`` slices (it may raise
        :class:`Cancelled` to stop).
        """
        ok = [i for i, s in enumerate(slices) if not s.guard.flagged]
        out = [SliceOutcome(s, None) for s in slices]
        if not ok:
            return out
        for start in range(0, len(ok), batch):
            part = ok[start : start + batch]
            with self._lock:
                preds = self.predictor.predict_images([slices[i].image for i in part])
            for i, p in zip(part, preds, strict=True):
                out[i].prediction = p
            if progress is not None:
                progress(start + len(part), len(ok))
        top = sorted(ok, key=lambda i: -out[i].prediction.malignant_probability)[: max(explain_top, 0)]
        if top:
            with self._lock:
                ex = self._explain([slices[i].image for i in top], [out[i].prediction.decision for i in top])
            for i, e in zip(top, ex, strict=True):
                out[i].explanation = {
                    "method": e.method,
                    "target_class": e.target_class,
                    "colormap": CMAP,
                    **explanation_images(slices[i].image, e.heatmap),
                }
        return out


def decision_text(pred: Prediction | None, guard: ood.OODResult) -> str:
    """'malignant: p(malignant) 0.812 >= threshold 0.420' / 'not assessed: <reason>' (3 decimals)."""
    if pred is None:
        return f"not assessed: {guard.reason or 'input outside what the model was trained on'}"
    p, t = pred.malignant_probability, pred.threshold
    text = f"{pred.decision}: p(malignant) {p:.3f} {'≥' if p >= t else '<'} threshold {t:.3f}"
    if pred.decision != "malignant":
        share, tb = float(benign_share(pred.probs)), pred.rule.benign_threshold
        text += f"; benign share {share:.3f} {'≥' if share >= tb else '<'} benign threshold {tb:.3f}"
    return text


def case_summary(outcomes: Sequence[SliceOutcome], rule: DecisionRule) -> dict[str, Any]:
    """Case-level decision over assessed slices with the run's rule (see ``schemas.CASE_RULE``).

    Slice numbers in the result are 1-based positions in ``outcomes``.
    """
    threshold = rule.malignant_threshold
    assessed = [(k, o.prediction) for k, o in enumerate(outcomes, start=1) if o.prediction is not None]
    base = {
        "aggregation": rule.case_aggregation,
        "threshold": threshold,
        "benign_threshold": rule.benign_threshold,
        "n_slices": len(outcomes),
        "n_assessed": len(assessed),
        "n_not_assessed": len(outcomes) - len(assessed),
    }
    if not assessed:
        return {
            **base,
            "decision": None,
            "decision_text": "not assessed: no slice passed the input guard",
            "mean_malignant_probability": None,
            "max_malignant_probability": None,
            "case_probabilities": None,
            "most_suspicious_slice": None,
            "n_above_threshold": 0,
        }
    probs = np.stack([p.probs for _, p in assessed])
    pm = probs[:, MALIGNANT]
    case_probs = rule.case_probs(probs)
    k_max = assessed[int(np.argmax(pm))][0]
    n_above = int(np.sum(pm >= threshold))
    decision = rule.decide_one(case_probs)
    how = rule.case_aggregation
    cmp = "≥" if case_probs[MALIGNANT] >= threshold else "<"
    text = (
        f"{decision}: case p(malignant) {case_probs[MALIGNANT]:.3f} ({how}) {cmp} threshold {threshold:.3f}"
    )
    if decision != "malignant" and n_above:
        text += f"; {n_above} slice(s) reach the threshold on their own (max {pm.max():.3f}): review them"
    return {
        **base,
        "decision": decision,
        "decision_text": text,
        "mean_malignant_probability": round(float(pm.mean()), 6),
        "max_malignant_probability": round(float(pm.max()), 6),
        "case_probabilities": {c: round(float(v), 6) for c, v in zip(CLASSES, case_probs, strict=True)},
        "most_suspicious_slice": k_max,
        "n_above_threshold": n_above,
    }


class ProgressBoard:
    """Progress of running analyses, keyed by a client-chosen id; a client may cancel its own.

    Holds at most ``max_entries`` entries (oldest dropped); entries carry no identifiers.
    """

    def __init__(self, max_entries: int = 64) -> None:
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def update(self, key: str | None, stage: str, done: int = 0, total: int = 0) -> None:
        """Record progress; raises :class:`Cancelled` when the client asked to stop."""
        if not key:
            return
        with self._lock:
            item = self._items.setdefault(key, {"cancelled": False})
            self._items.move_to_end(key)
            item.update(stage=stage, done=done, total=total, updated=time.time())
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
            if item["cancelled"]:
                raise Cancelled("analysis cancelled")

    def get(self, key: str) -> dict[str, Any]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return {"stage": "unknown", "done": 0, "total": 0, "cancelled": False}
            return {k: item.get(k) for k in ("stage", "done", "total", "cancelled")}

    def cancel(self, key: str) -> None:
        with self._lock:
            item = self._items.setdefault(key, {"stage": "cancelled", "done": 0, "total": 0})
            item["cancelled"] = True
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)


@dataclass
class StoredStudy:
    """A study kept for viewing: per-slice images for display and Grad-CAM, and its response.

    ``images``: float16 (H, W) in [0, 1] as the model saw them; ``hu``: int16 Hounsfield units for
    DICOM slices (None otherwise); ``targets``: the decided class per slice (None: not assessed).
    """

    images: list[np.ndarray]
    hu: list[np.ndarray | None]
    targets: list[str | None]
    response: dict[str, Any]
    explanations: dict[int, dict[str, str]]

    @property
    def pixels(self) -> int:
        return sum(im.size for im in self.images)


class StudyStore:
    """Recent studies in memory (never on disk), so any slice can be viewed and explained later.

    Bounded by ``max_pixels`` decoded pixels (about 4 bytes each) and ``max_studies``; the oldest
    study is dropped first. Ids are random and unguessable.
    """

    def __init__(self, max_pixels: int = 80_000_000, max_studies: int = 32) -> None:
        self.max_pixels, self.max_studies = int(max_pixels), int(max_studies)
        self._items: OrderedDict[str, StoredStudy] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, slices: Sequence[Slice], outcomes: Sequence[SliceOutcome]) -> tuple[str, StoredStudy]:
        """Keep a study (slices in display order); returns its new id and the stored record."""
        study = StoredStudy(
            images=[s.image.astype(np.float16) for s in slices],
            hu=[
                None if s.dicom is None else np.clip(np.round(s.dicom.hu), -32768, 32767).astype(np.int16)
                for s in slices
            ],
            targets=[o.prediction.decision if o.prediction is not None else None for o in outcomes],
            response={},
            explanations={},
        )
        key = secrets.token_urlsafe(12)
        with self._lock:
            self._items[key] = study
            while len(self._items) > 1 and (
                len(self._items) > self.max_studies
                or sum(s.pixels for s in self._items.values()) > self.max_pixels
            ):
                self._items.popitem(last=False)
        return key, study

    def get(self, key: str) -> StoredStudy:
        with self._lock:
            study = self._items.get(key)
            if study is None:
                raise NotFound("unknown or expired study (only recent studies are kept); upload it again")
            self._items.move_to_end(key)
            return study

    def slice_index(self, study: StoredStudy, number: int) -> int:
        """0-based index of 1-based slice ``number``; NotFound outside the study."""
        if not 1 <= number <= len(study.images):
            raise NotFound(f"slice {number} is not in this study (1..{len(study.images)})")
        return number - 1
