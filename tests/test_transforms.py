"""Preprocessing never stretches; geometry inverts; augmentation stays in range."""

from __future__ import annotations

import numpy as np
import torch

from lungct.data.transforms import Augment, PreprocessConfig, body_bbox, preprocess, to_original


def _wide_image(h=64, w=128) -> np.ndarray:
    img = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[:h, :w]
    img[((yy - h / 2) / (h * 0.4)) ** 2 + ((xx - w / 2) / (h * 0.4)) ** 2 < 1] = 0.6  # a circle
    return img


def test_no_stretching_circle_stays_round():
    img = _wide_image()
    out, geom = preprocess(img, PreprocessConfig(size=64, body_crop=False, intensity="none"))
    assert out.shape == (64, 64)
    ys, xs = np.nonzero(out > 0.3)
    height, width = ys.max() - ys.min(), xs.max() - xs.min()
    assert abs(height - width) <= 2, "a circle must stay a circle (aspect preserved)"
    assert geom.side == 128 and geom.pad_top == 32


def test_input_is_not_modified():
    img = _wide_image()
    before = img.copy()
    preprocess(img, PreprocessConfig(size=32))
    np.testing.assert_array_equal(img, before)


def test_to_original_restores_geometry():
    img = _wide_image(60, 100)
    out, geom = preprocess(img, PreprocessConfig(size=48, body_crop=True, intensity="none"))
    back = to_original(out, geom)
    assert back.shape == img.shape
    assert np.corrcoef(back.ravel(), img.ravel())[0, 1] > 0.9


def test_body_crop_drops_empty_background():
    img = np.zeros((200, 300), np.float32)
    img[50:150, 100:220] = 0.5
    y0, y1, x0, x1 = body_bbox(img)
    assert y0 <= 50 and y1 >= 150 and x0 <= 100 and x1 >= 220
    assert (x1 - x0) < 200 and (y1 - y0) < 150


def test_percentile_standardisation_maps_to_unit_range():
    img = _wide_image() * 0.3 + 0.1
    out, _ = preprocess(img, PreprocessConfig(size=32, body_crop=False, intensity="percentile"))
    assert out.max() > 0.95 and out.min() >= 0


def test_augment_keeps_shape_and_range():
    torch.manual_seed(0)
    x = torch.rand(1, 32, 32)
    aug = Augment()
    ys = [aug(x) for _ in range(5)]
    assert all(y.shape == x.shape and y.min() >= 0 and y.max() <= 1 for y in ys)
    assert not torch.equal(ys[0], ys[1])


def test_dicom_window_comes_from_the_preprocessing_config():
    from pydicom.data import get_testdata_file

    from lungct.data.imaging import Window
    from lungct.model.train import load_images

    path = get_testdata_file("CT_small.dcm")
    lung = PreprocessConfig(size=32, body_crop=False, intensity="none")
    soft = PreprocessConfig(size=32, body_crop=False, intensity="none", window_level=40, window_width=80)
    assert soft.window == Window(40, 80)
    a, b = load_images([path], lung, progress=False), load_images([path], soft, progress=False)
    assert a.shape == b.shape == (1, 32, 32)
    assert (b == 255).mean() > (a == 255).mean()  # the narrow window saturates more
