"""Decoding: formats, bit depths, DICOM HU windowing, and bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungct.data.imaging import LUNG_WINDOW, Window, decode_bytes, read_image
from lungct.errors import ImageReadError


def _png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_8bit_formats_decode_to_unit_range(fmt):
    arr = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    img, info = decode_bytes(_png_bytes(arr, fmt=fmt))
    assert img.shape == (16, 64) and img.dtype == np.float32
    assert info.format == fmt and info.bit_depth == 8
    assert img.min() >= 0 and img.max() <= 1
    assert abs(float(img[0, -1]) - 252 / 255) < 0.03  # JPEG is lossy


def test_16bit_png_uses_full_range():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img, info = decode_bytes(_png_bytes(arr))
    assert info.bit_depth == 16
    np.testing.assert_allclose(img[0], [0.0, 32768 / 65535, 1.0], atol=1e-4)


def test_colour_is_reduced_to_one_channel():
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[..., 1] = 200
    img, _ = decode_bytes(_png_bytes(arr))
    assert img.shape == (8, 8)


def test_type_is_sniffed_from_content_not_extension(tmp_path):
    p = tmp_path / "slice.dcm"
    p.write_bytes(_png_bytes(np.full((4, 4), 128, np.uint8)))
    img, info = read_image(p)
    assert info.format == "PNG" and img.shape == (4, 4)


def test_dicom_hu_windowing_matches_rescale_and_window():
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    img, info = read_image(path)
    assert info.format == "DICOM" and img.shape == hu.shape
    expected = np.clip((hu - (LUNG_WINDOW.level - LUNG_WINDOW.width / 2)) / LUNG_WINDOW.width, 0, 1)
    np.testing.assert_allclose(img, expected, atol=1e-6)
    # A narrow soft-tissue window saturates more pixels than the wide lung window.
    data = Path(path).read_bytes()
    narrow, _ = decode_bytes(data, "ct", Window(40, 80))
    assert narrow.shape == hu.shape
    assert (narrow == 1).mean() > (img == 1).mean()


def test_window_rejects_non_positive_width():
    with pytest.raises(ImageReadError):
        Window(0, 0)


@pytest.mark.parametrize(
    "payload",
    [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, b"\xff\xd8\xff\xe0" + b"\x00" * 10],
)
def test_bad_bytes_raise_image_read_error(payload):
    with pytest.raises(ImageReadError):
        decode_bytes(payload, "bad.jpg")


def test_truncated_jpeg_raises(tmp_path):
    data = _png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8), fmt="JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        read_image(p)


def test_decompression_bomb_header_is_refused():
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    with pytest.raises(ImageReadError, match=r"limit|not a readable"):
        decode_bytes(data)


def test_missing_file_raises(tmp_path):
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "nope.png")
