"""The one input guard: bytes or a file -> a decoded, checked slice, for the CLI, evaluation and web.

Every input goes through :func:`decode_slice`: its type is sniffed by content, it is decoded within the
size limits of :mod:`lungct.data.imaging` (DICOM: before inflating or decoding pixels), non-finite
pixels are refused, and the out-of-distribution guard (:mod:`lungct.data.ood`) says whether it is
plausibly an axial chest CT slice. A flagged slice gets no diagnosis anywhere in lungct.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungct.data import dicom, ood
from lungct.data.imaging import LUNG_WINDOW, Window, decode_bytes, is_dicom_bytes
from lungct.errors import ImageReadError

MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
)
ACCEPTED = "PNG, JPEG, BMP, TIFF or DICOM (Part 10) slices, or a zip of them"


class UnsupportedType(ImageReadError):
    """The bytes are not any accepted file type (HTTP 415)."""


def sniff(data: bytes) -> str:
    """File type by content: 'png', 'jpeg', 'bmp', 'tiff', 'dicom' or 'zip'; UnsupportedType otherwise."""
    if not data:
        raise ImageReadError("empty file")
    if is_dicom_bytes(data[:132]):
        return "dicom"
    for magic, kind in MAGIC:
        if data.startswith(magic):
            return kind
    raise UnsupportedType(f"unsupported file type: expected {ACCEPTED}")


@dataclass
class Slice:
    """One decoded input. ``image``: float32 (H, W) in [0, 1], all finite; ``guard``: the OOD verdict;
    ``dicom``: header facts (None for ordinary images); ``source``: a label (file name or position)."""

    image: np.ndarray
    format: str
    guard: ood.OODResult
    dicom: dicom.DicomSlice | None = None
    source: str = ""


def decode_slice(data: bytes, label: str = "upload", window: Window = LUNG_WINDOW) -> Slice:
    """Bytes -> checked :class:`Slice`. Raises UnsupportedType (not an image), ImageReadError (unreadable,
    too large, non-finite pixels, malformed DICOM)."""
    try:
        kind = sniff(data)
    except ImageReadError as exc:
        raise type(exc)(f"{label}: {exc}") from None
    if kind == "zip":
        raise UnsupportedType(
            f"{label}: a zip archive, not one slice; send it as a study (POST /api/v1/studies)"
        )
    if kind == "dicom":
        ds = dicom.read_slice(data, label, window)
        guard = ood.check_dicom(ds.hu, ds.modality, ds.axial, ds.localizer, ds.colour)
        return Slice(ds.image, "DICOM", guard, ds, label)
    img, info = decode_bytes(data, label)
    if img.ndim != 2:
        raise ImageReadError(f"{label}: expected a single 2-D image, got shape {img.shape}")
    return Slice(img, info.format, ood.check_image(data, img), None, label)


def read_slice_file(path: str | Path, window: Window = LUNG_WINDOW) -> Slice:
    """A file -> checked :class:`Slice` (see :func:`decode_slice`)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"cannot read {p.name}: {exc.strerror or exc}") from None
    return decode_slice(data, str(p), window)
