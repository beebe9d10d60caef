"""Property-based tests of decoding and preprocessing: any size, dtype, value range, NaN/inf or channel
count gives a valid tensor of the right shape or a clear ImageReadError/ConfigError - nothing else."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from lungct.data.body import body_bbox, body_mask
from lungct.data.imaging import decode_bytes
from lungct.data.slices import decode_slice
from lungct.data.transforms import PreprocessConfig, preprocess
from lungct.errors import ConfigError, ImageReadError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.tuples(st.integers(1, 96), st.integers(1, 96))
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def encoded_images(draw) -> bytes:
    """PNG/TIFF/BMP/JPEG bytes of random size, mode and content (float TIFFs may hold NaN/inf)."""
    h, w = draw(shapes)
    kind = draw(st.sampled_from(["L", "RGB", "RGBA", "I;16", "F", "1"]))
    if kind == "F":
        arr = draw(arrays(np.float32, (h, w), elements=floats))
        im, fmt = Image.fromarray(arr, mode="F"), "TIFF"
    elif kind == "I;16":
        arr = draw(arrays(np.uint16, (h, w)))
        im, fmt = Image.fromarray(arr), draw(st.sampled_from(["PNG", "TIFF"]))
    else:
        chans = {"L": 1, "RGB": 3, "RGBA": 4, "1": 1}[kind]
        arr = draw(arrays(np.uint8, (h, w, chans) if chans > 1 else (h, w)))
        im = Image.fromarray(arr).convert(kind)
        fmt = draw(st.sampled_from(["PNG", "BMP", "TIFF"] + (["JPEG"] if kind in ("L", "RGB") else [])))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@SETTINGS
@given(encoded_images())
def test_decode_gives_finite_unit_image_or_clear_error(data: bytes) -> None:
    try:
        img, info = decode_bytes(data, "x")
    except ImageReadError as exc:
        assert str(exc).startswith("x:") or "NaN" in str(exc)
        return
    assert img.dtype == np.float32 and img.ndim == 2 and img.shape == (info.height, info.width)
    assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0


@SETTINGS
@given(encoded_images())
def test_decode_slice_always_has_a_guard_verdict(data: bytes) -> None:
    try:
        s = decode_slice(data, "x")
    except ImageReadError:
        return
    assert isinstance(s.guard.flagged, bool) and (s.guard.reason is not None) == s.guard.flagged


@SETTINGS
@given(
    arrays(np.float32, shapes, elements=st.floats(0, 1, width=32)),
    st.sampled_from([16, 32, 57]),
    st.booleans(),
    st.sampled_from(["none", "percentile"]),
)
def test_preprocess_any_image_gives_the_configured_square(img, size, crop, intensity) -> None:
    before = img.copy()
    x, geom = preprocess(img, PreprocessConfig(size=size, body_crop=crop, intensity=intensity))
    assert x.shape == (size, size) and x.dtype == np.float32 and np.isfinite(x).all()
    assert x.min() >= 0.0 and x.max() <= 1.0 + 1e-6
    assert (geom.orig_h, geom.orig_w) == img.shape
    np.testing.assert_array_equal(img, before)  # the caller's data is not modified


@SETTINGS
@given(arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 40), st.integers(1, 40))))
def test_preprocess_refuses_more_than_one_channel(img) -> None:
    try:
        preprocess(img, PreprocessConfig(size=16))
    except ConfigError as exc:
        assert "one-channel" in str(exc)
    else:
        raise AssertionError("a 3-D array was accepted")


@SETTINGS
@given(arrays(np.float32, shapes, elements=st.floats(0, 1, width=32)))
def test_body_box_lies_inside_the_image_and_contains_the_mask(img) -> None:
    y0, y1, x0, x1 = body_bbox(img)
    h, w = img.shape
    assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
    mask = body_mask(img)
    if mask is not None:
        assert mask.shape == img.shape and not mask[:y0].any() and not mask[y1:].any()
