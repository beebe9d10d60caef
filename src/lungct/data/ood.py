"""Out-of-distribution guard: is this upload plausibly an axial chest CT slice?

The model was trained on axial chest CT slices only; anything else (photographs, chest X-rays,
blank or constant images, noise, documents, other body parts) gets no diagnosis. The guard is a few
image statistics with fixed thresholds, checked in order; the first failing check is the reason.

For ordinary images (JPEG/PNG/...), the statistics are read off the body as
:mod:`lungct.data.body` defines it (the same body whose box the model's crop keeps): a grey copy
resized to 128 px, contrast-stretched and smoothed, its bright pixels, and their filled convex hull:

1. ``colour_fraction`` - share of pixels with visible colour in the upload as sent (CT is grey).
2. ``contrast`` - 1st..99th percentile spread relative to the 99th percentile (blank and constant
   images have none; relative, so that 12-bit data stored in 16-bit PNG/TIFF still counts).
3. ``border_contact`` - share of the image rim that is bright: an axial slice is surrounded by air,
   whereas a frontal chest X-ray, a photograph, noise or a document page runs off the image edges.
4. ``body_fraction`` - the convex hull of the bright parts (specks ignored), as a share of the image.
5. ``lung_fraction`` - "thick" dark regions inside that hull (>= 3 px from anything bright): the lungs.
   Chest X-ray lung fields are grey, not air-dark, and brain or text images have no such regions.
6. ``tissue_thickness`` - the thickest bright structure (px): text and line drawings are thin strokes.
7. ``lung_contrast`` - lung brightness between outside air (0) and body tissue (1).

The thresholds (:data:`THRESHOLDS`) were set from the measured distributions on phantoms, the
IQ-OTH/NCCD development subset and the generated/bundled non-CT sets of :mod:`lungct.data.oodsets`,
with the margins reported by ``benchmarks/bench_ood.py``.

DICOM uploads carry calibrated Hounsfield units and their own header, so they are checked by
Modality (must be CT), ImageType (no localiser/scout), orientation (axial) and HU content (some
lung-density and some soft-tissue pixels) instead of the geometric checks above, which would
reject a tightly cropped field of view.

It is a plausibility filter, not a guarantee: a CT slice of another body region that happens to
contain air-dark regions, or an unusual export of a chest CT, can pass or fail it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from lungct.data.body import WORK_SIDE, find_body, to_work_size

THRESHOLDS: dict[str, tuple[float, float]] = {
    "colour_fraction": (-1.0, 0.02),
    "contrast": (0.3, 2.0),
    "border_contact": (-1.0, 0.2),
    "body_fraction": (0.1, 0.8),
    "lung_fraction": (0.03, 0.9),
    "tissue_thickness": (4.0, 1e9),
    "lung_contrast": (-1.0, 0.45),
}
"""Accepted (low, high) interval per image statistic; outside it the image is flagged."""

REASONS: dict[str, str] = {
    "colour_fraction": "colour image (CT slices are greyscale)",
    "contrast": "blank or constant image",
    "body_fraction": "no body outline of plausible size",
    "border_contact": "body runs off the image edges (not an axial slice: X-ray, photo or document?)",
    "lung_fraction": "no dark lung fields inside the body",
    "tissue_thickness": "only thin bright strokes, no solid tissue (text or line drawing?)",
    "lung_contrast": "lung fields are not air-dark (a radiograph rather than a CT slice?)",
}

COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr"})
"""PIL modes that can carry colour; every other mode is grey (or refused by the decoder)."""

THICK_PX = 3.0
"""Lung fields are dark pixels at least this far (px at WORK_SIDE) from any bright pixel."""

HU_LUNG = (-950.0, -400.0)
HU_TISSUE = (-150.0, 400.0)
DICOM_MIN_FRACTION = {"lung": 0.03, "tissue": 0.05}


@dataclass(frozen=True)
class OODResult:
    """Guard verdict. ``checks`` holds the measured statistics (floats, for transparency)."""

    flagged: bool
    reason: str | None
    checks: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "flagged": self.flagged,
            "reason": self.reason,
            "checks": {k: round(float(v), 4) for k, v in self.checks.items()},
        }


def colour_fraction(data: bytes) -> float:
    """Share of pixels whose max-min RGB spread exceeds 8 % of full scale; 0.0 for grey images.

    ``data`` must already have passed :func:`lungct.imaging.decode_bytes` (size-checked).
    """
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in COLOUR_MODES:
            return 0.0
        im.draft("RGB", (WORK_SIDE * 2, WORK_SIDE * 2))  # JPEG: decode at reduced scale
        rgb = np.asarray(im.convert("RGB").reduce(max(1, max(im.size) // (WORK_SIDE * 2))), np.int16)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return float(np.mean(spread > 20))


def image_statistics(img: np.ndarray) -> dict[str, float]:
    """The intensity/shape statistics of one grey image float32 (H, W) in [0, 1] (see module doc)."""
    small = to_work_size(img)
    lo, hi = np.percentile(small, [1, 99])
    stats = {"contrast": float((hi - lo) / hi) if hi > 1e-4 else 0.0}
    found = find_body(small)
    if stats["contrast"] < THRESHOLDS["contrast"][0] or found is None:
        return stats
    x, bright, body = found.norm, found.bright, found.hull
    rim = np.ones_like(bright)
    rim[1:-1, 1:-1] = False
    stats["border_contact"] = float(bright[rim].mean())
    stats["body_fraction"] = float(body.mean())
    if not body.any() or body.all():
        return stats
    thick_dark = body & (ndimage.distance_transform_edt(~bright) >= THICK_PX)
    stats["lung_fraction"] = float(thick_dark.sum() / body.sum())
    stats["tissue_thickness"] = float(ndimage.distance_transform_edt(bright).max())
    if thick_dark.any():
        air, tissue = float(np.median(x[~body])), float(np.median(x[bright & body]))
        stats["lung_contrast"] = (float(np.median(x[thick_dark])) - air) / max(tissue - air, 1e-3)
    return stats


def _verdict(checks: dict[str, float]) -> OODResult:
    """First statistic missing or outside its interval (in THRESHOLDS order) -> flagged with its reason."""
    for key, (low, high) in THRESHOLDS.items():
        if key not in checks or not low <= checks[key] <= high:
            return OODResult(True, REASONS[key], checks)
    return OODResult(False, None, checks)


def check_image(data: bytes, img: np.ndarray) -> OODResult:
    """Guard an ordinary (non-DICOM) upload: raw bytes for colour, decoded grey (H, W) [0, 1] image."""
    checks = {"colour_fraction": colour_fraction(data)}
    if checks["colour_fraction"] > THRESHOLDS["colour_fraction"][1]:
        return OODResult(True, REASONS["colour_fraction"], checks)
    return _verdict({**checks, **image_statistics(img)})


def check_dicom(
    hu: np.ndarray, modality: str | None, axial: bool | None, localizer: bool, colour: bool = False
) -> OODResult:
    """Guard a DICOM slice from its HU image float32 (H, W) and a few header facts."""
    checks = {
        "lung_density_fraction": float(np.mean((hu >= HU_LUNG[0]) & (hu <= HU_LUNG[1]))),
        "soft_tissue_fraction": float(np.mean((hu >= HU_TISSUE[0]) & (hu <= HU_TISSUE[1]))),
    }
    if colour:
        return OODResult(True, REASONS["colour_fraction"], checks)
    if (modality or "").upper() != "CT":
        return OODResult(True, f"DICOM modality {modality or 'missing'} is not CT", checks)
    if localizer:
        return OODResult(True, "CT localiser/scout image, not an axial slice", checks)
    if axial is False:
        return OODResult(True, "not an axial slice (sagittal/coronal/oblique orientation)", checks)
    if checks["lung_density_fraction"] < DICOM_MIN_FRACTION["lung"]:
        return OODResult(
            True, "no lung-density (-950..-400 HU) tissue: not a chest slice at lung level", checks
        )
    if checks["soft_tissue_fraction"] < DICOM_MIN_FRACTION["tissue"]:
        return OODResult(True, "almost no soft tissue (-150..400 HU): not a body CT slice", checks)
    return OODResult(False, None, checks)
