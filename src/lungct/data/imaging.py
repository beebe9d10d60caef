"""Decoding image files (JPEG, PNG 8/16-bit, BMP, TIFF, DICOM) into float32 arrays in [0, 1].

Everything that turns bytes into pixels lives here, so the CLI, training and the web service read
images the same way. Types are sniffed from content, never from the file extension.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lungct.errors import ImageReadError

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
)
"""File suffixes scanned in data folders (content is still sniffed when decoding)."""

MAX_PIXELS: int = 40_000_000
"""Decompression-bomb guard: images with more pixels than this are refused before decoding."""

PIL_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "BMP", "TIFF", "MPO"})


@dataclass(frozen=True)
class Window:
    """A CT intensity window in Hounsfield units: level (centre) and width."""

    level: float = -600.0
    width: float = 1500.0

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ImageReadError(f"window width must be > 0 HU, got {self.width}")

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """Map HU (any shape) linearly to [0, 1]: level - width/2 -> 0, level + width/2 -> 1."""
        lo = self.level - self.width / 2.0
        return np.clip((hu.astype(np.float32) - lo) / self.width, 0.0, 1.0).astype(np.float32)


LUNG_WINDOW = Window(-600.0, 1500.0)
MEDIASTINUM_WINDOW = Window(50.0, 350.0)
BONE_WINDOW = Window(600.0, 1200.0)


@dataclass(frozen=True)
class ImageInfo:
    """What was decoded: format ('JPEG', 'PNG', 'DICOM', ...), size in px, PIL mode, bit depth."""

    format: str
    width: int
    height: int
    mode: str
    bit_depth: int


def is_dicom_bytes(head: bytes) -> bool:
    """True when the bytes carry the DICOM Part-10 preamble marker ``DICM`` at offset 128."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def read_image(path: str | Path, window: Window = LUNG_WINDOW) -> tuple[np.ndarray, ImageInfo]:
    """Read one image file as float32 (H, W) in [0, 1].

    Raises ImageReadError for missing, empty, truncated, oversized or non-image files.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"cannot read {p.name}: {exc.strerror or exc}") from exc
    return decode_bytes(data, name=p.name, window=window)


def decode_bytes(
    data: bytes, name: str = "upload", window: Window = LUNG_WINDOW
) -> tuple[np.ndarray, ImageInfo]:
    """Decode an in-memory file (type by content) to float32 (H, W) in [0, 1]."""
    if not data:
        raise ImageReadError(f"{name}: empty file")
    img, info = _decode_dicom(data, name, window) if is_dicom_bytes(data[:132]) else _decode_pil(data, name)
    if not np.isfinite(img).all():
        raise ImageReadError(f"{name}: the image has NaN or infinite pixel values")
    return img, info


def _decode_pil(data: bytes, name: str) -> tuple[np.ndarray, ImageInfo]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format or "?"
            if fmt not in PIL_FORMATS:
                raise ImageReadError(f"{name}: unsupported image format {fmt}")
            if im.width * im.height > MAX_PIXELS:
                raise ImageReadError(f"{name}: {im.width}x{im.height} px exceeds the {MAX_PIXELS} px limit")
            im.load()
    except ImageReadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{name}: not a readable image ({type(exc).__name__})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{name}: corrupt or truncated image ({exc})") from exc
    info = ImageInfo(fmt, im.width, im.height, im.mode, _bit_depth(im))
    return _pil_to_unit(im), info


def _bit_depth(im: Image.Image) -> int:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return 16
    if im.mode in ("I", "F"):
        return 32
    return 8


def _pil_to_unit(im: Image.Image) -> np.ndarray:
    """PIL image -> float32 (H, W) in [0, 1]. Colour is reduced to luminance."""
    if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA", "1"):
        im = im.convert("L")
    arr = np.asarray(im)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.dtype(">u2"), np.dtype("<u2")) or im.mode.startswith("I;16"):
        return arr.astype(np.float32) / 65535.0
    arr = arr.astype(np.float32)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ImageReadError("the image has NaN or infinite pixel values")
    if hi <= 1.0 and lo >= 0.0:
        return arr
    if hi <= 65535 and lo >= 0:
        return arr / 65535.0
    return (arr - lo) / max(hi - lo, 1e-6)


def _decode_dicom(data: bytes, name: str, window: Window) -> tuple[np.ndarray, ImageInfo]:
    hu, ds = dicom_to_hu(data, name)
    info = ImageInfo("DICOM", int(hu.shape[1]), int(hu.shape[0]), "HU", int(getattr(ds, "BitsStored", 16)))
    return window.apply(hu), info


def _dicom_number(ds: Any, keyword: str, default: float, name: str) -> float:
    """A numeric DICOM attribute as float; ImageReadError naming the attribute (never its value)."""
    value = getattr(ds, keyword, None)
    if value in (None, ""):
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ImageReadError(f"{name}: malformed DICOM attribute {keyword} (not a number)") from None
    if not np.isfinite(out):
        raise ImageReadError(f"{name}: malformed DICOM attribute {keyword} (not finite)")
    return out


DEFLATED = "1.2.840.10008.1.2.1.99"
"""Deflated Explicit VR Little Endian: the whole data set is zlib-compressed."""


def _check_dicom_size(data: bytes, name: str) -> None:
    """Refuse DICOM data that would inflate or decode past the limits, before pydicom inflates anything.

    A deflated data set is test-inflated with a bounded zlib stream (at most :data:`MAX_DICOM_BYTES`).
    """
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble

    fp = io.BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except Exception as exc:  # pydicom raises many types for a broken meta group
        raise ImageReadError(f"{name}: unreadable DICOM file meta ({type(exc).__name__})") from None
    if str(getattr(meta, "TransferSyntaxUID", "")) == DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflater.decompress(data[fp.tell() :], MAX_DICOM_BYTES)
        except zlib.error:
            raise ImageReadError(f"{name}: corrupt deflated DICOM data") from None
        if inflater.unconsumed_tail:
            raise ImageReadError(
                f"{name}: deflated DICOM data inflates past the {MAX_DICOM_BYTES // 2**20} MiB limit"
            )


MAX_DICOM_BYTES = 64 * 2**20
"""Largest inflated DICOM data set accepted (bytes)."""


def dicom_to_hu(data: bytes, name: str = "upload") -> tuple[np.ndarray, object]:
    """DICOM bytes -> (HU float32 (H, W), dataset). HU = stored * RescaleSlope + RescaleIntercept.

    Sizes are checked before anything is inflated or decoded (see :func:`_check_dicom_size`): rows x
    columns x frames x samples must stay within :data:`MAX_PIXELS`. Errors name the file and the
    attribute, never a tag value.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    _check_dicom_size(data, name)
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = max(1, int(_dicom_number(ds, "NumberOfFrames", 1, name)))
        samples = max(1, int(_dicom_number(ds, "SamplesPerPixel", 1, name)))
        if rows <= 0 or cols <= 0 or rows * cols * frames * samples > MAX_PIXELS:
            raise ImageReadError(
                f"{name}: {cols}x{rows} px x {frames} frame(s) x {samples} sample(s) exceeds the "
                f"{MAX_PIXELS} px limit"
            )
        arr = ds.pixel_array
    except ImageReadError:
        raise
    except (InvalidDicomError, AttributeError, ValueError, TypeError, OSError, RuntimeError, KeyError) as exc:
        raise ImageReadError(f"{name}: unreadable DICOM ({type(exc).__name__})") from None
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        arr = arr[arr.shape[0] // 2]  # multi-frame: take the middle frame
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1)
    slope = _dicom_number(ds, "RescaleSlope", 1.0, name) or 1.0
    intercept = _dicom_number(ds, "RescaleIntercept", 0.0, name)
    hu = arr.astype(np.float32) * slope + intercept
    if not np.isfinite(hu).all():
        raise ImageReadError(f"{name}: the DICOM image has NaN or infinite pixel values")
    return hu, ds
