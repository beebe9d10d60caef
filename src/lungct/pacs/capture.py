"""The Grad-CAM overlay of a suspicious slice as a DICOM Secondary Capture image (highdicom).

The picture is the slice in the lung window with the colour-mapped heatmap blended over it
(:func:`lungct.explain.cam.overlay`) and a caption burned into the top rows (BurnedInAnnotation YES):
the decision, p(malignant) against the threshold, the slice's place in the series, and
"decision support, not a diagnosis". Geometry: same rows/columns as the CT slice (an integer
upscale, with pixel spacing divided to match, for slices smaller than :data:`MIN_SIDE`), patient
orientation derived from the slice's ImageOrientationPatient; the source slice is referenced in
SourceImageSequence. Patient and study attributes are copied from the CT slice (same study).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lungct import __version__
from lungct.explain.cam import overlay

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

SC_SERIES_NUMBER = 9902
SC_DESCRIPTION = "lungct Grad-CAM (decision support, not a diagnosis)"
MIN_SIDE = 256
"""Smaller slices are upscaled by an integer factor so that the caption stays legible."""


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def captioned_overlay(img: np.ndarray, heat: np.ndarray, lines: list[str]) -> tuple[np.ndarray, int]:
    """uint8 RGB (H*f, W*f, 3) overlay with ``lines`` burned into the top-left, and the factor f."""
    rgb = overlay(img, heat)
    f = max(1, math.ceil(MIN_SIDE / max(img.shape)))
    pil = Image.fromarray(rgb, mode="RGB")
    if f > 1:
        pil = pil.resize((pil.width * f, pil.height * f), Image.Resampling.NEAREST)
    size = max(9, pil.width // 40)
    font, draw = _font(size), ImageDraw.Draw(pil)
    y = 2
    for line in lines:
        box = draw.textbbox((3, y), line, font=font)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        draw.text((3, y), line, fill=(255, 255, 255), font=font)
        y = box[3] + 3
    return np.asarray(pil, dtype=np.uint8).copy(), f


def _orientation(ds: Dataset) -> tuple[str, str]:
    """Patient orientation letters of the row and column directions (default axial: 'L', 'P')."""
    iop = [float(v) for v in getattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]

    def letter(v: list[float]) -> str:
        axis = int(np.argmax(np.abs(v)))
        return ("L", "P", "H")[axis] if v[axis] > 0 else ("R", "A", "F")[axis]

    return letter(iop[:3]), letter(iop[3:6])


def build_capture(
    source: Dataset,
    rgb: np.ndarray,
    factor: int,
    series_uid: str,
    sop_uid: str,
    instance_number: int,
) -> Dataset:
    """A Secondary Capture of ``rgb`` (uint8 (H, W, 3)) in the study of the CT slice ``source``."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    spacing = getattr(source, "PixelSpacing", None)
    pixel_spacing = (float(spacing[0]) / factor, float(spacing[1]) / factor) if spacing else None
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer="lungct",
        pixel_spacing=pixel_spacing,
        patient_orientation=_orientation(source),
        series_description=SC_DESCRIPTION,
        software_versions=__version__,
    )
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.DerivationDescription = (
        "Grad-CAM heatmap (lungct) blended over the lung-window slice; caption burned in"
    )
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    for keyword in ("FrameOfReferenceUID",):
        if keyword in source:
            setattr(sc, keyword, getattr(source, keyword))
    return sc
